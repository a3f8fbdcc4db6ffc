"""Requests join the running decode batch: one engine thread, fed by the event loop.

A decode step of a 7B model costs about the same for 1 row as for 100 (it is
bound by reading the weights and launching kernels, docs/inference.md), so the
server keeps as many rows decoding as there are texts to do. The scheduler is the
only caller of the extractor:

* ``submit(texts)`` puts a job in the inbox (a thread-safe FIFO) and awaits its
  future; 503 if more than ``max_queue_texts`` texts are already waiting;
* one thread owns the model and runs ``Extractor.serve(inbox)``: between decode
  steps the engine takes waiting jobs, their texts join the rows being decoded,
  and a job's future is resolved (``loop.call_soon_threadsafe``) as soon as its own
  texts are done, not when the rows it shared a step with are;
* a request that times out or whose client leaves is dropped: from the inbox if it
  is still waiting, else from the engine, whose rows it frees at the next step.

Any other callable ``extract(texts) -> one list of entities per text`` (a test's
stand-in, another library's model) runs in the same thread, one request per call.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


class ExtractionError(Exception):
    """The extractor failed on a request's texts (answered with 500)."""


class QueueFull(Exception):
    """More texts are waiting than ``max_queue_texts`` (answered with 503)."""


@dataclass
class SchedulerStats:
    requests: int = 0  # requests answered with results
    texts: int = 0
    failed_requests: int = 0
    cancelled_requests: int = 0  # clients gone (or timed out) before their texts were done
    busy_s: float = 0.0  # time with texts in the engine
    engine: Any = None  # the engine's live counters (EngineStats), for an Extractor

    def to_dict(self) -> dict:
        out: dict[str, Any] = {
            "requests": self.requests,
            "texts": self.texts,
            "failed_requests": self.failed_requests,
            "cancelled_requests": self.cancelled_requests,
            "busy_s": round(self.busy_s, 3),
        }
        e = self.engine
        if e is not None:
            out.update(
                decode_steps=e.steps,
                decode_row_steps=e.row_steps,
                mean_rows_per_step=round(e.row_steps / e.steps, 2) if e.steps else None,
                most_rows=e.peak_rows,
                prefills=e.prefills,
                new_tokens=e.new_tokens,
                preemptions=e.preemptions,
            )
        return out


@dataclass(eq=False)
class _Job:
    texts: list[str]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    inbox: _Inbox

    # Called on the engine thread; the future is only touched on the loop's.
    def finish(self, results: Sequence) -> None:
        self.inbox.done(self)
        self.loop.call_soon_threadsafe(_settle, self.future, list(results), None)

    def fail(self, error: Exception) -> None:
        self.inbox.done(self)
        self.loop.call_soon_threadsafe(_settle, self.future, None, error)


def _settle(fut: asyncio.Future, results: list | None, error: Exception | None) -> None:
    if fut.done():  # cancelled: the client is gone
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(results)


class _Inbox:
    """Jobs from the event loop to the engine thread (the engine's :class:`kner.inference.stream.JobSource`)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._gone: list[_Job] = []
        self._running: set[_Job] = set()
        self.closed = False
        self.queued_texts = 0
        self.running_texts = 0
        self.busy_s = 0.0
        self._busy_since: float | None = None

    def put(self, job: _Job) -> None:
        with self._cond:
            self._queue.append(job)
            self.queued_texts += len(job.texts)
            self._cond.notify()

    def take(self, wait: bool, most: int | None = None) -> list[_Job] | None:
        with self._cond:
            while wait and not self._queue and not self.closed:
                self._cond.wait()
            if self.closed:
                return None
            jobs: list[_Job] = []
            while self._queue and (most is None or len(jobs) < most):
                jobs.append(self._queue.popleft())
            for job in jobs:
                self.queued_texts -= len(job.texts)
                self.running_texts += len(job.texts)
                self._running.add(job)
            if jobs and self._busy_since is None:
                self._busy_since = time.perf_counter()
            return jobs

    def done(self, job: _Job) -> None:
        with self._cond:
            if job in self._running:
                self._running.discard(job)
                self.running_texts -= len(job.texts)
                if not self._running and self._busy_since is not None:
                    self.busy_s += time.perf_counter() - self._busy_since
                    self._busy_since = None

    def drop(self, job: _Job) -> None:
        """A job nobody waits for: out of the queue, or (taken already) reported by ``dropped``."""
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                if job in self._running:
                    self._gone.append(job)
            else:
                self.queued_texts -= len(job.texts)

    def dropped(self) -> list[_Job]:
        with self._cond:
            gone, self._gone = self._gone, []
        for job in gone:
            self.done(job)
        return gone

    def close(self) -> list[_Job]:
        """No more jobs; returns those still waiting (and wakes the engine thread)."""
        with self._cond:
            self.closed = True
            left = list(self._queue)
            self._queue.clear()
            self.queued_texts = 0
            self._cond.notify_all()
            return left

    @property
    def queued_requests(self) -> int:
        return len(self._queue)


class Scheduler:
    """``await scheduler.submit(texts)`` -> one list of entities per text, decoded alongside other requests.

    ``extractor``: a :class:`kner.inference.Extractor` (continuous batching through
    ``Extractor.serve``), or any callable ``extractor(texts)`` returning one list of
    entities per text (called from one thread, one request at a time).
    """

    def __init__(self, extractor: Callable[[list[str]], Sequence], *, max_queue_texts: int = 4096):
        self._extractor = extractor
        self.max_queue_texts = max_queue_texts
        self.stats = SchedulerStats()
        self._inbox = _Inbox()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broken: str | None = None

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._inbox = _Inbox()
        self._thread = threading.Thread(target=self._engine_thread, name="kner-engine", daemon=True)
        self._thread.start()

    async def stop(self, timeout: float = 10.0) -> None:
        for job in self._inbox.close():
            _settle(job.future, None, ExtractionError("the server is shutting down"))
        if self._thread is not None:
            # The engine finishes the rows in flight, then returns; a wedged one is left (daemon thread).
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, timeout)
            self._thread = None

    def _engine_thread(self) -> None:
        serve = getattr(self._extractor, "serve", None)
        try:
            if callable(serve):
                from kner.inference.engine import EngineStats  # noqa: PLC0415  lazy: torch (an Extractor has it)

                self.stats.engine = EngineStats()
                serve(self._inbox, self.stats.engine)
            else:
                self._call_each(self._extractor)
        except BaseException as err:  # noqa: BLE001 -- reported to every request from now on
            log.exception("the extraction thread stopped")
            self._broken = _describe(err)
            for job in self._inbox.close():
                job.fail(ExtractionError(f"the extraction thread stopped: {self._broken}"))

    def _call_each(self, extract: Callable[[list[str]], Sequence]) -> None:
        while (jobs := self._inbox.take(wait=True, most=1)) is not None:
            for job in jobs:
                try:
                    results = list(extract(job.texts))
                    if len(results) != len(job.texts):
                        raise ExtractionError(
                            f"the extractor returned {len(results)} results for {len(job.texts)} texts"
                        )
                except Exception as err:  # noqa: BLE001 -- this request fails (500), the next one runs
                    log.error("extractor failed: %s", _describe(err))
                    job.fail(err)
                else:
                    job.finish(results)

    # -- state ----------------------------------------------------------------------
    @property
    def queued_requests(self) -> int:
        return self._inbox.queued_requests

    @property
    def queued_texts(self) -> int:
        return self._inbox.queued_texts

    @property
    def running_texts(self) -> int:
        return self._inbox.running_texts

    @property
    def busy(self) -> bool:
        return self._inbox.running_texts > 0

    def stats_dict(self) -> dict:
        self.stats.busy_s = self._inbox.busy_s
        return self.stats.to_dict()

    # -- submitting ---------------------------------------------------------------------
    async def submit(self, texts: Sequence[str]) -> list:
        if self._loop is None:
            raise RuntimeError("Scheduler.start() has not been awaited")
        if self._broken is not None:
            raise ExtractionError(f"the extraction thread stopped: {self._broken}")
        texts = list(texts)
        if not texts:
            return []
        inbox = self._inbox
        if inbox.queued_texts + len(texts) > self.max_queue_texts:
            raise QueueFull(
                f"{inbox.queued_texts:,} texts are already waiting (max_queue_texts "
                f"{self.max_queue_texts:,}); retry later"
            )
        job = _Job(texts, self._loop.create_future(), self._loop, inbox)
        inbox.put(job)
        try:
            results = await job.future
        except asyncio.CancelledError:
            # Client gone or timed out: its texts leave the queue, or the engine's rows.
            inbox.drop(job)
            self.stats.cancelled_requests += 1
            raise
        except Exception as err:
            self.stats.failed_requests += 1
            if isinstance(err, ExtractionError):
                raise
            raise ExtractionError(_describe(err)) from None
        self.stats.requests += 1
        self.stats.texts += len(texts)
        # An Extractor gives Predictions (entities + diagnostics); a plain callable, the entities.
        return [getattr(r, "entities", r) for r in results]


def _describe(err: BaseException) -> str:
    msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {msg}" if msg else type(err).__name__
