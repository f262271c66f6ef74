"""A real Prefect server on PostgreSQL: `prefect server start`, `distill serve` pointed at it,
`prefect deployment run`, and the run completes.

Skips with the reason when PostgreSQL (127.0.0.1:5432, user postgres) or asyncpg is missing.
A fresh database is created for the server and dropped afterwards; every process started
here runs in its own process group, which is killed at the end.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.flows.conftest import child_env, free_port, stop_group, wait_for

REPO = Path(__file__).resolve().parents[2]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
SERVER_START_S = 180  # migrations of a fresh database take most of it on 2 cores
RUN_TIMEOUT_S = 420


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture()
def postgres_db():
    """A fresh database on the local PostgreSQL, dropped afterwards."""
    pytest.importorskip("asyncpg", reason="asyncpg is needed for Prefect's PostgreSQL backend")
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        pytest.skip(f"no PostgreSQL answers at 127.0.0.1:5432 as user postgres ({str(e).strip()})")
    name = f"distill_prefect_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_served_deployment_runs_to_completion_on_a_postgres_backed_server(skill_root, postgres_db, tmp_path):
    import httpx

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    procs: list[tuple[subprocess.Popen, Path]] = []

    def start(args: list[str], log_name: str, env: dict[str, str]) -> subprocess.Popen:
        log = tmp_path / log_name
        p = subprocess.Popen(args, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                             start_new_session=True)
        procs.append((p, log))
        return p

    t0 = time.time()
    try:
        start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
              "server.log", child_env(tmp_path / "prefect-home", PREFECT_API_DATABASE_CONNECTION_URL=postgres_db,
                                 PREFECT_UI_ENABLED="false", PREFECT_SERVER_API_HOST="127.0.0.1"))

        def healthy() -> bool:
            try:
                return httpx.get(f"{api}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("prefect server start", healthy, SERVER_START_S, procs)
        started = time.time() - t0
        # The server really is on PostgreSQL (not the SQLite default): its tables are in our database.
        import psycopg

        dbname = postgres_db.rsplit("/", 1)[1]
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{dbname}", connect_timeout=3) as c:
            tables = {r[0] for r in c.execute("select tablename from pg_tables where schemaname = 'public'")}
        assert {"flow", "deployment", "flow_run"} <= tables

        client_env = child_env(tmp_path / "prefect-home", PREFECT_API_URL=api)
        start([sys.executable, "-m", "flows.cli", "serve"], "serve.log", client_env)

        def deployed() -> bool:
            r = httpx.get(f"{api}/deployments/name/distill-skill/ticket-triage", timeout=5)
            return r.status_code == 200

        wait_for("distill serve registering its deployments", deployed, 120, procs)
        # The tiny profile keeps the run short; everything else is the served deployment as scheduled.
        params = json.dumps({"params": {"skill": "ticket-triage", "profile": "tiny", "run_id": "served"}})
        p = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run", "distill-skill/ticket-triage",
                            "--params", params], cwd=REPO, env=client_env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        m = re.search(r"UUID:\s*([0-9a-f-]{36})", p.stdout)
        assert m, p.stdout
        run_id = m.group(1)

        state: dict = {}

        def finished() -> bool:
            nonlocal state
            state = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state"] or {}
            return state.get("type") in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")

        wait_for("the triggered flow run", finished, RUN_TIMEOUT_S, procs)
        serve_log = (tmp_path / "serve.log").read_text()
        assert state["type"] == "COMPLETED", f"{state}\n{serve_log[-6000:]}"
        # It ran the real pipeline: a run folder with its summary, a published version.
        summary = json.loads((tmp_path / "work" / "runs" / "ticket-triage" / "served" / "summary.json").read_text())
        assert summary["profile"] == "tiny" and summary["decision"]["promote"] is True
        assert summary["published"] and Path(summary["published"]["path"]).is_dir()
        # The run is recorded on the server with its task runs and the summary artifact.
        tasks = httpx.post(f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}},
                           timeout=10).json()
        names = {t["name"].rsplit("-", 1)[0] for t in tasks}
        assert {"teacher-expansion", "filter", "traffic-refresh", "train", "evaluate", "publish"} <= names
        arts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}},
                          timeout=10).json()
        assert any(a["key"] == "ticket-triage-summary" for a in arts)
        print(f"\nprefect server on PostgreSQL: up in {started:.0f} s; whole test {time.time() - t0:.0f} s")
    finally:
        for p, _ in reversed(procs):
            stop_group(p)
        leftovers = [p.args for p, _ in procs if _group_alive(p.pid)]
        assert not leftovers, f"processes left running: {leftovers}"
