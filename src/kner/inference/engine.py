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
  :mod:`kner.inference.prefix_cache`), never copied into the pool.

Each decode step writes every row's new K/V at its own position and gathers the
rows' K/V into a padded ``(rows, kv_heads, longest, head_dim)`` view for the
attention; that gather is transient, one layer at a time, and admission keeps
``rows x longest`` under ``transient_tokens``.
"""

from __future__ import annotations

import math
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from kner.model import compat
from kner.errors import KnerError
from kner.inference.prefix_cache import PrefixKV, shared_prefix_attention_active


@dataclass
class Request:
    key: int              # the caller's id for this sequence
    ids: list[int]        # token ids after the shared prefix
    max_new: int


@dataclass
class EngineStats:
    steps: int = 0                 # decode forwards
    prefills: int = 0              # prefill forwards (admission groups)
    new_tokens: int = 0
    prefill_tokens: int = 0
    preemptions: int = 0
    peak_rows: int = 0
    row_steps: int = 0             # sum over decode steps of rows in the batch
    pool_tokens: int = 0


class _Row:
    __slots__ = ("req", "blocks", "flat", "length", "pending", "gen", "order", "bound")

    def __init__(self, req: Request, order: int):
        self.req = req
        self.blocks: list[int] = []
        self.flat = np.zeros(0, dtype=np.int64)   # pool slot of each own token, in order
        self.length = 0                            # own tokens written to the pool
        self.pending = -1                          # chosen token not yet fed
        self.gen: list[int] = []
        self.order = order
        self.bound = len(req.ids) + req.max_new    # own tokens this row can ever hold


def _make_cache(prefix: PrefixKV, pool_tokens: int):
    Cache, CacheLayerMixin = compat.cache_classes()

    class PagedLayer(CacheLayerMixin):
        is_compileable = False
        is_sliding = False

        def __init__(self, owner, pk, pv):
            super().__init__()
            self.owner, self.pk, self.pv = owner, pk, pv
            _, kvh, _, d = pk.shape
            # (kv_heads, tokens, head_dim): a gather over tokens gives (kv_heads, rows, longest, head_dim)
            # contiguous, which the attention multiplies per kv head without another copy.
            self.kpool = pk.new_empty((kvh, pool_tokens, d))
            self.vpool = pv.new_empty((kvh, pool_tokens, d))
            self.is_initialized = True

        def lazy_initialization(self, key_states, value_states):
            pass

        def update(self, key_states, value_states, *args, **kwargs):
            op = self.owner.current
            if op[0] == "prefill":
                _, write, valid = op
                self.kpool[:, write] = key_states.transpose(0, 1)[:, valid]
                self.vpool[:, write] = value_states.transpose(0, 1)[:, valid]
                return key_states, value_states
            _, write, gather = op
            self.kpool[:, write] = key_states[:, :, 0].transpose(0, 1)
            self.vpool[:, write] = value_states[:, :, 0].transpose(0, 1)
            return self.kpool[:, gather].transpose(0, 1), self.vpool[:, gather].transpose(0, 1)

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.pk.shape[-2] + query_length, 0

        def get_seq_length(self) -> int:
            return self.pk.shape[-2]

        def get_max_length(self) -> int:
            return -1

    class Ops:   # what the current forward does; shared by the layers without pointing back at the cache
        current = None

    class PagedCache(Cache):
        def __init__(self):
            self.ops = Ops()
            super().__init__(layers=[PagedLayer(self.ops, k, v) for k, v in prefix.layers])

        @property
        def op(self):
            return self.ops.current

        @op.setter
        def op(self, value):
            self.ops.current = value

        def free(self) -> None:
            for lay in self.layers:
                lay.kpool = lay.vpool = None

    return PagedCache()


class PagedEngine:
    """Greedy decoding of many sequences after one shared prefix, rows joining and leaving freely."""

    def __init__(self, model, prefix: PrefixKV, *, pool_tokens: int, max_rows: int, eos_ids: set[int], pad_id: int,
                 transient_tokens: int | None = None, block: int = 16, prefill_chunk_tokens: int = 2048,
                 ignore_eos: bool = False, logits_hook: Callable | None = None, min_admit: int | None = None):
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
        self.min_admit = min_admit    # None: a fifth of the rows decoding at the time
        self.device = model.get_input_embeddings().weight.device

    @torch.inference_mode()
    def run(self, requests: Sequence[Request], chooser, on_done: Callable[[int, list[int]], None]) -> EngineStats:
        """Decode every request; ``on_done(key, tokens)`` as each finishes (EOS not included)."""
        bs = self.block
        stats = EngineStats(pool_tokens=self.n_blocks * bs)
        for r in requests:
            if math.ceil((len(r.ids) + r.max_new) / bs) + 1 > self.n_blocks:
                raise KnerError(f"a text of {len(r.ids)} prompt tokens with a budget of {r.max_new} new tokens does "
                                f"not fit the K/V pool ({self.n_blocks * bs} tokens); lower --max-chunk-tokens or "
                                f"--max-new-tokens, or free GPU memory")
        cache = _make_cache(self.prefix, self.n_blocks * bs)
        cache_arg = compat.cache_kwargs(self.model, cache)
        free = list(range(self.n_blocks - 1, -1, -1))
        waiting: deque[Request] = deque(requests)
        active: list[_Row] = []
        counter = 0
        P = self.prefix.length
        dev = self.device

        def grow(row: _Row, n_tokens: int) -> None:
            while len(row.blocks) * bs < n_tokens:
                b = free.pop()
                row.blocks.append(b)
                row.flat = np.concatenate([row.flat, b * bs + np.arange(bs, dtype=np.int64)])

        def release(row: _Row) -> None:
            free.extend(row.blocks)
            row.blocks = []

        hold = [False]      # after an eviction, admit nothing until a row finishes (no thrashing)

        def finish(row: _Row) -> None:
            hold[0] = False
            release(row)
            stats.new_tokens += len(row.gen)
            on_done(row.req.key, row.gen)

        def take(row: _Row, tok: int) -> bool:
            """Record a chosen token; True if the row is done."""
            if chooser.done(row.req.key):
                return True
            is_eos = tok in self.eos_ids
            if not (is_eos and not self.ignore_eos):
                row.gen.append(tok)
            row.pending = tok
            return (is_eos and not self.ignore_eos) or len(row.gen) >= row.req.max_new

        def longest(rows) -> int:
            return max((r.bound for r in rows), default=0)

        def admit() -> list[_Row]:
            nonlocal counter
            group: list[_Row] = []
            tokens = 0
            bound = longest(active)
            while waiting and len(active) + len(group) < self.max_rows:
                req = waiting[0]
                need = math.ceil((len(req.ids) + 1) / bs)
                if need + len(active) + len(group) > len(free):      # keep a spare block per row in flight
                    break
                if group and tokens + len(req.ids) > self.prefill_chunk_tokens:
                    break
                b = max(bound, len(req.ids) + req.max_new)
                if self.transient_tokens is not None and (len(active) + len(group) + 1) * b > self.transient_tokens \
                        and (active or group):
                    break
                waiting.popleft()
                row = _Row(req, counter)
                counter += 1
                grow(row, len(req.ids) + 1)
                group.append(row)
                tokens += len(req.ids)
                bound = b
            # Too small a group to be worth a forward while others are decoding: wait for more room.
            least = self.min_admit if self.min_admit is not None else max(1, len(active) // 5)
            if group and active and len(group) < least and waiting:
                for row in reversed(group):
                    release(row)
                    waiting.appendleft(row.req)
                return []
            return group

        def next_tokens(ids, mask, pos, rows: list[_Row]) -> list[int]:
            # Prefill and decode differ only in what they feed the model; the step after is the same.
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                             **cache_arg)
            logits = out.logits[:, -1]
            del out
            if self.logits_hook is not None:
                logits = self.logits_hook(logits)
            return chooser.choose(logits, [r.req.key for r in rows])

        def prefill(group: list[_Row]) -> None:
            n, s = len(group), max(len(r.req.ids) for r in group)
            ids = torch.full((n, s), self.pad_id, dtype=torch.long)
            valid = torch.zeros((n, s), dtype=torch.bool)
            write = []
            for i, r in enumerate(group):
                k = len(r.req.ids)
                ids[i, s - k:] = torch.tensor(r.req.ids, dtype=torch.long)
                valid[i, s - k:] = True
                write.append(r.flat[:k])
            ids, valid = ids.to(dev), valid.to(dev)
            write_t = torch.from_numpy(np.concatenate(write)).to(dev)
            pos = (P + valid.long().cumsum(1) - 1).clamp_(min=max(P - 1, 0))
            mask = torch.ones((s, s), dtype=torch.bool, device=dev).tril_()[None, None] & valid[:, None, None, :]
            cache.op = ("prefill", write_t, valid)
            toks = next_tokens(ids, mask, pos, group)
            stats.prefills += 1
            stats.prefill_tokens += int(valid.sum())
            for r, t in zip(group, toks):
                r.length = len(r.req.ids)
                if take(r, t):
                    finish(r)
                else:
                    active.append(r)

        def evict_youngest() -> _Row:
            # Always the youngest row, even if it is the one asking for room: then the oldest row
            # always progresses, and rows cannot keep evicting each other.
            v = max(active, key=lambda r: r.order)
            active.remove(v)
            release(v)
            chooser.reset(v.req.key)
            waiting.appendleft(v.req)
            stats.preemptions += 1
            hold[0] = True
            return v

        try:
            with shared_prefix_attention_active(self.model, cache):
                while waiting or active:
                    # Admit as many groups as fit (all of them at the start).
                    while waiting and not (hold[0] and active):
                        group = admit()
                        if not group:
                            break
                        prefill(group)
                    if not active:
                        if waiting:
                            raise KnerError("the K/V pool cannot hold a single text; lower --max-chunk-tokens")
                        break
                    # Room for each row's next token; evict the youngest rows if the pool is dry.
                    for row in sorted(active, key=lambda r: r.order):
                        if row not in active:
                            continue
                        if row.length + 1 > len(row.blocks) * bs:
                            while not free and row in active:
                                if len(active) == 1:
                                    raise KnerError("the K/V pool cannot hold a single text; lower --max-chunk-tokens")
                                evict_youngest()
                            if row in active:
                                grow(row, row.length + 1)
                    n = len(active)
                    stats.peak_rows = max(stats.peak_rows, n)
                    lmax = max(r.length for r in active) + 1
                    gather = np.zeros((n, lmax), dtype=np.int64)
                    write = np.empty(n, dtype=np.int64)
                    lens = np.empty(n, dtype=np.int64)
                    for i, r in enumerate(active):
                        gather[i, :r.length + 1] = r.flat[:r.length + 1]
                        write[i] = r.flat[r.length]
                        lens[i] = r.length + 1
                    lens_t = torch.from_numpy(lens).to(dev)
                    mask = (torch.arange(lmax, device=dev)[None, :] < lens_t[:, None])[:, None, None, :]
                    pos = (lens_t - 1 + P)[:, None]
                    inp = torch.tensor([r.pending for r in active], dtype=torch.long).to(dev)[:, None]
                    cache.op = ("decode", torch.from_numpy(write).to(dev), torch.from_numpy(gather).to(dev))
                    toks = next_tokens(inp, mask, pos, active)
                    stats.steps += 1
                    stats.row_steps += n
                    still = []
                    for r, t in zip(active, toks):
                        r.length += 1
                        if take(r, t):
                            finish(r)
                        else:
                            still.append(r)
                    active = still
        finally:
            cache.op = None
            cache.free()        # the pool is most of the free memory: give it back now, not at the next gc
            self.cache_ref = weakref.ref(cache)
        return stats
