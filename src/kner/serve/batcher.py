"""Coalesce concurrent requests into one extractor call.

A decode step of a 7B model costs about the same for 1 row as for 100 (it is
bound by reading the weights and launching kernels, docs/inference.md), so
answering eight clients with one call of eight texts is close to eight times
cheaper than eight calls of one. The batcher is the only place that calls the
extractor:

* requests join a FIFO queue (``submit``);
* one worker takes the oldest request and waits until ``max_wait_ms`` after
  *its arrival* for others, or until ``max_batch_texts`` texts are queued. A
  request that waited while the extractor was busy is therefore taken at once
  with everything queued behind it: under load the window costs nothing;
* whole requests are taken in arrival order up to ``max_batch_texts`` (a
  request is never split; one larger than that runs alone);
* the extractor runs in one worker thread (the event loop stays free to accept
  requests and answer ``/health``), once for all texts, and each request's
  future gets its own slice, in order;
* if that call raises, each request of the batch is retried alone, so a text
  that breaks the extractor fails only its own request (500) and never leaves
  the others waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class ExtractionError(Exception):
    """The extractor failed on a request's texts (answered with 500)."""


class QueueFull(Exception):
    """More texts are waiting than ``max_queue_texts`` (answered with 503)."""


@dataclass
class BatcherStats:
    requests: int = 0  # requests answered with results
    texts: int = 0
    failed_requests: int = 0
    cancelled_requests: int = 0  # clients gone (or timed out) before their batch ran
    calls: int = 0  # extractor calls, retries included
    failed_calls: int = 0
    largest_call: int = 0  # texts
    busy_s: float = 0.0

    def to_dict(self) -> dict:
        ok_calls = self.calls - self.failed_calls
        return {
            "requests": self.requests,
            "texts": self.texts,
            "failed_requests": self.failed_requests,
            "cancelled_requests": self.cancelled_requests,
            "extractor_calls": self.calls,
            "failed_extractor_calls": self.failed_calls,
            "largest_call_texts": self.largest_call,
            "mean_call_texts": round(self.texts / ok_calls, 2) if ok_calls else None,
            "extractor_busy_s": round(self.busy_s, 3),
        }


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future
    arrived: float  # loop.time()
    results: list | None = field(default=None)


class Batcher:
    """``await batcher.submit(texts)`` -> one result per text, from calls shared with concurrent requests.

    ``extract(list[str]) -> list[result]`` must return one result per text, in
    order; it is only ever called from one thread at a time.
    """

    def __init__(
        self,
        extract: Callable[[list[str]], Sequence],
        *,
        max_batch_texts: int = 64,
        max_wait_ms: float = 10.0,
        max_queue_texts: int = 4096,
    ):
        self._extract = extract
        self.max_batch_texts = max_batch_texts
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue_texts = max_queue_texts
        self.stats = BatcherStats()
        # A deque rather than asyncio.Queue: the worker must look at the next request
        # before taking it (it may not fit in the batch and then starts the next one).
        self._queue: deque[_Job] = deque()
        self._queued_texts = 0
        self._busy = False
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # One thread: models are not safe to call concurrently, and one call at a time is the point.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kner-extract")

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._worker(), name="kner-batcher")

    def _running(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Event]:
        if self._loop is None or self._wakeup is None:
            raise RuntimeError("Batcher.start() has not been awaited")
        return self._loop, self._wakeup

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(ExtractionError("the server is shutting down"))
        self._queued_texts = 0
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- state ----------------------------------------------------------------------
    @property
    def queued_requests(self) -> int:
        return len(self._queue)

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    @property
    def busy(self) -> bool:
        return self._busy

    # -- submitting ---------------------------------------------------------------------
    async def submit(self, texts: Sequence[str]) -> list:
        if self._task is None:
            raise RuntimeError("Batcher.start() has not been awaited")
        texts = list(texts)
        if not texts:
            return []
        if self._queued_texts + len(texts) > self.max_queue_texts:
            raise QueueFull(
                f"{self._queued_texts:,} texts are already waiting (max_queue_texts "
                f"{self.max_queue_texts:,}); retry later"
            )
        loop, wakeup = self._running()
        fut = loop.create_future()
        job = _Job(texts, fut, loop.time())
        self._queue.append(job)
        self._queued_texts += len(texts)
        wakeup.set()
        try:
            return await fut
        except asyncio.CancelledError:
            # Client gone or timed out: leave the queue now, so the queue depth and
            # max_queue_texts count only requests someone still waits for. A job
            # already running finishes; the worker drops its results.
            try:
                self._queue.remove(job)
            except ValueError:
                pass
            else:
                self._queued_texts -= len(job.texts)
                self.stats.cancelled_requests += 1
            raise

    # -- worker ---------------------------------------------------------------------------
    async def _worker(self) -> None:
        loop, wakeup = self._running()
        while True:
            while not self._queue:
                wakeup.clear()
                await wakeup.wait()
            deadline = self._queue[0].arrived + self.max_wait
            while self._queued_texts < self.max_batch_texts:
                left = deadline - loop.time()
                if left <= 0:
                    break
                wakeup.clear()
                try:
                    await asyncio.wait_for(wakeup.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if batch:
                try:
                    await self._run(batch, isolate=True)
                except asyncio.CancelledError:
                    raise
                except Exception as err:  # noqa: BLE001 -- a bug here must not kill the worker
                    log.exception("batcher: unexpected error")
                    for job in batch:
                        _fail(job, ExtractionError(f"internal error: {err}"))

    def _take(self) -> list[_Job]:
        batch: list[_Job] = []
        n = 0
        while self._queue:
            job = self._queue[0]
            if batch and n + len(job.texts) > self.max_batch_texts:
                break
            self._queue.popleft()
            self._queued_texts -= len(job.texts)
            if job.future.done():
                self.stats.cancelled_requests += 1
                continue
            batch.append(job)
            n += len(job.texts)
        return batch

    async def _run(self, batch: list[_Job], isolate: bool) -> None:
        texts = [t for job in batch for t in job.texts]
        self._busy = True
        t0 = time.perf_counter()
        error: Exception | None = None
        try:
            results = await self._running()[0].run_in_executor(self._executor, self._call, texts)
        except Exception as err:  # noqa: BLE001 -- reported to the requests, not raised
            error = err
        finally:
            self._busy = False
            self.stats.busy_s += time.perf_counter() - t0
        self.stats.calls += 1
        if error is not None:
            self.stats.failed_calls += 1
            if isolate and len(batch) > 1:
                log.warning(
                    "extractor failed on a batch of %d requests (%s); retrying each alone", len(batch), _describe(error)
                )
                for job in batch:
                    if not job.future.done():
                        await self._run([job], isolate=False)
                return
            log.error("extractor failed: %s", _describe(error))
            for job in batch:
                if not job.future.done():
                    self.stats.failed_requests += 1
                    _fail(job, ExtractionError(_describe(error)))
            return
        self.stats.largest_call = max(self.stats.largest_call, len(texts))
        i = 0
        for job in batch:
            part = results[i : i + len(job.texts)]
            i += len(job.texts)
            if job.future.done():
                self.stats.cancelled_requests += 1
                continue
            job.future.set_result(part)
            self.stats.requests += 1
            self.stats.texts += len(part)

    def _call(self, texts: list[str]) -> list:
        results = list(self._extract(texts))
        if len(results) != len(texts):
            raise ExtractionError(f"the extractor returned {len(results)} results for {len(texts)} texts")
        return results


def _fail(job: _Job, err: Exception) -> None:
    if not job.future.done():
        job.future.set_exception(err)


def _describe(err: Exception) -> str:
    msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {msg}" if msg else type(err).__name__
