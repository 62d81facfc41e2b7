"""Dynamic micro-batching: images from concurrent requests are scored together, in one thread.

A batch is formed when ``max_batch_size`` images wait or when the oldest waiting image has waited ``max_wait_s``,
whichever comes first (rounded down to whole scoring chunks when more than one chunk waits); and at once when no
other image is on its way (``expecting()`` is 0: nothing admitted is still
being decoded), so a lone request never waits for company that cannot come. The experts run only in this thread (one model, one device stream, no lock contention); the
event loop and the decoding threads only enqueue and wait on futures. Admission (how many images may be in the
service at once) is the caller's job: this queue is never larger than what was admitted.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from typing import Callable, Sequence


class MicroBatcher:
    """Scores submitted items in batches with ``score_batch(items) -> per-item results`` on its own thread."""

    def __init__(self, score_batch: Callable[[list], Sequence], max_batch_size: int, max_wait_s: float,
                 on_batch: Callable[[int, float], None] | None = None, expecting: Callable[[], int] | None = None,
                 multiple_of: int = 1):
        self._score_batch = score_batch
        self._max_batch_size = int(max_batch_size)
        self._max_wait_s = float(max_wait_s)
        self._on_batch = on_batch
        self._expecting = expecting or (lambda: 1)
        self._multiple_of = max(1, int(multiple_of))
        self._waiting: collections.deque = collections.deque()
        self._condition = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="fdcore-batcher", daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        return len(self._waiting)

    def wake(self) -> None:
        """Re-check the batch condition (an image expected by ``expecting()`` will not come after all)."""
        with self._condition:
            self._condition.notify()

    def submit(self, items: Sequence) -> list[concurrent.futures.Future]:
        """Queue items; each future resolves to that item's result (or the batch's exception)."""
        futures = [concurrent.futures.Future() for _ in items]
        now = time.monotonic()
        with self._condition:
            if self._stopping:
                raise RuntimeError("the batcher is stopped")
            self._waiting.extend((item, future, now) for item, future in zip(items, futures))
            self._condition.notify()
        return futures

    def close(self, timeout: float | None = None) -> None:
        """Score what is queued, then stop the thread."""
        with self._condition:
            self._stopping = True
            self._condition.notify()
        self._thread.join(timeout)

    def _next_batch(self) -> list | None:
        with self._condition:
            while not self._waiting and not self._stopping:
                self._condition.wait()
            if not self._waiting:
                return None
            deadline = self._waiting[0][2] + self._max_wait_s
            while len(self._waiting) < self._max_batch_size and not self._stopping and self._expecting() > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            count = min(self._max_batch_size, len(self._waiting))
            if count > self._multiple_of:
                # the experts run on fixed chunks (the last one padded): under load, whole chunks waste nothing and
                # the remainder starts the next batch at once
                count -= count % self._multiple_of
            return [self._waiting.popleft() for _ in range(count)]

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            # a request that timed out cancelled its futures: its images are not scored
            batch = [(item, future) for item, future, _ in batch if future.set_running_or_notify_cancel()]
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = self._score_batch([item for item, _ in batch])
            except BaseException as exc:  # noqa: BLE001 - reported to every waiting request, the thread lives on
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results):
                future.set_result(result)
            if self._on_batch is not None:
                self._on_batch(len(batch), time.perf_counter() - started)
