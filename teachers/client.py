"""`Teacher`: one backend plus everything around a call.

For every request: look it up in the durable cache; send the misses (HTTP: async, AIMD
concurrency, RPM/TPM budgets, retries with exponential backoff and jitter; local: in
batches); write each answer to the cache as it arrives; validate it, re-asking an invalid
answer up to `invalid_retries` times; count it. Each request ends as a kept `Completion`
or a `Failure` with its cause, and a run whose error rate passes `max_error_rate` stops
with `TeacherErrorRateExceeded` instead of producing a thin dataset.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from teachers.base import (Accounting, AsyncBackend, Backend, Completion, Failure, FatalRequestError, Request,
                           RetryableError, TeacherErrorRateExceeded)
from teachers.cache import ResponseCache
from teachers.limits import DECREASE, TOLERANCE, AdaptiveLimit, RateBudget

log = logging.getLogger("distill.teachers")

Outcome = Completion | Failure
Validator = Callable[[Completion, int], str | None]  # (answer, request index) -> None if usable, else a reason


@dataclass
class ClientSettings:
    """Runtime knobs (from TeacherConfig); defaults and their reasons live in core/skills.py."""

    max_in_flight: int = 16
    limit_decrease: float = DECREASE  # the in-flight limit is multiplied by this on congestion
    throttle_tolerance: float = TOLERANCE  # share of a window's answers that may be 429s before it is congestion
    rpm: int | None = None
    tpm: int | None = None
    max_retries: int = 4
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    max_retry_wait_s: float = 120.0  # longest wait a Retry-After hint may impose (an absurd one is capped)
    max_error_rate: float = 0.2
    error_rate_min_requests: int = 20
    invalid_retries: int = 2
    retry_temperature: float = 0.7
    batch_size: int = 16
    flush_every: int = 1  # commit each answer as it arrives (WAL + synchronous=NORMAL: no fsync per commit)


def _run_coro(coro):
    """asyncio.run, also from code that already runs inside an event loop (a Prefect task may)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class Teacher:
    def __init__(self, backend: Backend | AsyncBackend, settings: ClientSettings | None = None,
                 cache: ResponseCache | None = None, prices: dict[str, float] | None = None,
                 name: str | None = None, kind: str = ""):
        self.backend = backend
        self.settings = settings or ClientSettings()
        self.cache = cache
        self.prices = prices
        self.name = name or backend.name
        self.kind = kind or ("http" if hasattr(backend, "send") else "local")
        self.accounting = Accounting()
        self._identity = backend.identity()
        self._failed_total = self._run_failed = self._run_finished = 0
        self.limit_stats: dict[str, Any] = {}  # the adaptive limit's cuts, growths, ... of the last HTTP run

    def key(self, req: Request) -> str:
        if req.options is not None:  # how an HTTP server was asked for scores changes them
            return req.cache_key({**self._identity, "score_method": getattr(self.backend, "score_method", "forward")})
        return req.cache_key(self._identity)

    # --- public -----------------------------------------------------------------------------------------------------

    def run(self, requests: Sequence[Request], validate: Validator | None = None,
            progress: Callable[[int], None] | None = None) -> list[Outcome]:
        """Answer every request (in order). Invalid answers are re-asked at `retry_temperature`
        (a greedy re-ask would repeat itself), each re-ask with its own cache entry."""
        t0 = time.perf_counter()
        out: list[Outcome | None] = [None] * len(requests)
        pending = list(enumerate(requests))
        try:
            for attempt in range(self.settings.invalid_retries + 1):
                if not pending:
                    break
                nxt: list[tuple[int, Request]] = []

                def settle(j: int, ans: Outcome, pending=pending, nxt=nxt, attempt=attempt) -> None:
                    """Called as each answer arrives: keep it, re-ask it, or record why it was dropped."""
                    i, req = pending[j]
                    if isinstance(ans, Failure):
                        out[i] = ans
                    else:
                        reason = validate(ans, i) if validate else None
                        if reason is None:
                            out[i] = ans
                            self.accounting.kept += 1
                        elif attempt < self.settings.invalid_retries:
                            self.accounting.invalid_retries += 1
                            nxt.append((i, replace(req, attempt=attempt + 1,
                                                   temperature=max(req.temperature, self.settings.retry_temperature))))
                            return
                        else:
                            out[i] = Failure(reason, attempts=attempt + 1, text=ans.text)
                            self.accounting.fail(reason)
                    if progress:
                        progress(1)

                self._answer([r for _, r in pending], settle)
                pending = sorted(nxt)
        finally:
            self.accounting.seconds += time.perf_counter() - t0
        self._check_error_rate(final=True)
        return out  # type: ignore[return-value]

    def report(self) -> dict[str, Any]:
        return {"teacher": self.name, "kind": self.kind, **self.accounting.to_dict(self.prices)}

    # --- internals --------------------------------------------------------------------------------------------------

    def _answer(self, reqs: list[Request], settle: Callable[[int, Outcome], None]) -> None:
        """Cache hits first, then the misses through the backend; `settle(index, outcome)` as each arrives."""
        acc = self.accounting
        acc.requests += len(reqs)
        keys = [self.key(r) for r in reqs]
        hits = self.cache.get_many(keys) if self.cache else {}
        miss: list[int] = []
        for i, k in enumerate(keys):
            if k in hits:
                acc.cache_hits += 1
                settle(i, hits[k])
            else:
                miss.append(i)
        if miss:
            # Identical requests in one batch (two inputs that got the same prompt) are sent once and the answer
            # settles all of them: the same key would get the same cached answer anyway.
            same: dict[str, list[int]] = {}
            for j in miss:
                same.setdefault(keys[j], []).append(j)
            todo = [(js[0], k, reqs[js[0]]) for k, js in same.items()]
            acc.cache_hits += len(miss) - len(todo)

            def settle_all(j: int, ans: Outcome) -> None:
                for jj in same[keys[j]]:
                    settle(jj, ans)

            if hasattr(self.backend, "send"):
                _run_coro(self._send_all(todo, settle_all))
            else:
                self._send_local(todo, settle_all)

    def _transport_failure(self, f: Failure) -> None:
        self.accounting.fail(f.cause)
        self._failed_total += 1
        self._run_failed += 1
        self._run_finished += 1

    def _check_error_rate(self, final: bool = False) -> None:
        """Only transport/HTTP failures count (invalid answers are data quality, recorded as drops)."""
        s, acc = self.settings, self.accounting
        failed = self._failed_total if final else self._run_failed
        done = acc.requests - acc.cache_hits if final else self._run_finished
        if done <= 0 or failed == 0:
            return
        if (final or done >= s.error_rate_min_requests) and failed / done > s.max_error_rate:
            causes = ", ".join(f"{k}: {v}" for k, v in sorted(acc.failures.items()))
            raise TeacherErrorRateExceeded(
                f"teacher {self.name}: {failed} of {done} requests failed after retries ({failed / done:.0%} > "
                f"teacher.max_error_rate={s.max_error_rate:.0%}; {causes}). The server is failing: fix it or "
                "raise teacher.max_error_rate; answers received so far are cached, so a re-run resumes.")

    def _remember(self, buf: list, key: str, c: Completion | None, force: bool = False) -> None:
        """Buffer an answer; commit every `flush_every` answers (a crash loses at most that many)."""
        if self.cache is None:
            return
        if c is not None:
            buf.append((key, self.name, c))
        if buf and (force or len(buf) >= self.settings.flush_every):
            self.cache.put_many(buf)
            buf.clear()

    def _count(self, c: Completion) -> None:
        acc = self.accounting
        acc.prompt_tokens += c.prompt_tokens
        acc.completion_tokens += c.completion_tokens
        acc.latencies.append(c.seconds)

    # local: batches through a synchronous backend, each batch committed as it finishes
    def _send_local(self, todo: list[tuple[int, str, Request]], settle: Callable[[int, Outcome], None]) -> None:
        bs = self.settings.batch_size
        for b in range(0, len(todo), bs):
            chunk = todo[b : b + bs]
            comps = self.backend.complete_requests([r for _, _, r in chunk])  # type: ignore[union-attr]
            self.accounting.sent += len(chunk)
            for c in comps:
                self._count(c)
            if self.cache is not None:
                self.cache.put_many([(k, self.name, c) for (_, k, _), c in zip(chunk, comps)])
            for (j, _, _), c in zip(chunk, comps):
                settle(j, c)

    # http: every request its own coroutine, gated by the AIMD limit and the budgets
    async def _send_all(self, todo: list[tuple[int, str, Request]], settle: Callable[[int, Outcome], None]) -> None:
        s = self.settings
        limit = AdaptiveLimit(s.max_in_flight, decrease=s.limit_decrease, tolerance=s.throttle_tolerance)
        budget = RateBudget(s.rpm, s.tpm)
        buf: list = []
        self._run_failed = self._run_finished = 0
        backend: AsyncBackend = self.backend  # type: ignore[assignment]
        await backend.open()  # type: ignore[attr-defined]

        async def one(j: int, key: str, req: Request) -> None:
            settle(j, await self._one(backend, key, req, limit, budget, buf))

        try:
            tasks = [asyncio.ensure_future(one(j, k, r)) for j, k, r in todo]
            try:
                for fut in asyncio.as_completed(tasks):
                    await fut
                    self._check_error_rate()
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        finally:
            self._remember(buf, "", None, force=True)
            await backend.aclose()
            self.limit_stats = limit.stats()
            if limit.cuts:
                log.info("teacher %s: concurrency cut %d times on throttling, ended at %d", self.name, limit.cuts,
                         limit.limit)

    async def _one(self, backend: AsyncBackend, key: str, req: Request, limit: AdaptiveLimit, budget: RateBudget,
                   buf: list) -> Outcome:
        s, acc = self.settings, self.accounting
        last: RetryableError | None = None
        est = len(req.text_for_tokens()) // 4 + req.max_tokens
        for attempt in range(s.max_retries + 1):
            ev = await budget.acquire(est)
            ticket = await limit.acquire()
            acc.sent += 1
            try:
                c = await backend.send(req)
            except RetryableError as e:
                hint = None if e.retry_after is None else min(e.retry_after, s.max_retry_wait_s)
                await limit.release(ticket, "throttled" if e.congestion else "error", hint)
                last = e
                if attempt == s.max_retries:
                    break
                acc.retries += 1
                backoff = min(s.backoff_max_s, s.backoff_base_s * 2**attempt) * random.uniform(0.5, 1.5)
                # Honour Retry-After (the limiter also holds back new requests until then), never beyond the cap.
                await asyncio.sleep(min(s.max_retry_wait_s, backoff if hint is None else max(hint, backoff)))
                continue
            except FatalRequestError as e:
                await limit.release(ticket, "error")
                f = Failure(e.cause, e.detail, attempts=attempt + 1)
                self._transport_failure(f)
                return f
            except BaseException:
                await limit.release(ticket, "error")
                raise
            await limit.release(ticket, "ok")
            budget.correct(ev, c.prompt_tokens + c.completion_tokens)
            self._count(c)
            self._remember(buf, key, c)
            self._run_finished += 1
            return c
        assert last is not None
        f = Failure(last.cause, last.detail, attempts=s.max_retries + 1)
        self._transport_failure(f)
        return f
