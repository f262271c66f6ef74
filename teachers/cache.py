"""Durable teacher response cache: SQLite in WAL mode under <work dir>/cache/.

Keyed by `Request.cache_key` (sha256 of backend, base URL host, model, prompt or
messages, sampling parameters, response_format, sample index and re-ask attempt).
Each response is committed as it arrives, so a crash loses only requests in flight and
a re-run sends none whose answer is stored. Only answers are stored: never a key,
a header or a URL path.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable

from teachers.local import Completion

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    seconds REAL NOT NULL,
    created REAL NOT NULL
)
"""


def default_cache_path() -> Path:
    from core.workdir import cache_dir

    return cache_dir() / "teacher.sqlite"


class ResponseCache:
    """Thread-safe: one connection guarded by a lock (writes are tiny; SQLite serializes them anyway)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed row survives a process crash
        self._db.execute(_SCHEMA)

    def get_many(self, keys: Iterable[str]) -> dict[str, Completion]:
        keys = list(dict.fromkeys(keys))
        out: dict[str, Completion] = {}
        with self._lock:
            for i in range(0, len(keys), 500):  # SQLite's bound-variable limit
                chunk = keys[i : i + 500]
                rows = self._db.execute(
                    f"SELECT key, text, finish_reason, prompt_tokens, completion_tokens, seconds FROM responses "
                    f"WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
                for k, text, fr, pt, ct, s in rows:
                    out[k] = Completion(text=text, finish_reason=fr, prompt_tokens=pt, completion_tokens=ct, seconds=s)
        return out

    def put_many(self, items: Iterable[tuple[str, str, Completion]]) -> None:
        """(key, model, completion) rows, committed in one transaction."""
        rows = [(k, m, c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens, c.seconds, time.time())
                for k, m, c in items]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?,?,?)", rows)
            self._db.execute("COMMIT")

    def put(self, key: str, model: str, completion: Completion) -> None:
        self.put_many([(key, model, completion)])

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
