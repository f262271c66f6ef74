"""Dynamic batching: requests that arrive together are decoded together.

One worker thread per batcher takes up to `max_batch` queued items, waiting at most `max_wait_ms`
after the first for more, calls `fn(items)` once and settles each item's future with its result
(or the exception). A batch that fails is decoded again one item at a time (unless `split(exc)`
says the failure is not the items' fault, e.g. the backend is down), so one input that cannot be
decoded fails alone and its batch-mates are answered. An item whose future was cancelled while it
waited (its request timed out or its client went away) is skipped, and settling never touches a
cancelled future."""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from typing import Any, Callable, Sequence

log = logging.getLogger("distill.gateway")

_STOP = object()


class DynamicBatcher:
    """submit(item) -> Future; fn(list of items) -> list of results, same length and order."""

    def __init__(self, fn: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int, max_wait_ms: float, name: str = "batcher",
                 on_batch: Callable[[int, float], None] | None = None,
                 split: Callable[[BaseException], bool] | None = None):
        self.fn, self.max_batch, self.max_wait_s = fn, max_batch, max_wait_ms / 1000.0
        self.name, self.on_batch = name, on_batch
        self.split = split or (lambda e: True)
        self.skipped = 0  # items cancelled before their batch started
        self.q: queue.Queue = queue.Queue()
        self.inflight = 0  # submitted and not yet settled
        self._lock = threading.Lock()
        self._closed = False
        self.thread = threading.Thread(target=self._loop, name=f"batch-{name}", daemon=True)
        self.thread.start()

    def submit(self, item: Any) -> Future:
        """Queue one item; the future holds its result. Raises RuntimeError once closed."""
        fut: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name}: closed")
            self.inflight += 1
        self.q.put((item, fut))
        return fut

    def depth(self) -> int:
        return self.q.qsize()

    def close(self, wait: bool = True) -> None:
        """Stop taking items; items already queued are still answered."""
        with self._lock:
            self._closed = True
        self.q.put(_STOP)
        if wait:
            self.thread.join(timeout=60)

    def _loop(self) -> None:
        while True:
            first = self.q.get()
            if first is _STOP:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            stop = False
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    nxt = self.q.get(timeout=left) if left > 0 else self.q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            taken = len(batch)
            # A future cancelled while queued is dropped here; the others are marked running, so a
            # cancel() from now on fails and set_result below cannot meet a cancelled future.
            batch = [(it, fut) for it, fut in batch if fut.set_running_or_notify_cancel()]
            self.skipped += taken - len(batch)
            t0 = time.perf_counter()
            try:
                if batch:
                    self._run(batch)
            finally:
                with self._lock:
                    self.inflight -= taken
                if self.on_batch and batch:
                    self.on_batch(len(batch), time.perf_counter() - t0)
            if stop:
                return

    def _run(self, batch: list) -> None:
        try:
            results = self.fn([it for it, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: {len(results)} results for {len(batch)} items")
        except BaseException as e:  # every waiter hears about it; the worker lives on
            if len(batch) > 1 and self.split(e):
                log.warning("%s: batch of %d failed (%s: %s); decoding its items one by one", self.name, len(batch),
                            type(e).__name__, str(e)[:200])
                for pair in batch:
                    self._run([pair])
                return
            log.exception("%s: batch of %d failed", self.name, len(batch))
            for _, fut in batch:
                _settle(fut, exc=e)
            return
        for (_, fut), res in zip(batch, results):
            _settle(fut, res)


def _settle(fut: Future, result: Any = None, exc: BaseException | None = None) -> None:
    """Set a future's outcome unless it is already settled (never raises InvalidStateError)."""
    if fut.done():
        return
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
    except InvalidStateError:
        pass
