"""Continuous batching over a paged K/V pool: the default decode engine.

Static batches waste most of their rows: every row of a batch runs until the
longest answer in it is done, and reserves K/V room for its whole token budget
from the start. Here instead:

* the K/V of all rows lives in one preallocated pool per layer, handed out in
  blocks of ``block`` tokens as rows grow, so a row holds only what it has
  written (no padding, no reservation for tokens it may never generate);
* a finished row leaves at once and waiting texts are admitted in groups
  (one prefill forward per group, at most ``prefill_chunk_tokens`` tokens, and
  at least a fifth of the decoding rows so prefill forwards stay few), so the
  decode batch stays full;
* if the pool runs dry, the most recently admitted row is evicted and requeued
  (greedy decoding is deterministic, so redoing it gives the same output), and
  nothing new is admitted until some row finishes; the oldest row always keeps
  its room, so the run always progresses;
* the instruction prefix is shared by all rows (attention in
  :mod:`kner.inference.prefix_cache`, which also applies sliding windows and
  soft-capping, so this one engine serves every model), never copied into the pool.

``PagedEngine.run`` is admit + prefill, make room, decode step, retire, over an
:class:`EngineState`; each step is a method. Given a :class:`Feed`, a run also takes
new requests between decode steps and drops those given up (``kner serve``: requests
join the running batch instead of waiting for it to end).

Each decode step writes every row's new K/V at its own pool slot and hands the
attention each row's block table and length. On CUDA a Triton kernel reads the
rows' K/V straight from the pool (:mod:`kner.inference.paged_attention`); the
general path (the CPU, soft-capped or sliding-window attention) gathers them into
a padded ``(rows, kv_heads, width x block, head_dim)`` view, transient, one layer
at a time, and admission keeps ``rows x width x block`` under ``transient_tokens``
(None when nothing is gathered).
"""

from __future__ import annotations

import functools
import math
import time
import weakref
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from kner.errors import KnerError
from kner.inference.prefix_cache import PrefixKV, shared_prefix_attention_active
from kner.model import compat


@dataclass
class Request:
    key: int  # the caller's id for this sequence
    ids: list[int]  # token ids after the shared prefix
    max_new: int


@dataclass
class EngineStats:
    steps: int = 0  # decode forwards
    prefills: int = 0  # prefill forwards (admission groups)
    new_tokens: int = 0
    prefill_tokens: int = 0
    preemptions: int = 0
    peak_rows: int = 0
    row_steps: int = 0  # sum over decode steps of rows in the batch
    pool_tokens: int = 0
    dropped: int = 0  # requests given up by the feed before they finished
    graph_steps: int = 0  # decode steps replayed from a CUDA graph
    graphs: int = 0  # CUDA graphs captured (one per rows bucket and table width met)
    capture_seconds: float = 0.0  # steps that capture a graph (a bucket's first): warm-up (the run's first) + capture


@dataclass(eq=False)
class _Row:
    req: Request
    order: int  # admission count: the youngest row is evicted first
    blocks: list[int] = field(default_factory=list)
    flat: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # pool slot of each own token
    length: int = 0  # own tokens written to the pool
    pending: int = -1  # chosen token not yet fed
    gen: list[int] = field(default_factory=list)

    @property
    def bound(self) -> int:  # own tokens this row can ever hold
        return len(self.req.ids) + self.req.max_new


class Chooser(Protocol):
    """Picks each row's next token from its logits (plain argmax, or the tag grammar)."""

    def choose(self, logits: torch.Tensor, rows: Sequence[int]) -> list[int]: ...
    def done(self, row: int) -> bool: ...
    def reset(self, row: int) -> None: ...


class Feed(Protocol):
    """New work for a running engine, asked for between decode steps on the engine's thread."""

    def more(self, idle: bool) -> list[Request] | None:
        """Requests to add (each passed ``PagedEngine.check_fits``). ``idle``: nothing is decoding, so it
        may block until work comes. None: the feed is closed; the run ends when its rows are done."""
        ...

    def dropped(self) -> Collection[int]:
        """Keys given up since the last call: they leave the queue, or their row, unfinished."""
        ...


class GreedyChooser:
    """Unconstrained argmax over the tokenizer's ids (a model's padded extra rows are never picked)."""

    def __init__(self, vocab_limit: int | None = None):
        self.vocab_limit = vocab_limit

    def choose(self, logits, rows):
        if self.vocab_limit is not None and logits.shape[-1] > self.vocab_limit:
            logits = logits[:, : self.vocab_limit]
        return logits.argmax(dim=-1).tolist()

    def done(self, row: int) -> bool:
        return False

    def reset(self, row: int) -> None:
        pass


@dataclass(eq=False)
class EngineState:
    """Everything one ``PagedEngine.run`` changes as it goes."""

    cache: Any  # the PagedCache of _make_cache (a class made per call)
    cache_arg: dict
    chooser: Chooser
    on_done: Callable[[int, list[int]], None]
    waiting: deque[Request]
    free: list[int]  # free pool blocks (popped from the end)
    stats: EngineStats
    active: list[_Row] = field(default_factory=list)
    admitted: int = 0
    hold: bool = False  # after an eviction, admit nothing until a row finishes
    graphs: Any = None  # the run's _DecodeGraphs; None: eager decode steps (also after a failed capture)
    width: int = 1  # block-table columns of the decode steps so far (with graphs: never shrinks, see _decode_step)


def _make_cache(prefix: PrefixKV, pool_tokens: int):
    return _cache_class()(prefix, pool_tokens)


@functools.cache
def _cache_class():
    """The paged cache class, made once: a class is a reference cycle, so one made per run (closing over
    that run's prefix K/V) kept the prefix alive after its extractor was gone, until a ``gc.collect()``."""
    Cache, CacheLayerMixin = compat.cache_classes()

    class PagedLayer(CacheLayerMixin):  # type: ignore[misc, valid-type]  # a base from compat, at run time
        is_compileable = False
        is_sliding = False

        def __init__(self, owner, pk, pv, pool_tokens: int):
            super().__init__()
            self.owner, self.pk, self.pv = owner, pk, pv
            _, kvh, _, d = pk.shape
            # (kv_heads, tokens, head_dim): a token's K/V of one kv head is one contiguous run for the kernel,
            # and a gather over tokens gives (kv_heads, rows, keys, head_dim) contiguous for the general path.
            # Zeroed: the general path gathers whole blocks, and a never-written slot holding NaN bits would
            # turn its zero attention weight into NaN (finite stale values from finished rows are harmless).
            self.kpool = pk.new_zeros((kvh, pool_tokens, d))
            self.vpool = pv.new_zeros((kvh, pool_tokens, d))
            self.is_initialized = True

        def lazy_initialization(self, key_states, value_states):
            pass

        def update(self, key_states, value_states, *args, **kwargs):
            op = self.owner.current
            if op[0] == "prefill":  # the packed prompts: (1, kv_heads, tokens, head_dim), in pool order
                write = op[1]
                self.kpool[:, write] = key_states[0]
                self.vpool[:, write] = value_states[0]
                return key_states, value_states
            write = op[1]  # ("decode", write, table, lens, block): the attention reads the rest
            self.kpool[:, write] = key_states[:, :, 0].transpose(0, 1)
            self.vpool[:, write] = value_states[:, :, 0].transpose(0, 1)
            return self.kpool[None], self.vpool[None]  # the pools: rows' K/V are read where they lie

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.pk.shape[-2] + query_length, 0

        def get_seq_length(self) -> int:
            return self.pk.shape[-2]

        def get_max_length(self) -> int:
            return -1

    class Ops:  # what the current forward does; shared by the layers without pointing back at the cache
        current = None

    class PagedCache(Cache):  # type: ignore[misc, valid-type]  # as PagedLayer
        def __init__(self, prefix: PrefixKV, pool_tokens: int):
            self.ops = Ops()
            super().__init__(layers=[PagedLayer(self.ops, k, v, pool_tokens) for k, v in prefix.layers])
            self.positions = None  # (query positions, own-key positions) of the current forward: windows

        @property
        def op(self):
            return self.ops.current

        @op.setter
        def op(self, value):
            self.ops.current = value

        def free(self) -> None:
            for lay in self.layers:
                lay.kpool = lay.vpool = lay.pk = lay.pv = None

    return PagedCache


class PagedEngine:
    """Greedy decoding of many sequences after one shared prefix, rows joining and leaving freely."""

    def __init__(
        self,
        model,
        prefix: PrefixKV,
        *,
        pool_tokens: int,
        max_rows: int,
        eos_ids: set[int],
        pad_id: int,
        transient_tokens: int | None = None,
        block: int = 16,
        prefill_chunk_tokens: int = 2048,
        ignore_eos: bool = False,
        logits_hook: Callable | None = None,
        min_admit: int | None = None,
        cuda_graphs: bool | None = None,
    ):
        self.model = model
        self.prefix = prefix
        self.block = block
        self.n_blocks = max(1, pool_tokens // block)
        self.max_rows = max(1, max_rows)
        self.transient_tokens = transient_tokens
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.ignore_eos = ignore_eos
        self.logits_hook = logits_hook
        self.min_admit = min_admit  # None: a fifth of the rows decoding at the time
        self.device = model.get_input_embeddings().weight.device
        # None: on wherever the model is on a CUDA device (see _DecodeGraphs; False is the eager reference).
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        # Blocks rows may hold: with graphs the last one is kept for padded rows (see _DecodeGraphs).
        self.row_blocks = self.n_blocks - (1 if self.cuda_graphs else 0)

    @torch.inference_mode()
    def run(
        self,
        requests: Sequence[Request],
        chooser: Chooser,
        on_done: Callable[[int, list[int]], None],
        feed: Feed | None = None,
        stats: EngineStats | None = None,
    ) -> EngineStats:
        """Decode every request, and those ``feed`` adds until it closes; ``on_done(key, tokens)`` as each
        finishes (EOS not included). ``stats``: counters to add to (read live by another thread)."""
        self.check_fits(requests)
        cache = _make_cache(self.prefix, self.n_blocks * self.block)
        if stats is None:
            stats = EngineStats()
        stats.pool_tokens = self.n_blocks * self.block
        graphs = _DecodeGraphs(self) if self.cuda_graphs else None
        st = EngineState(
            cache=cache,
            cache_arg=compat.cache_kwargs(self.model, cache),
            chooser=chooser,
            on_done=on_done,
            waiting=deque(requests),
            free=list(range(self.row_blocks - 1, -1, -1)),
            stats=stats,
            graphs=graphs,
        )
        if graphs is not None and self.transient_tokens is None:
            # Nothing is gathered (the kernel reads the pool in place, and stops at each row's length), so
            # the table is as wide as the longest request needs from the start: one graph per rows bucket.
            st.width = self._width(st, max((len(r.ids) + r.max_new + 1 for r in requests), default=1))
        try:
            with shared_prefix_attention_active(self.model, cache):
                while True:
                    closed = feed is None or not self._refill(st, feed)
                    if not (st.waiting or st.active):
                        if closed:
                            break
                        continue
                    while st.waiting and not (st.hold and st.active):  # all that fit (everything, at first)
                        group = self._admit(st)
                        if not group:
                            break
                        self._prefill(st, group)
                    if not st.active:
                        if st.waiting:
                            raise KnerError("the K/V pool cannot hold a single text; lower --max-chunk-tokens")
                        continue
                    self._make_room(st)
                    self._decode_step(st)
        finally:
            if graphs is not None:
                graphs.close()
            cache.op = cache.positions = None
            cache.free()  # the pool is most of the free memory: give it back now, not at the next gc
            self.cache_ref = weakref.ref(cache)
        return st.stats

    # -- steps ---------------------------------------------------------------------
    def _refill(self, st: EngineState, feed: Feed) -> bool:
        """The feed's new requests join the queue, its given-up ones leave; False once it is closed."""
        new = feed.more(idle=not (st.waiting or st.active))
        if new:
            st.waiting.extend(new)
        gone = feed.dropped()
        if gone:
            kept = deque(r for r in st.waiting if r.key not in gone)
            st.stats.dropped += len(st.waiting) - len(kept)
            st.waiting = kept
            for row in [r for r in st.active if r.req.key in gone]:
                st.active.remove(row)
                self._release(st, row)
                st.chooser.reset(row.req.key)
                st.stats.dropped += 1
                st.hold = False
        return new is not None

    def _admit(self, st: EngineState) -> list[_Row]:
        """The next group of waiting texts that fits the pool, the prefill chunk and the transient bound."""
        group: list[_Row] = []
        tokens = 0
        bound = max((r.bound for r in st.active), default=0)
        while st.waiting and len(st.active) + len(group) < self.max_rows:
            req = st.waiting[0]
            need = math.ceil((len(req.ids) + 1) / self.block)
            if need + len(st.active) + len(group) > len(st.free):  # keep a spare block per row in flight
                break
            if group and tokens + len(req.ids) > self.prefill_chunk_tokens:
                break
            b = max(bound, len(req.ids) + req.max_new)
            rows_after = len(st.active) + len(group) + 1
            rows_padded = rows_after if st.graphs is None else rows_bucket(rows_after)
            padded = rows_padded * self._width(st, b + 1) * self.block
            if self.transient_tokens is not None and padded > self.transient_tokens and rows_after > 1:
                break
            st.waiting.popleft()
            row = _Row(req, st.admitted)
            st.admitted += 1
            self._grow(st, row, len(req.ids) + 1)
            group.append(row)
            tokens += len(req.ids)
            bound = b
        # Too small a group to be worth a forward while others are decoding: wait for more room.
        least = self.min_admit if self.min_admit is not None else max(1, len(st.active) // 5)
        if group and st.active and len(group) < least and st.waiting:
            for row in reversed(group):
                self._release(st, row)
                st.waiting.appendleft(row.req)
            return []
        return group

    def _prefill(self, st: EngineState, group: list[_Row]) -> None:
        """One forward over the group's prompts packed end to end (no padding through the linear layers),
        writing their K/V; their first tokens. The attention alone lays the rows out padded (see the
        "prefill" op in :func:`kner.inference.prefix_cache.shared_prefix_attention`)."""
        dev, P = self.device, self.prefix.length
        lens = np.array([len(r.req.ids) for r in group])
        n, s, total = len(group), int(lens.max()), int(lens.sum())
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        offs = np.arange(total) - np.repeat(starts, lens)  # each token's place in its own prompt
        ids = torch.from_numpy(np.concatenate([r.req.ids for r in group]).astype(np.int64))[None].to(dev)
        pos = torch.from_numpy(P + offs)[None].to(dev)
        j = np.arange(s)
        # The padded (rows, longest) layout of the attention: where each slot's token is in the packed
        # sequence (a pad repeats its row's last token, masked out), and where each packed token lands.
        gather = torch.from_numpy(starts[:, None] + np.minimum(j[None], lens[:, None] - 1)).to(dev)
        back = torch.from_numpy(np.repeat(np.arange(n) * s, lens) + offs).to(dev)
        valid = torch.from_numpy(j[None] < lens[:, None]).to(dev)
        causal = torch.ones((s, s), dtype=torch.bool, device=dev).tril_()
        # A pad query sees itself: no empty softmax row even without a prefix (pads are never keys of real tokens).
        rows_mask = (causal[None, None] & valid[:, None, None, :]) | torch.eye(s, dtype=torch.bool, device=dev)
        write = torch.from_numpy(np.concatenate([r.flat[: len(r.req.ids)] for r in group])).to(dev)
        seg = torch.from_numpy(np.repeat(np.arange(n), lens)).to(dev)
        o = torch.from_numpy(offs).to(dev)
        # The packed sequence's own mask (block-diagonal causal), for transformers' mask handling only.
        mask = ((seg[:, None] == seg[None, :]) & (o[:, None] >= o[None, :]))[None, None]
        st.cache.op = ("prefill", write, gather, back, rows_mask)
        padded_pos = (P + torch.arange(s, device=dev))[None].expand(n, s)
        st.cache.positions = (padded_pos, padded_pos)
        last = torch.from_numpy(starts + lens - 1).to(dev)
        toks = self._choose(st, self._logits(st, ids, mask, pos, last), group)
        st.stats.prefills += 1
        st.stats.prefill_tokens += total
        for r, t in zip(group, toks):
            r.length = len(r.req.ids)
            if self._take(st, r, t):
                self._retire(st, r)
            else:
                st.active.append(r)

    def _make_room(self, st: EngineState) -> None:
        """A pool slot for every row's next token, oldest rows first; evicts the youngest if the pool is dry."""
        for row in sorted(st.active, key=lambda r: r.order):
            if row not in st.active or row.length + 1 <= len(row.blocks) * self.block:
                continue
            while not st.free and row in st.active:
                if len(st.active) == 1:
                    raise KnerError("the K/V pool cannot hold a single text; lower --max-chunk-tokens")
                self._evict_youngest(st)
            if row in st.active:
                self._grow(st, row, row.length + 1)

    def _width(self, st: EngineState, tokens: int) -> int:
        """Block-table columns for rows of up to ``tokens`` own tokens. With graphs: a power of two, and
        never less than before in this run, so a graph (fixed per rows bucket and width) is met again."""
        need = math.ceil(tokens / self.block)
        if st.graphs is None:
            return need
        return max(st.width, 1 << (need - 1).bit_length())

    def _decode_step(self, st: EngineState) -> None:
        """One token for every active row; finished rows retire."""
        rows = st.active
        n = len(rows)
        width = self._width(st, max(r.length for r in rows) + 1)
        if st.graphs is not None:
            # Static shapes: rows rounded up to their bucket, padded rows writing to the spare block.
            nb, spare = rows_bucket(n), st.graphs.spare_block
            st.width = width
        else:
            nb, spare = n, 0
        table = np.full((nb, width), spare, dtype=np.int32)
        write = np.full(nb, spare * self.block, dtype=np.int64)
        lens = np.ones(nb, dtype=np.int64)  # a padded row sees one key (its own slot): no empty softmax
        ids = np.full(nb, self.pad_id, dtype=np.int64)
        for i, r in enumerate(rows):
            table[i, : len(r.blocks)] = r.blocks
            write[i] = r.flat[r.length]
            lens[i] = r.length + 1
            ids[i] = r.pending
        inputs = {"ids": ids[:, None], "write": write, "table": table, "lens": lens}
        if st.graphs is not None:
            logits = st.graphs.logits(st, inputs)
        else:
            logits = self._decode_logits(st, self._upload(inputs))
        toks = self._choose(st, logits[:n], rows)
        st.stats.steps += 1
        st.stats.row_steps += n
        st.stats.peak_rows = max(st.stats.peak_rows, n)
        still = []
        for r, t in zip(rows, toks):
            r.length += 1
            if self._take(st, r, t):
                self._retire(st, r)
            else:
                still.append(r)
        st.active = still

    # -- helpers -------------------------------------------------------------------
    def _logits(self, st: EngineState, ids, mask, pos, keep=1):
        """Next-token logits at positions ``keep`` of the sequence (1: the last of each row)."""
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=keep, **st.cache_arg
        )
        return out.logits[0] if isinstance(keep, torch.Tensor) else out.logits[:, -1]

    def _choose(self, st: EngineState, logits, rows: list[_Row]) -> list[int]:
        if self.logits_hook is not None:
            logits = self.logits_hook(logits)
        return st.chooser.choose(logits, [r.req.key for r in rows])

    def _upload(self, inputs: dict) -> dict:
        """The decode step's host arrays on the device (a graph's static inputs are these)."""
        return {k: torch.from_numpy(v).to(self.device) for k, v in inputs.items()}

    def _decode_logits(self, st: EngineState, t: dict):
        """The decode forward over uploaded inputs ``t``: what a CUDA graph captures and replays, so the
        mask and positions are derived here, on the device, from the rows' lengths. (The mask and key
        positions cover the table's blocks, for the general attention path; the kernel reads ``lens``.)"""
        P, lens = self.prefix.length, t["lens"]
        keys = torch.arange(t["table"].shape[1] * self.block, device=lens.device)
        mask = (keys[None, :] < lens[:, None])[:, None, None, :]
        pos = (lens - 1 + P)[:, None]
        st.cache.op = ("decode", t["write"], t["table"], lens, self.block)
        st.cache.positions = (pos, (keys + P)[None])
        return self._logits(st, t["ids"], mask, pos)

    def _take(self, st: EngineState, row: _Row, tok: int) -> bool:
        """Record a chosen token; True if the row is done."""
        if st.chooser.done(row.req.key):
            return True
        end = tok in self.eos_ids and not self.ignore_eos
        if not end:
            row.gen.append(tok)
        row.pending = tok
        return end or len(row.gen) >= row.req.max_new

    def _retire(self, st: EngineState, row: _Row) -> None:
        st.hold = False
        self._release(st, row)
        st.stats.new_tokens += len(row.gen)
        st.on_done(row.req.key, row.gen)

    def _evict_youngest(self, st: EngineState) -> None:
        # Always the youngest row, even if it is the one asking for room: then the oldest row
        # always progresses, and rows cannot keep evicting each other.
        v = max(st.active, key=lambda r: r.order)
        st.active.remove(v)
        self._release(st, v)
        st.chooser.reset(v.req.key)
        st.waiting.appendleft(v.req)
        st.stats.preemptions += 1
        st.hold = True

    def _grow(self, st: EngineState, row: _Row, n_tokens: int) -> None:
        bs = self.block
        while len(row.blocks) * bs < n_tokens:
            b = st.free.pop()
            row.blocks.append(b)
            row.flat = np.concatenate([row.flat, b * bs + np.arange(bs, dtype=np.int64)])

    def _release(self, st: EngineState, row: _Row) -> None:
        st.free.extend(row.blocks)
        row.blocks = []

    def check_fits(self, requests: Sequence[Request]) -> None:
        """KnerError if a request could never fit the pool, even alone."""
        bs = self.block
        for r in requests:
            if math.ceil((len(r.ids) + r.max_new) / bs) + 1 > self.row_blocks:
                raise KnerError(
                    f"a text of {len(r.ids)} prompt tokens with a budget of {r.max_new} new tokens does "
                    f"not fit the K/V pool ({self.n_blocks * bs} tokens); lower --max-chunk-tokens or "
                    f"--max-new-tokens, or free GPU memory"
                )


# -- CUDA graphs ---------------------------------------------------------------------


def rows_bucket(n: int) -> int:
    """Decode rows rounded up for a CUDA graph: 1, 2, 4, 8, multiples of 16 to 64, of 32 to 256, then of 64.
    Few graphs (each capture costs about two eager steps), and padded rows cost little: a decode step's
    time is mostly reading the weights, the same for any number of rows."""
    if n <= 8:
        return n if n <= 2 else 4 if n <= 4 else 8
    step = 16 if n <= 64 else 32 if n <= 256 else 64
    return -(-n // step) * step


class _DecodeGraphs:
    """The decode forward captured once per (rows bucket, table width) and replayed.

    A 7B decode step launches about 2,300 small kernels and the GPU idles between them: replaying one
    CUDA graph instead took one engine decode forward from 127 to 31 ms at 64 rows, bit for bit the same
    logits (``benchmarks/decode_step_probe.py``, T4 emulation). A graph fixes every shape and address,
    so a step rounds its rows up to a bucket (``rows_bucket``) and its block table to a width that only
    grows (``PagedEngine._width``; admission counts the padded size against the transient bound), and
    copies its inputs into the graph's static tensors. The attention kernel stops at each row's own
    length, so the rows' keys need no bucket (and when nothing is gathered the width is fixed for the
    run, see ``PagedEngine.run``). Padded rows write their K/V into one spare pool block and attend to
    it alone; their logits are dropped. A bucket is captured on its first step: the run's first capture
    runs that step eagerly on the static tensors before (the warm-up capture needs; its logits are the
    step's), later ones skip the warm-up and replay at once (see ``_capture``). (A bucket met once pays
    for a capture it never replays; with buckets this coarse, most are met many times.) All graphs share
    one memory pool, released with them at the end of the run.
    If a capture fails (out of memory, or a model whose forward cannot be captured) the run goes on
    eagerly, and says so once.
    """

    def __init__(self, engine: PagedEngine):
        self.engine = engine
        self.spare_block = engine.row_blocks  # the block no row is given
        self.graphs: dict[tuple[int, int], tuple[Any, dict]] = {}
        self.pool: Any = None  # torch.cuda.graph_pool_handle()
        self.out: torch.Tensor | None = None  # every graph's logits land here (outside the pool: see close)

    def logits(self, st: EngineState, inputs: dict):
        nb, width = inputs["table"].shape
        entry = self.graphs.get((nb, width))
        if entry is not None and self.out is not None:
            graph, static = entry
            for k, buf in static.items():
                buf.copy_(torch.from_numpy(inputs[k]))
            graph.replay()
            st.stats.graph_steps += 1
            return self.out[:nb]
        t0 = time.perf_counter()
        try:
            return self._capture(st, inputs, nb, width)
        finally:
            st.stats.capture_seconds += time.perf_counter() - t0

    def _capture(self, st: EngineState, inputs: dict, nb: int, width: int):
        static = self.engine._upload(inputs)
        dev = self.engine.device
        logits = None
        if self.out is None:
            # The run's first capture warms up first, eagerly off the default stream as capture asks (lazy
            # set-up: cuBLAS workspaces, Triton compiles); this step's logits are the warm-up's. Later
            # captures skip it (the same kernels, other shapes) and replay at once: a capture and a
            # replay instead of an eager step and a capture.
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                logits = self.engine._decode_logits(st, static).clone()
            torch.cuda.current_stream(dev).wait_stream(side)
        try:
            if self.out is None:
                assert logits is not None  # the run's first capture: its warm-up ran above
                self.out = logits.new_empty((max(nb, rows_bucket(self.engine.max_rows)), logits.shape[-1]))
                self.pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                # Copied out, so nothing made in the capture outlives it: the next capture reuses its memory.
                self.out[:nb].copy_(self.engine._decode_logits(st, static))
        except Exception as err:  # noqa: BLE001 -- any failure to capture means: decode eagerly instead
            self.close()
            st.graphs = None  # the rest of the run decodes eagerly
            import logging  # noqa: PLC0415  only on this rare path

            logging.getLogger("kner.inference").warning(
                "CUDA graphs off for this run (capture failed: %s); decoding eagerly",
                str(err).splitlines()[0] if str(err) else type(err).__name__,
            )
            # A capture records without running: this step has not happened unless the warm-up ran it
            # (its inputs are already on the device, in ``static``, allocated outside the graph pool).
            return logits if logits is not None else self.engine._decode_logits(st, static)
        self.graphs[(nb, width)] = (graph, static)
        st.stats.graphs += 1
        if logits is None:
            graph.replay()
            st.stats.graph_steps += 1
            return self.out[:nb]
        return logits

    def close(self) -> None:
        self.graphs.clear()
        self.pool = self.out = None
