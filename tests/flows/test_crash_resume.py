"""Crash and resume with a real SIGKILL: `distill run` in its own process group, killed once in
the middle of teacher expansion and once in the middle of training, then run again to the end.

The teacher is a real OpenAI-compatible server on loopback (teachers/fakeserver.py) that
records every request body and every answer it sent, so the test sees what the client sent
again. Killing the CLI alone would leave Prefect's ephemeral API server running (it is a child
in the same process group): the whole group is killed and checked to be gone.
"""

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from teachers.fakeserver import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[2]
LABELS = ["billing", "bug", "feature_request", "account", "other"]
RUN_ID, SEED = "crash", 7

CRASH_PROFILE = {
    # The fake server answers text, not logprobs: the label answerer, and no audit (tested elsewhere).
    "expansion": {"target_examples": 48, "strategies": ["self_instruct", "label"]},
    "audit": {"enabled": False}, "filters": {"target_precision": None, "max_label_distance": None},
    # 4 in flight at 0.25 s an answer: about 16 answers/s, so expansion lasts seconds, not milliseconds.
    "teacher": {"few_shot": 4, "style_shots": 3, "max_new_tokens": 24, "max_in_flight": 4},
    "student": {"quantization": "nf4", "lora": {"r": 4, "alpha": 8},
                "train": {"max_steps": 16, "batch_size": 8, "eval_steps": 2, "early_stopping_patience": 0}},
    "gates": {"eval_limit": 10, "replay": {"sample": 6, "min_agreement": 0.0, "max_invalid_rate": 1.0},
              "floor": {"accuracy": 0.0}, "margin": 1.0},
}


def _answer(prompt: str, body: dict) -> str:
    """A ticket for self-instruct prompts, a label for labeling prompts (they end with 'Team:')."""
    h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
    if prompt.endswith("Team:"):
        return " " + LABELS[h % len(LABELS)]
    return f" order {h % 10_000} the export to csv {LABELS[h % 5]} page fails with error {h % 97} since monday"


def _key(body: dict) -> str:
    """One teacher request: everything the client sends (prompt, seed, sampling...)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class RecordingServer(FakeOpenAIServer):
    """Also records which requests it answered (status 200), in order."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.sent_keys: list[str] = []
        self.answered_keys: list[str] = []

    async def _complete(self, request):
        body = await request.json()  # aiohttp keeps the body: the parent handler reads it again
        self.sent_keys.append(_key(body))
        resp = await super()._complete(request)
        if resp.status == 200:
            self.answered_keys.append(_key(body))
        return resp


def _group(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d.name))
    return out


class CliRun:
    """`python -m flows.cli run ...` in a new session (its own process group), output to files."""

    def __init__(self, tmp_path: Path, n: int):
        self.out, self.err = tmp_path / f"run{n}.out", tmp_path / f"run{n}.err"
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # its own ephemeral API
        env["PYTHONPATH"] = str(REPO)
        cmd = [sys.executable, "-m", "flows.cli", "run", "ticket-triage", "--profile", "crash", "--run-id", RUN_ID,
               "--seed", str(SEED), "--no-progress"]
        with open(self.out, "w") as o, open(self.err, "w") as e:
            self.proc = subprocess.Popen(cmd, stdout=o, stderr=e, cwd=REPO, env=env, start_new_session=True)
        self.pgid = self.proc.pid

    def tail(self) -> str:
        return self.err.read_text()[-3000:] if self.err.is_file() else ""

    def wait_for(self, what: str, cond, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cond():
                return
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (rc {self.proc.returncode}) before {what}:\n{self.tail()}")
            time.sleep(0.02)
        self.kill()
        pytest.fail(f"timed out waiting for {what}:\n{self.tail()}")

    def kill(self) -> list[int]:
        """SIGKILL the whole group; returns the processes that were in it (CLI + Prefect's server)."""
        members = _group(self.pgid)
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        deadline = time.time() + 10
        while _group(self.pgid) and time.time() < deadline:
            time.sleep(0.05)
        return members

    def finish(self, timeout: float = 400) -> None:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the run did not finish in {timeout} s:\n{self.tail()}")
        assert rc == 0, self.tail()


def _cached_rows(path: Path) -> int:
    if not path.is_file():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    except sqlite3.OperationalError:  # the table is created on open: not yet there
        return 0
    finally:
        db.close()


@pytest.fixture()
def teacher_server():
    srv = RecordingServer(delay_s=0.25, answer=_answer).start()
    yield srv
    srv.stop()


@pytest.fixture()
def crash_skill(skill_root, teacher_server):
    import yaml

    path = skill_root / "ticket-triage" / "skill.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["teacher"].update(backend="openai", base_url=teacher_server.base_url, model="fake", endpoint="completions")
    cfg["profiles"]["crash"] = CRASH_PROFILE
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return skill_root


def test_sigkill_in_expansion_and_in_training_then_the_run_completes(crash_skill, teacher_server, tmp_path):
    from core.workdir import cache_dir, runs_dir
    from teachers.client import ClientSettings

    srv = teacher_server
    cache = cache_dir() / "teacher.sqlite"
    run_dir = runs_dir("ticket-triage") / RUN_ID
    ckpts = run_dir / "train" / "checkpoints"
    flush_every = ClientSettings().flush_every
    runs: list[CliRun] = []
    try:
        # 1. Killed in the middle of teacher expansion, once answers are committed to the cache.
        r1 = CliRun(tmp_path, 1)
        runs.append(r1)
        r1.wait_for("the first committed teacher answers", lambda: _cached_rows(cache) >= flush_every)
        members = r1.kill()
        assert r1.proc.returncode == -signal.SIGKILL
        assert len(members) >= 2, f"expected the CLI and Prefect's ephemeral server in the group, got {members}"
        assert _group(r1.pgid) == [], "processes of the killed run are still alive"
        assert not (run_dir / "generated.jsonl").exists(), "expansion had already finished: the kill came too late"
        cached_at_kill = _cached_rows(cache)
        answered_1 = set(srv.answered_keys)
        sent_1 = len(srv.sent_keys)
        assert 0 < cached_at_kill <= len(answered_1) < 48 * 2

        # 2. Same command again: expansion completes without re-sending what the cache holds;
        #    killed in the middle of training once a complete checkpoint exists.
        r2 = CliRun(tmp_path, 2)
        runs.append(r2)

        def checkpoint_written() -> bool:
            return any((c / "trainer_state.json").is_file() for c in ckpts.glob("checkpoint-*"))

        r2.wait_for("a training checkpoint", checkpoint_written)
        r2.kill()
        assert r2.proc.returncode == -signal.SIGKILL and _group(r2.pgid) == []
        assert (run_dir / "generated.jsonl").is_file() and not (run_dir / "train" / "adapter").exists()
        # A checkpoint being written at the kill has no trainer_state.json yet; resume skips it.
        done = sorted((c for c in ckpts.glob("checkpoint-*") if (c / "trainer_state.json").is_file()),
                      key=lambda c: int(c.name.split("-")[1]))
        last = done[-1]
        assert int(last.name.split("-")[1]) < CRASH_PROFILE["student"]["train"]["max_steps"]

        sent_2 = srv.sent_keys[sent_1:]
        resent = [k for k in sent_2 if k in answered_1]
        # Each answer is committed as it arrives (flush_every 1): nothing committed is sent again;
        # only answers the server had sent but the client had not yet received can be.
        assert flush_every == 1
        assert len(resent) <= len(answered_1) - cached_at_kill
        assert len(sent_2) == len(set(sent_2)), "a request was sent twice within one run"
        acc2 = json.loads((run_dir / "teacher_accounting.json").read_text())
        assert acc2["cache_hits"] >= cached_at_kill

        # 3. Again: training resumes from the last checkpoint and the run completes; every teacher
        #    answer is now cached, so the teacher sees no request at all.
        sent_before_3 = len(srv.sent_keys)
        r3 = CliRun(tmp_path, 3)
        runs.append(r3)
        r3.finish()
        assert len(srv.sent_keys) == sent_before_3, "the completed re-run sent teacher requests again"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["run_id"] == RUN_ID and summary["teacher"]["accounting"]["cache_hits"] == \
            summary["teacher"]["accounting"]["requests"]
        metrics = json.loads((run_dir / "train" / "train_metrics.json").read_text())
        assert metrics["resumed_from"] == last.name == summary["training"]["resumed_from"]
        assert metrics["global_step"] == CRASH_PROFILE["student"]["train"]["max_steps"]
        logged = [s["step"] for s in metrics["steps"]]
        assert logged == list(range(1, metrics["global_step"] + 1))  # continued, not restarted
        assert json.loads((run_dir / "params.json").read_text())["seed"] == SEED
        assert summary["decision"]["promote"] is True and summary["published"]
        assert _group(r3.pgid) == [], "the finished run left processes behind"
        print(f"killed in expansion: {len(answered_1)} answered, {cached_at_kill} committed, {len(resent)} asked "
              f"again; killed in training after {last.name}, resumed from {metrics['resumed_from']}")
    finally:
        for r in runs:
            if r.proc.poll() is None or _group(r.pgid):
                r.kill()


# --- the global teacher-expansion limit and the retry conditions ---------------------------------------------------


def test_teacher_expansion_limit_is_optional_then_enforced(prefect_harness):
    from prefect.client.orchestration import get_client

    from flows.limits import TEACHER_EXPANSION_LIMIT, TEACHER_EXPANSION_SLOTS, ensure_teacher_limit, \
        limit_exists, teacher_expansion_slot

    with get_client(sync_client=True) as c:
        if limit_exists(TEACHER_EXPANSION_LIMIT):
            c.delete_global_concurrency_limit_by_name(TEACHER_EXPANSION_LIMIT)
    with teacher_expansion_slot() as enforced:  # a manual run on an API without the limit still runs
        assert enforced is False
    assert ensure_teacher_limit() == TEACHER_EXPANSION_SLOTS  # what `distill serve` does first
    with get_client(sync_client=True) as c:
        c.update_global_concurrency_limit(TEACHER_EXPANSION_LIMIT, _update(limit=3))
    assert ensure_teacher_limit() == 3  # an existing limit keeps the team's value
    with teacher_expansion_slot() as enforced:
        assert enforced is True
        with get_client(sync_client=True) as c:
            assert c.read_global_concurrency_limit_by_name(TEACHER_EXPANSION_LIMIT).active_slots == 1
    with get_client(sync_client=True) as c:
        assert c.read_global_concurrency_limit_by_name(TEACHER_EXPANSION_LIMIT).active_slots == 0
        c.delete_global_concurrency_limit_by_name(TEACHER_EXPANSION_LIMIT)


def _update(**kw):
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    return GlobalConcurrencyLimitUpdate(**kw)


@pytest.mark.parametrize("exc,network,registry", [
    ("TeacherUnreachable", True, False),
    ("TeacherErrorRateExceeded", True, False),
    ("TeacherAuthError", False, False),
    ("ConnectionResetError", True, True),
    ("RegistryError", False, False),  # a data or config error (NaN routing, bad version): not retried
    ("RegistryUnavailable", False, True),  # storage unreachable, lock busy: transient
    ("ValueError", False, False),
])
def test_retries_only_on_failures_a_later_attempt_can_fix(exc, network, registry):
    from prefect.states import Failed

    import teachers.base
    from flows.limits import network_failure, registry_failure
    from flows.pipeline import expand, filter_candidates, publish, train
    from registry import RegistryError

    from registry import RegistryUnavailable

    cls = {"RegistryError": RegistryError, "RegistryUnavailable": RegistryUnavailable,
           "ConnectionResetError": ConnectionResetError,
           "ValueError": ValueError}.get(exc) or getattr(teachers.base, exc)
    state = Failed(data=cls("boom"))
    assert network_failure(expand, None, state) is network
    assert registry_failure(publish, None, state) is registry
    assert expand.retries == 2 and publish.retries == 2
    assert filter_candidates.retries == 0 and train.retries == 0  # deterministic stages: no retries
