"""Dynamic batching: requests that arrive together are decoded together.

One worker thread per batcher takes up to `max_batch` queued items, waiting at most `max_wait_ms`
after the first for more, calls `fn(items)` once and settles each item's future with its result
(or the exception, for every item of the batch)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Sequence

log = logging.getLogger("distill.gateway")

_STOP = object()


class DynamicBatcher:
    """submit(item) -> Future; fn(list of items) -> list of results, same length and order."""

    def __init__(self, fn: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int, max_wait_ms: float, name: str = "batcher",
                 on_batch: Callable[[int, float], None] | None = None):
        self.fn, self.max_batch, self.max_wait_s = fn, max_batch, max_wait_ms / 1000.0
        self.name, self.on_batch = name, on_batch
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
            t0 = time.perf_counter()
            try:
                results = self.fn([it for it, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{self.name}: {len(results)} results for {len(batch)} items")
                for (_, fut), res in zip(batch, results):
                    fut.set_result(res)
            except BaseException as e:  # every waiter hears about it; the worker lives on
                log.exception("%s: batch of %d failed", self.name, len(batch))
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
            finally:
                with self._lock:
                    self.inflight -= len(batch)
                if self.on_batch:
                    self.on_batch(len(batch), time.perf_counter() - t0)
            if stop:
                return
