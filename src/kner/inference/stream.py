"""Extraction for jobs that keep arriving (``kner serve``): one paged engine run that new texts join.

``Extractor.predict`` hands the engine a fixed list of pieces; here the engine's
:class:`~kner.inference.engine.Feed` is a :class:`JobSource`. Between decode steps
the engine asks for more: waiting jobs are taken (up to two batches of pieces in
flight; the rest wait in the source, where they count against its queue limit),
split and tokenized as ``predict`` does, and their pieces join the
queue of the running engine; a job is finished as soon as its own pieces are, with
the same :class:`~kner.inference.results.Prediction` objects ``predict`` returns for
the same texts. Jobs given up (a client gone or timed out) leave the engine at once,
their rows freed.

Out of memory: the rows and pool are halved (as ``predict`` does) and the engine
restarts with every unfinished piece. Any other error fails the jobs in flight and
the engine restarts for the next ones.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from kner.errors import KnerError
from kner.inference.results import Prediction, RunStats
from kner.model.oom import is_oom
from kner.textio import text_problem

if TYPE_CHECKING:
    from kner.inference.engine import EngineStats, Request
    from kner.inference.extractor import Extractor
    from kner.inference.pieces import Piece

log = logging.getLogger(__name__)


class Job(Protocol):
    texts: Sequence[str]

    def finish(self, predictions: list[Prediction]) -> None: ...  # called on the engine's thread
    def fail(self, error: Exception) -> None: ...


class JobSource(Protocol):
    def take(self, wait: bool, most: int | None = None) -> list[Job] | None:
        """Up to ``most`` waiting jobs, oldest first (``wait``: block until there is one); None once closed."""
        ...

    def dropped(self) -> list[Job]:
        """Jobs taken earlier and given up since the last call."""
        ...


@dataclass(eq=False)
class _Open:
    job: Job
    pieces: list[Piece]
    failed: dict[int, str]
    stats: RunStats
    left: int = 0
    keys: list[int] = field(default_factory=list)


class _Stream:
    """The engine's feed: jobs in, pieces out as requests; finished pieces back to their jobs."""

    def __init__(self, ex: Extractor, source: JobSource, prefix_len: int):
        self.ex, self.source, self.prefix_len = ex, source, prefix_len
        self.pieces: dict[int, Piece] = {}  # key -> piece in flight
        self.owner: dict[int, _Open] = {}
        self.texts: dict[int, str] = {}  # the chooser's view: key -> piece text
        self.next_key = 0
        self.closed = False
        self.engine = None
        self.chooser = None
        self.room = 1

    # -- Feed ----------------------------------------------------------------------------------
    def more(self, idle: bool) -> list[Request] | None:
        if self.closed:
            return None
        room = self.room - len(self.pieces)
        if not idle and room <= 0:
            return []
        jobs = self.source.take(wait=idle, most=max(1, room))
        if jobs is None:
            self.closed = True
            return None
        return [req for job in jobs for req in self._open(job)]

    def dropped(self) -> set[int]:
        jobs = self.source.dropped()
        if not jobs:
            return set()
        gone = {id(j) for j in jobs}
        keys = {k for k, o in self.owner.items() if id(o.job) in gone}
        for k in keys:
            self._forget(k)
        return keys

    # -- jobs ------------------------------------------------------------------------------------
    def _open(self, job: Job) -> list[Request]:
        from kner.inference.engine import Request  # noqa: PLC0415  lazy: torch

        ex = self.ex
        try:
            stats = RunStats(texts=len(job.texts))
            failed = {i: why for i, t in enumerate(job.texts) if (why := text_problem(t)) is not None}
            pieces = ex._pieces(job.texts, stats, None, skip=failed)
            p = self.prefix_len
            if any(pc.ids[:p] != ex.prefix_ids[:p] for pc in pieces):
                raise KnerError("a prompt does not start with the instruction's tokens")
            reqs = [Request(self.next_key + i, pc.ids[p:], pc.max_new) for i, pc in enumerate(pieces)]
            assert self.engine is not None
            self.engine.check_fits(reqs)
        except Exception as err:  # noqa: BLE001 -- this job fails, the engine goes on
            _call(job.fail, err)
            return []
        o = _Open(job, pieces, failed, stats, left=len(pieces))
        for r, pc in zip(reqs, pieces):
            self.pieces[r.key], self.owner[r.key], self.texts[r.key] = pc, o, pc.text
            o.keys.append(r.key)
        self.next_key += len(reqs)
        if not pieces:
            self._close(o)
        return reqs

    def on_done(self, key: int, toks: list[int]) -> None:
        pc = self.pieces.pop(key)
        self.ex._decode_output(pc, key, self.chooser, toks)
        self.texts.pop(key, None)
        o = self.owner.pop(key)
        o.left -= 1
        if o.left == 0:
            self._close(o)

    def _close(self, o: _Open) -> None:
        preds = self.ex._assemble(o.job.texts, o.pieces, o.stats)
        for i, why in o.failed.items():
            preds[i].error = why
        _call(o.job.finish, preds)

    def _forget(self, key: int) -> None:
        self.pieces.pop(key, None)
        self.texts.pop(key, None)
        self.owner.pop(key, None)

    # -- restarts --------------------------------------------------------------------------------
    def unfinished(self) -> list[Request]:
        """Every piece in flight, oldest first: the first requests of a restarted engine."""
        from kner.inference.engine import Request  # noqa: PLC0415  lazy: torch

        p = self.prefix_len
        return [Request(k, pc.ids[p:], pc.max_new) for k, pc in sorted(self.pieces.items())]

    def fail_all(self, err: Exception) -> int:
        jobs = {id(o.job): o.job for o in self.owner.values()}
        for k in list(self.pieces):
            self._forget(k)
        if jobs:  # a job keeps its error as long as its client does: not the frames of the failed run
            err.__traceback__ = err.__context__ = err.__cause__ = None
        for job in jobs.values():
            _call(job.fail, err)
        return len(jobs)


def serve(ex: Extractor, source: JobSource, stats: EngineStats | None = None) -> None:
    """Extract every job of ``source`` until it closes; see the module docstring."""
    prefix = ex._prefix(len(ex.prefix_ids))
    stream = _Stream(ex, source, prefix.length)
    foot, suffix_max = _worst_piece(ex)
    rows = ex.config.batch_size or ex.config.max_batch_size
    while not stream.closed or stream.pieces:  # closed while out of memory: the pieces in flight still finish
        plan = ex._plan([foot] * rows, suffix_max, prefix.length)
        # Room for the largest piece at least (the pool is halved after each out-of-memory error): a
        # text that arrives later must never be refused for a pool smaller than it.
        plan.pool_tokens = max(plan.pool_tokens, foot + 32)
        stream.engine = engine = ex._engine(prefix, plan)
        stream.chooser = chooser = ex._chooser(stream.texts)
        stream.room = 2 * plan.max_rows
        try:
            engine.run(stream.unfinished(), chooser, stream.on_done, feed=stream, stats=stats)
        except Exception as err:  # noqa: BLE001 -- out of memory: retry smaller; else the jobs in flight fail
            if is_oom(err):
                try:
                    ex._after_oom(plan.max_rows)
                    continue
                except KnerError as floor:
                    err = floor
            else:
                log.exception("the engine failed; failing the requests in flight")
            if not stream.fail_all(err):
                raise err  # the out-of-memory floor's KnerError, not the error it was raised in


def _worst_piece(ex: Extractor) -> tuple[int, int]:
    """The largest footprint (prompt after the prefix + budget) and prompt a piece can have: every text
    that may arrive must fit the pool planned at the start."""
    cfg = ex.config
    text = ex._max_text_tokens()
    # +2: text and suffix tokenized together can merge differently at their boundary.
    prompt = text + len(ex.tokenizer(ex.suffix_text, add_special_tokens=False)["input_ids"]) + 2
    new = math.ceil(text * cfg.new_tokens_factor) + cfg.new_tokens_overhead
    if cfg.max_new_tokens:
        new = min(new, cfg.max_new_tokens)
    return prompt + max(1, new), prompt


def _call(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 -- a caller's callback must not stop the engine
        log.exception("job callback failed")
