"""Micro-batching: concurrent requests share one decoding call. Knows nothing of HTTP.

Callers :meth:`MicroBatcher.submit` a :class:`Job` (a key and a list of items) from any
thread, or ``await`` :meth:`MicroBatcher.run` from an event loop. One worker thread, the
only one that calls ``batch_fn``, takes a batch when it holds ``max_batch`` items or
``max_wait`` seconds have passed since the arrival of its first job, whichever comes
first; jobs that are already waiting then join it up to ``max_batch`` items. A job that
arrived while the worker was busy waits ``max_wait`` from the moment the worker is free
instead: the callers the previous batch has just answered then have that long to send
their next job and join (closed-loop clients would otherwise split into two groups that
take turns, each decoded in batches half the size). Only jobs
with the same key (e.g. the same search settings) share a batch; the others keep their
place for the next one. A job is never split: a job larger than ``max_batch`` is a batch
of its own. ``batch_fn(key, items)`` returns one result per item; its results are split
back to the jobs, and an exception it raises fails every job of that batch (and only
those). The batch sizes are counted in :class:`BatchStats`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new jobs."""


@dataclass
class Job:
    key: Hashable
    items: Sequence[Any]
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """What the worker has done; read with :meth:`MicroBatcher.stats`."""

    jobs: int = 0
    items: int = 0
    batches: int = 0
    failed_batches: int = 0
    cancelled_jobs: int = 0
    busy_seconds: float = 0.0
    sizes: collections.Counter = field(default_factory=collections.Counter)  # items -> batches


_STOP = object()


class MicroBatcher:
    """One worker thread that owns ``batch_fn`` and feeds it micro-batches."""

    def __init__(self, batch_fn: Callable[[Hashable, list], Sequence], max_batch: int = 64,
                 max_wait: float = 0.005, name: str = "batcher"):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0, got {max_wait}")
        self.batch_fn = batch_fn
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # arrived, not yet in a batch (another key, or did not fit): oldest first
        self._held: collections.deque[Job] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False
        self._pending = 0  # jobs submitted and not yet answered
        self._stats = BatchStats()
        self._free_since = time.monotonic()  # when the worker last finished a batch
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callers

    def submit(self, key: Hashable, items: Sequence[Any]) -> Future:
        """Queue a job; its future gets the list of results, or the batch's exception."""
        job = Job(key, list(items))
        with self._lock:
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            self._pending += 1
            self._queue.put(job)  # under the lock: never behind the stop marker
        job.future.add_done_callback(self._answered)
        return job.future

    async def run(self, key: Hashable, items: Sequence[Any]) -> list:
        """``submit`` and await the results without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(key, items))

    def close(self, timeout: float | None = None) -> None:
        """Take no new jobs, answer the queued ones, then stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    @property
    def pending(self) -> int:
        """Jobs submitted and not answered yet (queued or being decoded)."""
        with self._lock:
            return self._pending

    def stats(self) -> BatchStats:
        """A copy of the counters."""
        with self._lock:
            s = self._stats
            return BatchStats(s.jobs, s.items, s.batches, s.failed_batches, s.cancelled_jobs,
                              s.busy_seconds, collections.Counter(s.sizes))

    def _answered(self, _future: Future) -> None:
        with self._lock:
            self._pending -= 1

    # ------------------------------------------------------------------ worker

    def _work(self) -> None:
        stopping = False
        while True:
            if self._held:
                first = self._held.popleft()
            elif stopping:
                return
            else:
                first = self._queue.get()
                if first is _STOP:
                    return
            batch = [first]
            size = len(first.items)
            # a job that waited for the worker gets its wait from when the worker is free
            deadline = max(first.arrived, self._free_since) + self.max_wait
            # the jobs held back earlier arrived first: they join before newer ones
            for job in list(self._held):
                if size >= self.max_batch:
                    break
                if job.key == first.key and size + len(job.items) <= self.max_batch:
                    self._held.remove(job)
                    batch.append(job)
                    size += len(job.items)
            while size < self.max_batch and not stopping:
                try:
                    wait = deadline - time.monotonic()
                    job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break  # waited long enough and nothing else is waiting
                if job is _STOP:
                    stopping = True  # answer all that came before it, then stop
                elif job.key != first.key:
                    self._hold(job)
                elif size + len(job.items) > self.max_batch:
                    self._hold(job)
                    break
                else:
                    batch.append(job)
                    size += len(job.items)
            self._run_batch(first.key, batch)
            self._free_since = time.monotonic()

    def _hold(self, job: Job) -> None:
        """Keep ``job`` for a later batch, in order of arrival: the oldest held job starts
        the next batch, whatever its key, so a steady stream of one key (jobs that do not
        fit the batch being filled) cannot keep another key waiting."""
        i = len(self._held)
        while i > 0 and self._held[i - 1].arrived > job.arrived:
            i -= 1
        self._held.insert(i, job)

    def _run_batch(self, key: Hashable, batch: list[Job]) -> None:
        # a job whose caller went away (a cancelled future) is not decoded;
        # a running future can no longer be cancelled, so each result finds its caller
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]
        with self._lock:
            self._stats.cancelled_jobs += len(batch) - len(live)
        if not live:
            return
        items = [item for job in live for item in job.items]
        started = time.perf_counter()
        try:
            results = list(self.batch_fn(key, items))
            if len(results) != len(items):
                raise RuntimeError(f"batch function returned {len(results)} results for "
                                   f"{len(items)} items")
        except Exception as exc:  # noqa: BLE001 - fails this batch's jobs, not the worker
            log.exception("batch of %d items (%d requests) failed", len(items), len(live))
            with self._lock:
                self._count(len(live), len(items), time.perf_counter() - started, failed=True)
            for job in live:
                job.future.set_exception(exc)
            return
        with self._lock:
            self._count(len(live), len(items), time.perf_counter() - started, failed=False)
        start = 0
        for job in live:
            job.future.set_result(results[start:start + len(job.items)])
            start += len(job.items)

    def _count(self, jobs: int, items: int, seconds: float, failed: bool) -> None:
        s = self._stats
        s.jobs += jobs
        s.items += items
        s.batches += 1
        s.failed_batches += failed
        s.busy_seconds += seconds
        s.sizes[items] += 1
