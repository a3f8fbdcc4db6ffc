"""Our own greedy decode loop over a batch, with the prefix cache and a token chooser.

``model.generate`` would work, but it cannot reuse a shared prefix without
copying it per row, re-derives masks and positions every step, and its
per-step bookkeeping costs as much as a small model's forward. The loop here
does one forward per step, keeps masks and positions as slices of tensors
built once, drops finished rows from the cache when a quarter of them are done,
and asks a *chooser* for the next token of each live row: plain argmax, or the
tag-grammar constraint (:class:`kner.inference.constrained.ConstrainedChooser`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch

from kner.model import compat
from kner.inference.prefix_cache import (PrefixKV, make_expanded_cache, make_shared_cache,
                                         shared_prefix_attention_active)

MODES = ("shared", "expand", "none")


class Chooser(Protocol):
    def choose(self, logits: torch.Tensor, rows: Sequence[int]) -> list[int]: ...
    def done(self, row: int) -> bool: ...
    def reset(self, row: int) -> None: ...


class GreedyChooser:
    """Unconstrained argmax over the tokenizer's ids (a model's padded extra rows are never picked)."""

    def __init__(self, vocab_limit: int | None = None):
        self.vocab_limit = vocab_limit

    def choose(self, logits, rows):
        if self.vocab_limit is not None and logits.shape[-1] > self.vocab_limit:
            logits = logits[:, :self.vocab_limit]
        return logits.argmax(dim=-1).tolist()

    def done(self, row: int) -> bool:
        return False

    def reset(self, row: int) -> None:
        pass


@dataclass
class DecodeStats:
    steps: int = 0
    new_tokens: int = 0
    prunes: int = 0
    prefill_tokens: int = 0
    rows: int = 0


@dataclass
class DecodeResult:
    tokens: list[list[int]]
    stats: DecodeStats = field(default_factory=DecodeStats)


def _input_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


@torch.inference_mode()
def greedy_decode(model, seqs: Sequence[Sequence[int]], max_new: Sequence[int], *, prefix: PrefixKV | None,
                  mode: str, chooser: Chooser, eos_ids: set[int], pad_id: int, ignore_eos: bool = False,
                  logits_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  prefill_chunk_tokens: int = 4096, prune_fraction: float = 0.25) -> DecodeResult:
    """Greedy-decode a batch. ``seqs`` are the token ids after the prefix (``mode='none'``: whole prompts).

    Returns the generated ids per row, without the EOS that ended a row.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if mode != "none" and prefix is None:
        raise ValueError(f"mode {mode!r} needs the prefix K/V")
    dev = _input_device(model)
    b = len(seqs)
    s = max(len(x) for x in seqs)
    n_new = max(max_new)
    p = prefix.length if (prefix is not None and mode != "none") else 0
    ids = torch.full((b, s), pad_id, dtype=torch.long)
    valid = torch.zeros((b, s), dtype=torch.bool)
    for i, x in enumerate(seqs):
        if len(x):
            ids[i, s - len(x):] = torch.tensor(list(x), dtype=torch.long)
            valid[i, s - len(x):] = True
    ids, valid = ids.to(dev), valid.to(dev)
    pos = (p + valid.long().cumsum(1) - 1).clamp_(min=max(p - 1, 0)) if p else (valid.long().cumsum(1) - 1).clamp_(min=0)
    stats = DecodeStats(rows=b, prefill_tokens=int(valid.sum()))
    # Key mask over [own tokens]; generated positions are always visible.
    own = torch.cat([valid, torch.ones((b, n_new), dtype=torch.bool, device=dev)], dim=1)

    if mode == "shared":
        cache = make_shared_cache(prefix, b, s + n_new)
        ctx = shared_prefix_attention_active(model, cache)
    else:
        cache = make_expanded_cache(prefix, b) if mode == "expand" else compat.dynamic_cache()
        if p:
            own = torch.cat([torch.ones((b, p), dtype=torch.bool, device=dev), own], dim=1)
        ctx = _nullcontext()

    cache_arg = compat.cache_kwargs(model, cache)
    gen: list[list[int]] = [[] for _ in range(b)]
    finished = [False] * b
    rows = list(range(b))          # original row of each cache row
    with ctx:
        if mode == "shared":
            causal = torch.ones((s, s), dtype=torch.bool, device=dev).tril_()
            per = max(1, prefill_chunk_tokens // max(s, 1))
            parts = []
            for r0 in range(0, b, per):
                r1 = min(b, r0 + per)
                cache.set_rows(slice(r0, r1))
                mask = causal[None, None] & valid[r0:r1, None, None, :]
                out = model(input_ids=ids[r0:r1], attention_mask=mask, position_ids=pos[r0:r1],
                            use_cache=True, logits_to_keep=1, **cache_arg)
                parts.append(out.logits[:, -1])
                del out
            cache.set_rows(slice(None))
            cache.commit(s)
            logits = torch.cat(parts) if len(parts) > 1 else parts[0]
            del parts
        else:
            out = model(input_ids=ids, attention_mask=own[:, :p + s], position_ids=pos, use_cache=True,
                        logits_to_keep=1, **cache_arg)
            logits = out.logits[:, -1]
            del out
        cur = pos[:, -1].clone()
        done_since_prune = 0
        step = 0
        while True:
            if logits_hook is not None:
                logits = logits_hook(logits)
            live = [i for i, r in enumerate(rows) if not finished[r]]
            sub = logits if len(live) == len(rows) else logits[live]
            toks = chooser.choose(sub, [rows[i] for i in live])
            feed = [pad_id] * len(rows)
            for i, t in zip(live, toks):
                r = rows[i]
                if chooser.done(r):
                    finished[r] = True
                    done_since_prune += 1
                    continue
                is_eos = t in eos_ids
                if not (is_eos and not ignore_eos):
                    gen[r].append(t)
                feed[i] = t
                if (is_eos and not ignore_eos) or len(gen[r]) >= max_new[r]:
                    finished[r] = True
                    done_since_prune += 1
            stats.steps += 1
            if all(finished[r] for r in rows):
                break
            if done_since_prune >= max(1, int(prune_fraction * len(rows))):
                keep = [i for i, r in enumerate(rows) if not finished[r]]
                idx = torch.tensor(keep, device=dev)
                if mode == "shared":
                    cache.select_rows(idx)
                else:
                    cache.batch_select_indices(idx)
                own, cur = own[idx], cur[idx]
                rows = [rows[i] for i in keep]
                feed = [feed[i] for i in keep]
                done_since_prune = 0
                stats.prunes += 1
            step += 1
            cur = cur + 1
            inp = torch.tensor(feed, dtype=torch.long).to(dev)[:, None]
            if mode == "shared":
                mask = own[:, None, None, :s + step]
            else:
                mask = own[:, :p + s + step]
            out = model(input_ids=inp, attention_mask=mask, position_ids=cur[:, None], use_cache=True,
                        logits_to_keep=1, **cache_arg)
            if mode == "shared":
                cache.commit(1)
            logits = out.logits[:, -1]
            del out
    del cache, cache_arg
    stats.new_tokens = sum(len(g) for g in gen)
    return DecodeResult(gen, stats)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
