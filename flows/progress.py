"""Progress for long stages: rich bars on a terminal, log lines everywhere else.

Stage code takes a plain `advance(n)` callable; the CLI installs a rich Progress,
scheduled deployments get periodic log lines instead.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, Iterator

log = logging.getLogger("distill")

_progress = None  # a rich.progress.Progress while the CLI runs


def set_progress(progress) -> None:
    global _progress
    _progress = progress


def step_progress(advance: Callable[..., None]) -> Callable[[int, int, dict], None]:
    """A trainer's progress(step, total, logs) callback that advances a stage by the steps done since."""
    last = [0]

    def progress(step: int, total: int, logs: dict) -> None:
        if step > last[0]:
            advance(step - last[0], total)
            last[0] = step

    return progress


@contextlib.contextmanager
def stage(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """Yield advance(n, total=None) for a stage of `total` units (total may be set later)."""
    if _progress is not None:
        task = _progress.add_task(description, total=total)
        def advance(n: int = 1, total: int | None = None) -> None:
            if total is not None:
                _progress.update(task, total=total)
            _progress.advance(task, n)

        try:
            yield advance
        finally:
            if total is not None:
                _progress.update(task, completed=total)
            _progress.stop_task(task)
        return
    done, last = [0], [0.0]

    def advance(n: int = 1, total_: int | None = None) -> None:
        nonlocal total
        total = total_ if total_ is not None else total
        done[0] += n
        if time.time() - last[0] > 10 or (total and done[0] >= total):
            last[0] = time.time()
            log.info("%s: %d/%s", description, done[0], total if total is not None else "?")

    log.info("%s: started", description)
    yield advance
