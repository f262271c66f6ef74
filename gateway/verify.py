"""The verify lane: a sample of kept answers is also answered by the teacher, off the request path
(bounded queue, one worker thread; overflow is counted, never waited on). Agreement gives a live
error-rate estimate per skill and version with an exact (Clopper-Pearson) 95% interval."""

from __future__ import annotations

import logging
import queue
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

from eval_gates.stats import clopper_pearson

log = logging.getLogger("distill.gateway")


@dataclass
class VerifyJob:
    skill: str
    version: int | None
    input: str
    answer: str  # the kept SLM answer (canonical)
    request_id: str


class VerifyLane:
    """submit(job) -> bool (False: dropped, queue full). `ask(skill, input, version)` returns the teacher's
    TeacherAnswer (blocking, in the worker thread); `agree(skill, input, slm, teacher)` -> bool."""

    def __init__(self, ask: Callable[[str, str, int | None], Any], agree: Callable[[str, str, str, str], bool], max_queue: int = 1000,
                 on_result: Callable[[VerifyJob, bool | None, Any], None] | None = None):
        self.ask, self.agree, self.on_result = ask, agree, on_result
        self.q: queue.Queue = queue.Queue(maxsize=max_queue)
        self.lost = 0
        self.counts: dict[tuple[str, int | None], list[int]] = defaultdict(lambda: [0, 0, 0])  # agree, disagree, failed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="verify", daemon=True)
        self.thread.start()

    def submit(self, job: VerifyJob) -> bool:
        try:
            self.q.put_nowait(job)
            return True
        except queue.Full:
            self.lost += 1
            return False

    def depth(self) -> int:
        return self.q.qsize()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            ok: bool | None = None
            t = None
            try:
                t = self.ask(job.skill, job.input, job.version)
                if t is not None and t.answer is not None:
                    ok = bool(self.agree(job.skill, job.input, job.answer, t.answer))
            except Exception as e:
                log.warning("verify %s: %s", job.request_id, e)
            with self._lock:
                self.counts[(job.skill, job.version)][0 if ok else 1 if ok is False else 2] += 1
            if self.on_result:
                try:
                    self.on_result(job, ok, t)
                except Exception:
                    log.exception("verify: on_result failed")

    def estimate(self, skill: str, version: int | None) -> dict[str, Any]:
        """{"verified", "agreed", "error_rate", "error_rate_low", "error_rate_high", "failed"} for one version."""
        with self._lock:
            agree, disagree, failed = self.counts.get((skill, version), [0, 0, 0])
        n = agree + disagree
        low, high = clopper_pearson(disagree, n)
        return {"verified": n, "agreed": agree, "failed": failed, "error_rate": disagree / n if n else None,
                "error_rate_low": low, "error_rate_high": high}

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
