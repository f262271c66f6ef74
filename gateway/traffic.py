"""Traffic capture off the request path: rows go into a bounded queue and one writer thread
inserts them in batches into the per-skill traffic table the replay gate and the refresh read
(`gates.replay: {source: sql, url: ..., table: traffic_<skill>, columns: {reference_source:
reference_source}}`). A full queue drops the row and counts it; a database that stops answering
holds rows in the queue (retried with backoff) and never blocks a request.

Poison rows: every text value is cleaned before it is queued (a lone surrogate, which UTF-8
cannot encode, and NUL, which PostgreSQL text refuses, become U+FFFD; counted in `cleaned`), so
the table only holds text the pipeline's readers accept. A batch the database still refuses while
it answers a probe is written row by row; a row refused alone is dropped and counted in
`dropped`, and every later row is written. Only a database that does not answer holds rows.

Personal data: with `scrub_for`, each row's text (request, answer, slm_answer, slm_raw, reference) is
scrubbed on the writer thread before it is held for a commit (core/privacy.py): only placeholders
such as <EMAIL_ADDRESS> reach the table."""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("distill.gateway")

# Longest pause between attempts while the database does not answer.
MAX_BACKOFF_S = 5.0

# What no store can hold as text: lone surrogates (not encodable as UTF-8) and NUL (PostgreSQL).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def clean_text(value: Any) -> tuple[Any, bool]:
    """(value, changed): a str with every lone surrogate and NUL replaced by U+FFFD; other values as given."""
    if isinstance(value, str) and _UNSTORABLE.search(value):
        return _UNSTORABLE.sub("\ufffd", value), True
    return value, False


def clean_row(row: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(row, changed): `row` with every text value cleaned (clean_text)."""
    changed = False
    out = {}
    for k, v in row.items():
        out[k], c = clean_text(v)
        changed |= c
    return out, changed


def ensure_sqlite_dir(url: str) -> None:
    """Create the folder of a SQLite database file (a fresh DISTILL_HOME has none; SQLite would refuse to open it)."""
    import sqlalchemy as sa

    u = sa.engine.make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)


def traffic_table(metadata, name: str):
    """The traffic table: the columns eval_gates.replay and flows.refresh read (id, request,
    reference, accepted, created_at, reference_source) plus what the gateway knows."""
    import sqlalchemy as sa

    return sa.Table(
        name, metadata,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),  # insertion time; never updated
        sa.Column("skill", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=True),  # None: no production version (escalated)
        sa.Column("request", sa.Text, nullable=False),  # the skill input (canonical JSON text for JSON inputs)
        sa.Column("answer", sa.Text, nullable=True),  # the answer returned to the caller
        sa.Column("slm_answer", sa.Text, nullable=True),  # the small model's parsed answer (None: invalid)
        sa.Column("slm_raw", sa.Text, nullable=True),
        sa.Column("confidence", sa.Float, nullable=True),
        sa.Column("lane", sa.String(16), nullable=False),  # keep | escalate | degraded
        sa.Column("latency_ms", sa.Float, nullable=True),
        sa.Column("reference", sa.Text, nullable=True),  # the teacher's answer, a person's correction, or the SLM's
        sa.Column("reference_source", sa.String(16), nullable=False),  # llm | human | student
        sa.Column("accepted", sa.Boolean, nullable=True),
        sa.Column("verified", sa.Boolean, nullable=True),  # verify lane: teacher agreed (None: not verified)
        sa.Column("feedback", sa.String(16), nullable=True),  # accepted | rejected | corrected
        sa.Column("feedback_at", sa.DateTime(timezone=True), nullable=True),
    )


@dataclass
class _Op:
    kind: str  # insert | update
    skill: str
    row: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    raw: bool = False  # taken from the queue and not yet scrubbed


class TrafficWriter:
    """write(row) / update(skill, id, values): never block; rows are written by a background thread.

    `url`: SQLAlchemy URL; `table_for(skill)` -> table name. Counters: written, lost (queue full),
    failures (database errors, each retried), cleaned (rows whose text was repaired), dropped (rows
    the database refused on their own: poison rows, never retried)."""

    def __init__(self, url: str, table_for: Callable[[str], str], max_queue: int = 10_000, batch: int = 256,
                 flush_ms: float = 200.0, on_lost: Callable[[int], None] | None = None,
                 scrub_for: Callable[[str], Any] | None = None, scrub_process: bool = True):
        """`scrub_for(skill)`: the skill's core.privacy.Scrubber (None: stored as given). Rows are scrubbed
        off the request path before anything is written; a row that cannot be scrubbed is dropped and counted
        (`dropped`, `scrub_failures`), never written raw. `scrub_process`: scrub in a child process
        (`python -m core.privacy`, one per Python process, started at the first row): presidio is pure Python,
        and in this process it would hold the GIL for milliseconds per row, time the request path's event loop
        waits for. Where the child cannot run, the writer thread scrubs (logged)."""
        import sqlalchemy as sa

        self.url, self.table_for, self.batch, self.flush_s = url, table_for, batch, flush_ms / 1000.0
        kw: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("postgresql"):
            kw["connect_args"] = {"connect_timeout": 3}
        elif url.startswith("sqlite"):
            kw["connect_args"] = {"timeout": 5}
            ensure_sqlite_dir(url)
        self.engine = sa.create_engine(url, **kw)
        self.metadata = sa.MetaData()
        self.tables: dict[str, Any] = {}
        self.q: queue.Queue = queue.Queue(maxsize=max_queue)
        self.written = self.lost = self.failures = self.updated = self.cleaned = self.dropped = 0
        self.scrubbed = self.scrub_failures = 0
        self.scrub_for = scrub_for
        self.scrub_process = scrub_process
        self._pool: bool | None = None  # True once the scrubbing process answered, False after it failed
        self.last_error: str | None = None
        self.on_lost = on_lost
        self._stop = threading.Event()
        self._held: list[_Op] = []  # taken from the queue, not yet committed
        self.thread = threading.Thread(target=self._loop, name="traffic-writer", daemon=True)
        self.thread.start()

    # --- request side (never blocks) ---------------------------------------------------------------------------

    def _put(self, op: _Op) -> bool:
        op.row, changed = clean_row(op.row)
        op.id = clean_text(op.id)[0]
        self.cleaned += changed
        try:
            self.q.put_nowait(op)
            return True
        except queue.Full:
            self.lost += 1
            if self.on_lost:
                self.on_lost(1)
            return False

    def write(self, skill: str, row: dict[str, Any]) -> bool:
        """Queue one row (created_at set now when missing). False when the queue was full (counted)."""
        row.setdefault("created_at", datetime.now(timezone.utc))
        return self._put(_Op("insert", skill, row))

    def update(self, skill: str, id: str, values: dict[str, Any]) -> bool:
        """Queue an update of row `id` (after any queued insert of it). False when the queue was full."""
        return self._put(_Op("update", skill, values, id))

    def depth(self) -> int:
        return self.q.qsize() + len(self._held)

    # --- writer thread -----------------------------------------------------------------------------------------

    def _table(self, conn, skill: str, created: dict):
        name = self.table_for(skill)
        t = self.tables.get(name)
        if t is None:
            t = created.get(name)
        if t is None:
            t = self.metadata.tables.get(name)
            if t is None:
                t = traffic_table(self.metadata, name)
            t.create(conn, checkfirst=True)
            created[name] = t  # known to exist only once this transaction commits (a failed batch rolls it back)
        return t

    def _commit(self, ops: list[_Op]) -> None:
        import sqlalchemy as sa

        created: dict = {}
        with self.engine.begin() as conn:
            i = 0
            while i < len(ops):
                op = ops[i]
                t = self._table(conn, op.skill, created)
                if op.kind == "insert":
                    j = i
                    while j < len(ops) and ops[j].kind == "insert" and ops[j].skill == op.skill:
                        j += 1
                    conn.execute(sa.insert(t), [o.row for o in ops[i:j]])
                    i = j
                else:
                    conn.execute(sa.update(t).where(t.c.id == op.id).values(**op.row))
                    i += 1
        self.tables.update(created)
        self.written += sum(o.kind == "insert" for o in ops)
        self.updated += sum(o.kind == "update" for o in ops)

    def _loop(self) -> None:
        backoff = 0.1
        while not (self._stop.is_set() and self.q.empty() and not self._held):
            if len(self._held) < self.batch:
                try:
                    self._hold(self.q.get(timeout=self.flush_s or 0.05))
                    deadline = time.monotonic() + self.flush_s
                    while len(self._held) < self.batch:
                        left = deadline - time.monotonic()
                        self._hold(self.q.get(timeout=left) if left > 0 else self.q.get_nowait())
                except queue.Empty:
                    pass
            if not self._held:
                continue
            self._scrub_held()
            if not self._held:
                continue
            try:
                self._commit(self._held)
                self._held = []
                backoff = 0.1
                continue
            except Exception as e:  # the database is down, or it refuses something in this batch
                self.failures += 1
                self.last_error = _why(e)
            if self._reachable():
                # The database answers, so the rows are the problem: write them one by one, drop what it refuses.
                self._isolate()
                continue
            log.warning("traffic: cannot write %d rows (%s); retrying in %.1f s", len(self._held), self.last_error, backoff)
            if self._stop.wait(backoff) and self.failures > 3:
                self.lost += len(self._held)  # shutting down with the database away
                self._held = []
                return
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _hold(self, op: _Op) -> None:
        """Take `op` for the next commit; `_scrub_held` scrubs what was taken before it is committed."""
        op.raw = self.scrub_for is not None
        self._held.append(op)

    def _scrub_held(self) -> None:
        """Scrub every held op not yet scrubbed (personal data -> placeholders), in the child process when there
        is one; an op that cannot be scrubbed is dropped and counted, never written raw."""
        todo = [op for op in self._held if op.raw]
        if not todo:
            return
        failed: set[int] = set()
        if self.scrub_for is not None:
            jobs, where = [], []
            for op in todo:
                try:
                    scrubber = self.scrub_for(op.skill)
                except Exception as e:
                    self._scrub_failed(op, e)
                    failed.add(id(op))
                    continue
                if scrubber is not None:
                    jobs.append((scrubber, op.row))
                    where.append(op)
            results = self._scrub_rows(jobs) if jobs else []
            for op, (row, err) in zip(where, results):
                if err is not None:
                    self._scrub_failed(op, err)
                    failed.add(id(op))
                else:
                    op.row = row
                    self.scrubbed += 1
        for op in todo:
            op.raw = False
        if failed:
            self._held = [op for op in self._held if id(op) not in failed]

    def _scrub_failed(self, op: _Op, e: Exception | str) -> None:
        # fail closed: a row that cannot be scrubbed is never written raw
        self.scrub_failures += 1
        self.dropped += 1
        self.last_error = e if isinstance(e, str) else _why(e)
        log.error("traffic: dropped a %s of row %s for %s: cannot scrub it (%s)", op.kind,
                  op.id or op.row.get("id"), op.skill, self.last_error)

    def warm(self, scrubbers) -> None:
        """Start the scrubbing process and have it build each scrubber now (core.privacy; about 6 s of CPU on 2
        cores), so that it happens at start-up and not beside the first requests' decoding; blocks until then
        (the gateway calls it on a thread of its own, beside the model loading). `scrubbers`:
        core.privacy.Scrubber objects (None entries skipped). Never raises: a warm-up that fails leaves the first
        row to start the process (and report why)."""
        jobs = [(s.cfg.model_dump_json(), {"request": "warm-up"}) for s in scrubbers if s is not None]
        if not (jobs and self.scrub_process and self._pool is not False):
            return
        try:
            _scrub_worker().scrub(jobs)
        except Exception as e:
            log.info("traffic: the scrubbing process did not warm up (%s)", _why(e))

    def _scrub_rows(self, jobs: list) -> list:
        """[(Scrubber, row)] -> [(scrubbed row, None) or (None, why)], in the child process when it runs."""
        if self.scrub_process and self._pool is not False:
            try:
                from core.privacy import TEXT_FIELDS

                texts = [{k: v for k, v in row.items() if k in TEXT_FIELDS and isinstance(v, str)} for _, row in jobs]
                got = _scrub_worker().scrub([(s.cfg.model_dump_json(), t) for (s, _), t in zip(jobs, texts)])
                self._pool = True
                return [((None, err) if err is not None else ({**row, **(new or {})}, None))
                        for (_, row), (new, err) in zip(jobs, got)]
            except Exception as e:  # no worker (a sandbox without processes, a crash): scrub here instead
                log.warning("traffic: scrubbing in the writer thread (the scrubbing process failed: %s)", _why(e))
                self._pool = False
        out = []
        for s, row in jobs:
            try:
                out.append((s.row(row), None))
            except Exception as e:
                out.append((None, _why(e)))
        return out

    def _reachable(self) -> bool:
        import sqlalchemy as sa

        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("select 1"))
            return True
        except Exception:
            return False

    def _isolate(self) -> None:
        """Commit the held ops one at a time; an op the database refuses alone (while it still answers) is dropped."""
        while self._held:
            op = self._held[0]
            try:
                self._commit([op])
            except Exception as e:
                self.failures += 1
                self.last_error = _why(e)
                if not self._reachable():
                    return  # the database went away meanwhile: keep the rest held
                self.dropped += 1
                log.error("traffic: dropped a %s of row %s for %s that the database refuses (%s)", op.kind,
                          op.id or op.row.get("id"), op.skill, self.last_error)
            self._held.pop(0)

    def exists(self, skill: str, id: str) -> bool:
        """Whether row `id` is in `skill`'s table (False when the table does not exist). Raises when the database does not answer."""
        import sqlalchemy as sa

        name = self.table_for(skill)
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(name):
                return False
            t = self.tables.get(name)
            if t is None:
                t = traffic_table(sa.MetaData(), name)
            return conn.execute(sa.select(t.c.id).where(t.c.id == id)).first() is not None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued row is committed (tests, shutdown). True when drained."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.q.empty() and not self._held:
                time.sleep(0.05)
                if self.q.empty() and not self._held:
                    return True
            time.sleep(0.02)
        return False

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.thread.join(timeout=timeout)
        self.engine.dispose()


class _ScrubWorker:
    """`python -m core.privacy` as a child process (a plain subprocess, not multiprocessing: nothing of the
    parent's __main__ is run again), fed JSON lines; one batch at a time."""

    def __init__(self):
        import os
        import subprocess
        import sys

        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        self.proc = subprocess.Popen([sys.executable, "-m", "core.privacy"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, encoding="utf-8", env=env, cwd=root)
        self.lock = threading.Lock()

    def scrub(self, jobs: list, timeout_s: float = 120.0) -> list:
        """[(cfg_json, {field: text})] -> [({field: scrubbed}, None) or (None, why)]. Raises RuntimeError when the
        worker is gone or does not answer within `timeout_s`."""
        import json
        import select

        with self.lock:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the scrubbing process exited ({self.proc.returncode})")
            self.proc.stdin.write(json.dumps(jobs, ensure_ascii=True) + "\n")
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
            line = self.proc.stdout.readline() if ready else ""
            if not line:
                self.proc.kill()
                raise RuntimeError("the scrubbing process did not answer")
            out = json.loads(line)
        if len(out) != len(jobs):
            raise RuntimeError(f"the scrubbing process answered {len(out)} rows for {len(jobs)}")
        return [(r, e) for r, e in out]

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except Exception:
            self.proc.kill()


_worker_lock = threading.Lock()
_worker: _ScrubWorker | None = None  # the scrubbing process every TrafficWriter of this process shares


def _scrub_worker() -> _ScrubWorker:
    """The shared scrubbing process (started once per Python process, on first use, again if it died)."""
    global _worker
    with _worker_lock:
        if _worker is None or _worker.proc.poll() is not None:
            import atexit

            if _worker is None:
                atexit.register(lambda: _worker is not None and _worker.close())
            _worker = _ScrubWorker()
        return _worker


def _why(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
