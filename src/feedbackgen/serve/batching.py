"""Micro-batching: concurrent requests for one model are answered by one model call.

Each HTTP call puts its requests on the model's queue and awaits their futures. A single worker
task takes the oldest request, lets others join it for at most `max_wait_s` (counted from when the
oldest arrived, so requests that queued up behind a running batch are not held longer) or until
`max_batch` are gathered, then runs the model on that batch in the model's own thread (one batch at
a time: generators are not written to be called from two threads at once) and resolves each
request's future with its own answer.

The queue is bounded: requests waiting (queued, or gathered into a batch that has not started) are
counted, and a call whose requests do not all fit is refused as a whole (`QueueFull`),
which the service turns into 503 with a Retry-After estimated from recent batch times.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from feedbackgen.config import Decoding
from feedbackgen.errors import ConfigError, FeedbackgenError
from feedbackgen.types import Feedback, FeedbackRequest


class QueueFull(FeedbackgenError):
    """The queue cannot take the call's requests now; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(FeedbackgenError):
    """The service is stopping and takes no new work."""


@dataclass
class _Pending:
    request: FeedbackRequest
    decoding: Decoding
    decoding_key: str
    future: asyncio.Future
    enqueued_at: float = field(default_factory=time.monotonic)


RunBatch = Callable[[list[FeedbackRequest], Decoding], list[Feedback]]


class MicroBatcher:
    """Gathers requests for one model into batches of at most `max_batch`.

    `run_batch(requests, decoding)` is called in `executor` with requests that share one decoding
    setting; `on_batch(size, seconds)` and `on_depth(depth)` report to the metrics.
    """

    def __init__(self, run_batch: RunBatch, executor: Executor, *, max_batch: int = 32,
                 max_wait_s: float = 0.005, max_queue: int = 1024,
                 on_batch: Callable[[int, float], None] | None = None,
                 on_depth: Callable[[int], None] | None = None):
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ConfigError("max_batch and max_queue must be >= 1 and max_wait_s >= 0")
        self.run_batch, self.executor = run_batch, executor
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.on_batch = on_batch or (lambda size, seconds: None)
        self.on_depth = on_depth or (lambda depth: None)
        self.queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self.waiting = 0  # admitted and not yet handed to the model: queued, or gathering into a batch
        self.batch_seconds = 0.05  # running estimate of one batch's time, for Retry-After
        self.closing = False
        self._worker: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return self.waiting

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="micro-batcher")

    async def stop(self) -> None:
        """Refuse new work, finish everything already queued, then end the worker."""
        self.closing = True
        if self._worker is not None and not self._worker.done():
            self.queue.put_nowait(None)
            await self._worker

    def retry_after(self) -> int:
        batches_ahead = math.ceil((self.depth + 1) / self.max_batch)
        return max(1, math.ceil(batches_ahead * self.batch_seconds))

    async def submit(self, requests: Sequence[FeedbackRequest], decoding: Decoding) -> list[Feedback]:
        """Queue `requests` (all or none) and wait for their feedback, in order."""
        if self.closing:
            raise ShuttingDown("the service is shutting down")
        if self.depth + len(requests) > self.max_queue:
            raise QueueFull(f"the queue holds {self.depth} of at most {self.max_queue} requests; "
                            f"this call needs room for {len(requests)}", self.retry_after())
        loop = asyncio.get_running_loop()
        key = json.dumps(decoding.model_dump(), sort_keys=True)
        pending = [_Pending(r, decoding, key, loop.create_future()) for r in requests]
        for p in pending:
            self.queue.put_nowait(p)
        self.waiting += len(pending)
        self.on_depth(self.depth)
        try:
            return list(await asyncio.gather(*(p.future for p in pending)))
        except asyncio.CancelledError:  # the client went away: its queued requests need not run
            for p in pending:
                p.future.cancel()
            raise

    async def _one_by_one(self, loop, group: list[_Pending], error: Exception) -> None:
        """After a batch failed: each of its requests alone, so that only the one that caused it
        fails and no client is shown another client's error (a batch of one just fails)."""
        for p in group:
            if p.future.done():
                continue
            if len(group) == 1:
                p.future.set_exception(error)
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, [p.request], p.decoding)
                if len(results) != 1:
                    raise FeedbackgenError(f"the model answered {len(results)} of 1 request")
            except Exception as e:
                if not p.future.done():
                    p.future.set_exception(e)
                continue
            if not p.future.done():
                p.future.set_result(results[0])

    async def _gather(self, first: _Pending) -> tuple[list[_Pending], bool]:
        """The batch that starts with `first`, and whether the stop marker was met."""
        batch = [first]
        deadline = first.enqueued_at + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout)
                except TimeoutError:
                    break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not (stopping and self.queue.empty()):
            first = await self.queue.get()
            if first is None:
                stopping = True
                continue
            batch, met_stop = await self._gather(first)
            stopping = stopping or met_stop
            self.waiting -= len(batch)
            self.on_depth(self.depth)
            live = [p for p in batch if not p.future.done()]
            if not live:
                continue
            groups: dict[str, list[_Pending]] = {}
            for p in live:  # one model call per decoding setting present in the batch
                groups.setdefault(p.decoding_key, []).append(p)
            t0 = time.perf_counter()
            for group in groups.values():
                try:
                    results = await loop.run_in_executor(
                        self.executor, self.run_batch, [p.request for p in group], group[0].decoding)
                    if len(results) != len(group):
                        raise FeedbackgenError(f"the model answered {len(results)} of {len(group)} requests")
                except Exception as e:  # a failing batch fails its requests, never the worker
                    await self._one_by_one(loop, group, e)
                    continue
                for p, result in zip(group, results):
                    if not p.future.done():
                        p.future.set_result(result)
            seconds = time.perf_counter() - t0
            self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * seconds
            self.on_batch(len(live), seconds)
