"""Client-side flow control for HTTP teachers: an AIMD concurrency limit and RPM/TPM budgets."""

from __future__ import annotations

import asyncio
import collections
import time

# The limiter's default reactions (TeacherConfig.limit_decrease / throttle_tolerance; measured in
# benchmarks/teacher_throughput.py, figures in docs/teachers.md).
DECREASE = 0.75
TOLERANCE = 0.1
INITIAL = 8  # slow start's first window (TCP's initial window is 10): a rate limit sees no burst of max_in_flight


class AdaptiveLimit:
    """Requests in flight, adapted like TCP congestion control (AIMD).

    Outcomes, given to `release`: 'ok', 'throttled' (429, or 503 with Retry-After: the endpoint
    says it is overloaded) or 'error' (5xx, timeouts, broken connections: retried by the client,
    no change to the limit).

    Slow start: the limit starts at `initial` (8) and grows by one per success, doubling each
    round trip, until the first cut (TCP's slow start, RFC 5681): a rate-limited endpoint sees a
    burst of about twice what it allows, not of `max_in_flight`.

    Growth after a cut (congestion avoidance): +1 each time `limit` successes have come back since
    the limit last changed, not necessarily in a row (TCP's window grows by one per window of
    acknowledgements). Once the limit is back above where the last cut happened without another
    cut, the endpoint has more room than before (a raised rate limit, a quieter neighbour): growth
    is one per success again until the next cut (the max-probing phase of CUBIC, RFC 9438 4.2,
    simplified), so a doubled limit is found in a few round trips instead of one per extra request.

    Cut: the limit is multiplied by `decrease` (rounded down, at least 1) when more than
    `tolerance * limit` answers of one window were throttled. A window starts over after `limit`
    answers. Both rules count only requests started after the last cut: a burst of 429s from
    requests sent at the old limit cuts once, not once per answer (TCP's once per window).
    A tolerance above 0 lets at least one throttled answer per window pass (one in 8 is noise).
    `tolerance` 0 cuts on the first 429 (classic AIMD, which under random throttling holds
    about 1.2/sqrt(share) in flight: 5 at 5%); a small tolerance keeps a shared endpoint's
    sporadic 429s from collapsing the limit, and a real rate limit still cuts within a window.

    Retry-After (any outcome): nobody starts a new request before it has passed.
    """

    def __init__(self, max_in_flight: int, initial: int | None = INITIAL, decrease: float = DECREASE,
                 tolerance: float = TOLERANCE):
        if not 0.0 < decrease < 1.0:
            raise ValueError(f"decrease must be in (0, 1), got {decrease}")
        if not 0.0 <= tolerance < 1.0:
            raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
        self.max = max(1, max_in_flight)
        self.limit = min(self.max, initial or self.max)
        self.decrease, self.tolerance = decrease, tolerance
        self.in_flight = 0
        self.epoch = 0  # bumped at every cut
        self.blocked_until = 0.0
        self.cuts = 0
        self.grows = 0
        self._slow_start = True  # one per success until the first cut, and again above the last cut's limit
        self._last_cut_from = 0  # the limit the last cut was made from
        self._acked = 0  # successes since the limit last changed
        self._win_n = 0  # answers of this epoch's requests in the current window
        self._win_throttled = 0
        self._in_flight_seen: list[int] = []  # in flight as each request started (for stats())
        self._cond = asyncio.Condition()

    def stats(self) -> dict[str, float | int]:
        """Cuts, growths, the final limit and the median number in flight when a request started."""
        seen = sorted(self._in_flight_seen)
        return {"cuts": self.cuts, "grows": self.grows, "final_limit": self.limit,
                "median_in_flight": seen[len(seen) // 2] if seen else 0}

    async def acquire(self) -> int:
        """Wait for a free slot (and for any Retry-After to pass); returns the ticket for `release`."""
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
                    self._in_flight_seen.append(self.in_flight)
                    if self.in_flight < self.limit:  # more free slots (after a growth or a Retry-After): pass it on
                        self._cond.notify(1)
                    return self.epoch
                await self._cond.wait()

    def _record(self, ticket: int, outcome: str) -> None:
        """Apply the cut and growth rules to one outcome."""
        if outcome == "error" or ticket != self.epoch:  # sent before the last cut: says nothing of this limit
            return
        self._win_n += 1
        self._win_throttled += outcome == "throttled"
        # A tolerance above 0 allows at least one throttled answer per window: in a small window (slow
        # start's 8) one sporadic 429 is more than 10% and would end slow start on noise.
        if self._win_throttled > (max(1.0, self.tolerance * self.limit) if self.tolerance else 0.0):
            self._last_cut_from, self._slow_start = self.limit, False
            self.limit = max(1, int(self.limit * self.decrease))
            self.epoch += 1
            self.cuts += 1
            self._acked = self._win_n = self._win_throttled = 0
            return
        if self._win_n >= self.limit:
            self._win_n = self._win_throttled = 0
        if outcome == "ok":
            self._acked += 1
            if self.limit < self.max and (self._slow_start or self._acked >= self.limit):
                self.limit += 1
                self.grows += 1
                self._acked = 0
                if self.limit > self._last_cut_from:
                    self._slow_start = True

    async def release(self, ticket: int, outcome: str, retry_after: float | None = None) -> None:
        """Give back the slot of `ticket` (from `acquire`) with its outcome ('ok', 'throttled' or
        'error') and the server's Retry-After in seconds, if it sent one."""
        if outcome not in ("ok", "throttled", "error"):
            raise ValueError(f"unknown outcome {outcome!r}")
        async with self._cond:
            self.in_flight -= 1
            self._record(ticket, outcome)
            if retry_after:
                self.blocked_until = max(self.blocked_until, asyncio.get_running_loop().time() + retry_after)
            # Wake one waiter, which wakes the next while slots are free (notify_all on every release was
            # quadratic with thousands of queued requests); Retry-After waiters time out on their own.
            if self.in_flight < self.limit:
                self._cond.notify(1)


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
