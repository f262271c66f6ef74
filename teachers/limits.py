"""Client-side flow control for HTTP teachers: an AIMD concurrency limit and RPM/TPM budgets."""

from __future__ import annotations

import asyncio
import collections
import time


class AdaptiveLimit:
    """Requests in flight, adapted like TCP congestion control (AIMD).

    On a 429 the limit halves (once per burst: only a request started after the last cut
    can cut again) and nobody starts a new request before the server's Retry-After; after
    `increase_after` successes in a row the limit grows by one, up to `max_in_flight`.
    """

    def __init__(self, max_in_flight: int, initial: int | None = None, increase_after: int | None = None):
        self.max = max(1, max_in_flight)
        self.limit = min(self.max, initial or self.max)
        self.increase_after = increase_after
        self.in_flight = 0
        self.epoch = 0  # bumped at every cut
        self.blocked_until = 0.0
        self.cuts = 0
        self._ok_run = 0
        self._cond = asyncio.Condition()

    async def acquire(self) -> int:
        loop = asyncio.get_running_loop()
        async with self._cond:
            while True:
                wait = self.blocked_until - loop.time()
                if wait > 0:
                    try:
                        await asyncio.wait_for(self._cond.wait(), wait)
                    except asyncio.TimeoutError:
                        pass
                    continue
                if self.in_flight < self.limit:
                    self.in_flight += 1
                    return self.epoch
                await self._cond.wait()

    async def release(self, ticket: int, outcome: str, retry_after: float | None = None) -> None:
        """outcome: 'ok', 'throttled' (429) or 'error' (anything else)."""
        async with self._cond:
            self.in_flight -= 1
            wake = 1
            if outcome == "ok":
                self._ok_run += 1
                if self._ok_run >= (self.increase_after or self.limit) and self.limit < self.max:
                    self.limit += 1
                    self._ok_run = 0
                    wake = 2
            else:
                self._ok_run = 0
            if outcome == "throttled":
                if ticket == self.epoch:
                    self.limit = max(1, self.limit // 2)
                    self.epoch += 1
                    self.cuts += 1
                if retry_after:
                    self.blocked_until = max(self.blocked_until, asyncio.get_running_loop().time() + retry_after)
            # Wake only as many waiters as there are free slots (notify_all on every release
            # was quadratic with thousands of queued requests); Retry-After waiters time out on their own.
            self._cond.notify(wake)


class RateBudget:
    """Optional requests-per-minute and tokens-per-minute budgets over a sliding 60 s window.

    Tokens are estimated before a call (prompt chars / 4 + max_tokens) and corrected with the
    server's usage once it answers."""

    WINDOW = 60.0

    def __init__(self, rpm: int | None = None, tpm: int | None = None):
        self.rpm, self.tpm = rpm, tpm
        self._events: collections.deque[list[float]] = collections.deque()  # [time, tokens]
        self._tokens = 0.0
        self._lock = asyncio.Lock()

    @property
    def active(self) -> bool:
        return bool(self.rpm or self.tpm)

    def _expire(self, now: float) -> None:
        while self._events and now - self._events[0][0] >= self.WINDOW:
            self._tokens -= self._events.popleft()[1]

    async def acquire(self, est_tokens: int) -> list[float] | None:
        if not self.active:
            return None
        async with self._lock:  # one waiter at a time keeps the order fair
            while True:
                now = time.monotonic()
                self._expire(now)
                over_r = self.rpm is not None and len(self._events) >= self.rpm
                over_t = (self.tpm is not None and self._events
                          and self._tokens + min(est_tokens, self.tpm) > self.tpm)
                if not over_r and not over_t:
                    ev = [now, float(est_tokens)]
                    self._events.append(ev)
                    self._tokens += est_tokens
                    return ev
                await asyncio.sleep(max(0.01, self.WINDOW - (now - self._events[0][0])))

    def correct(self, ev: list[float] | None, actual_tokens: int) -> None:
        if ev is not None and time.monotonic() - ev[0] < self.WINDOW:  # not yet expired
            self._tokens += actual_tokens - ev[1]
            ev[1] = float(actual_tokens)
