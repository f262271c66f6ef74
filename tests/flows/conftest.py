"""A real `prefect server start` (SQLite in a temporary PREFECT_HOME, free port) shared by the
tests whose work leaves the test process: Dask workers and a serving process cannot reach
an ephemeral API. Every process started here runs in its own process group, killed at the end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVER_START_S = 180  # a fresh database migrates first; slow on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL what is left after 20 s."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def child_env(prefect_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_LOGGING_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}, **extra)
    return env


def wait_for(what: str, check, timeout: float, procs: list[tuple[subprocess.Popen, Path]]) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p, log in procs:
            if p.poll() is not None:
                pytest.fail(f"{what}: process {p.args} exited with {p.returncode}:\n{log.read_text()[-4000:]}")
        if check():
            return
        time.sleep(1)
    logs = "\n".join(f"--- {p.args}\n{log.read_text()[-3000:]}" for p, log in procs)
    pytest.fail(f"{what}: not within {timeout} s\n{logs}")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """URL of a real Prefect API (`prefect server start`, SQLite) for this test session."""
    import httpx

    tmp = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    log = tmp / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=child_env(tmp / "home", PREFECT_UI_ENABLED="false",
                                          PREFECT_SERVER_API_HOST="127.0.0.1"), start_new_session=True)

    def healthy() -> bool:
        try:
            return httpx.get(f"{api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for("prefect server start", healthy, SERVER_START_S, [(proc, log)])
        yield api
    finally:
        stop_group(proc)


@pytest.fixture()
def use_api(prefect_server, monkeypatch):
    """This test process (and the processes it starts) talk to the real server, not the test harness."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        yield prefect_server
