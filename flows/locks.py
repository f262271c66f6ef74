"""One run per skill at a time on this machine, even for manual runs.

An flock on a file under the work dir: the kernel releases it when the holding process
dies, so a crashed or SIGKILLed run never leaves a stale lock behind. Scheduled
deployments also carry a Prefect concurrency limit of 1 (see flows/deployments.py),
which covers runs on different machines.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from core.workdir import work_dir


class SkillBusy(RuntimeError):
    """Another run of the same skill holds the lock."""


@contextmanager
def skill_lock(skill: str) -> Iterator[Path]:
    path = work_dir() / "locks" / f"{skill}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise SkillBusy(f"another run of skill {skill!r} is in progress ({holder}); "
                            f"wait for it to finish (lock: {path})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        try:
            yield path
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
