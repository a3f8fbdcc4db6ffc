"""From examples to micro-batches: answer-only labels, fixed steps, token-budget micro-batches.

Three ideas keep tokens from being wasted:

* **Fixed steps.** Each epoch is shuffled (seeded) into optimizer steps of
  ``examples_per_step`` examples. Which examples form a step never depends on the
  GPU; memory only decides how a step is cut into micro-batches, so the
  optimizer sees the same batches on a T4 and an H100 and after a resume.
* **Token budgets.** A step is cut into micro-batches whose *computed* tokens
  (padding included) stay within the budget the memory plan allows.
* **Shared prefix.** The instruction prefix is identical for every example, so it
  is computed once per micro-batch, not once per example:

  - ``packed``: one row ``[prefix, ex1, ex2, ...]``; a block mask lets each example
    see the prefix and itself only, and positions restart after the prefix, so
    every example is computed exactly as inference sees it. No padding.
  - ``prefix_kv``: the prefix runs once (batch 1), its KV is expanded over the
    batch, and the padded per-example tokens run against it with positions offset.
  - ``padded``: every row is a whole example (prefix included), padded right. The
    reference the other two are measured against.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kner.example import Example
from kner.modeling import PromptEncoder
from kner.prompt import render_tags


@dataclass(frozen=True)
class TokenizedExample:
    index: int              # position in the training list (the data order is defined on these)
    input_ids: tuple[int, ...]
    prefix_len: int         # input_ids[:prefix_len] is the shared instruction prefix
    prompt_len: int         # labels are input_ids[prompt_len:] (answer tags + EOS)

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def suffix_len(self) -> int:
        return len(self.input_ids) - self.prefix_len

    @property
    def n_answer(self) -> int:
        return len(self.input_ids) - self.prompt_len


@dataclass
class TokenizeReport:
    too_long: list[str]     # ids of examples longer than max_seq_len (skipped, reported)
    fallbacks: int          # examples tokenized piecewise (see PromptEncoder)


def tokenize_examples(examples: list[Example], encoder: PromptEncoder, max_seq_len: int,
                      separator: str = " ") -> tuple[list[TokenizedExample], TokenizeReport]:
    out: list[TokenizedExample] = []
    too_long: list[str] = []
    before = encoder.fallbacks
    for ex in examples:
        enc = encoder.encode(ex.text, render_tags(ex.entities, separator))
        if len(enc.input_ids) > max_seq_len:
            too_long.append(ex.id)
            continue
        out.append(TokenizedExample(len(out), tuple(enc.input_ids), enc.prefix_len, enc.prompt_len))
    return out, TokenizeReport(too_long, encoder.fallbacks - before)


def epoch_steps(lengths: list[int], examples_per_step: int, seed: int, epoch: int,
                group_by_length: bool = False) -> list[list[int]]:
    """The optimizer steps of one epoch as lists of example indices; every example exactly once.

    ``group_by_length`` sorts windows of 16 steps by length before cutting them, so a
    step holds similar lengths (less padding for ``padded``/``prefix_kv``); the order of
    the steps is shuffled again so long and short steps alternate.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = examples_per_step * 16
        grouped: list[int] = []
        for i in range(0, len(order), window):
            grouped += sorted(order[i:i + window], key=lambda j: -lengths[j])
        order = grouped
    steps = [order[i:i + examples_per_step] for i in range(0, len(order), examples_per_step)]
    if group_by_length:
        rng.shuffle(steps)
    return steps


def batch_cost(batch: list[TokenizedExample], layout: str) -> int:
    """Tokens a micro-batch makes the model compute (padding included): what the budget bounds."""
    if not batch:
        return 0
    prefix = batch[0].prefix_len
    if layout == "packed":
        return prefix + sum(e.suffix_len for e in batch)
    if layout == "prefix_kv":
        return prefix + len(batch) * max(e.suffix_len for e in batch)
    return len(batch) * max(e.length for e in batch)


def micro_batches(step: list[TokenizedExample], budget: int, layout: str) -> list[list[TokenizedExample]]:
    """Cut one optimizer step into micro-batches of at most ``budget`` computed tokens.

    Deterministic (ties broken by index), so a resumed run rebuilds the same batches.
    An example that alone exceeds the budget still gets its own micro-batch; the
    caller checks the budget against the longest example before training.
    """
    if layout == "packed":
        # First-fit decreasing: few rows, each close to the budget.
        rows: list[list[TokenizedExample]] = []
        room: list[int] = []
        for ex in sorted(step, key=lambda e: (-e.suffix_len, e.index)):
            for r, free in enumerate(room):
                if ex.suffix_len <= free:
                    rows[r].append(ex)
                    room[r] -= ex.suffix_len
                    break
            else:
                rows.append([ex])
                room.append(budget - ex.prefix_len - ex.suffix_len)
        return rows
    key = (lambda e: e.suffix_len) if layout == "prefix_kv" else (lambda e: e.length)
    batches: list[list[TokenizedExample]] = []
    for ex in sorted(step, key=lambda e: (-key(e), e.index)):
        if batches and batch_cost(batches[-1] + [ex], layout) <= budget:
            batches[-1].append(ex)
        else:
            batches.append([ex])
    return batches


def split_in_two(batch: list[TokenizedExample]) -> tuple[list[TokenizedExample], list[TokenizedExample]]:
    """For the OOM retry: two halves with about equal tokens."""
    if len(batch) < 2:
        raise ValueError("cannot split a micro-batch of one example")
    total = sum(e.length for e in batch)
    acc, cut = 0, 1
    for i, e in enumerate(batch[:-1], 1):
        acc += e.length
        cut = i
        if acc * 2 >= total:
            break
    return batch[:cut], batch[cut:]


@dataclass
class MicroBatch:
    """Tensors for one forward pass plus where the answer tokens are."""

    layout: str
    input_ids: object               # [rows, cols] (per-example tokens only for prefix_kv)
    position_ids: object | None
    attention_mask: object | None   # 2-D padding mask, 4-D block mask (packed), or None
    prefix_ids: object | None       # [P] for prefix_kv
    pred_rows: object               # hidden state (row, col) that predicts each target
    pred_cols: object
    targets: object
    n_examples: int
    n_tokens: int                   # useful tokens: each example's full length, as inference sees it
    n_computed: int                 # tokens the model actually runs (prefix once, padding included)
    n_answer: int

    def to(self, device) -> "MicroBatch":
        def mv(t):
            return t.to(device, non_blocking=True) if t is not None else None
        return MicroBatch(self.layout, mv(self.input_ids), mv(self.position_ids), mv(self.attention_mask),
                          mv(self.prefix_ids), mv(self.pred_rows), mv(self.pred_cols), mv(self.targets),
                          self.n_examples, self.n_tokens, self.n_computed, self.n_answer)


def collate(batch: list[TokenizedExample], layout: str, pad_id: int, attn_implementation: str | None = "sdpa",
            mask_dtype=None) -> MicroBatch:
    import torch

    if not batch:
        raise ValueError("empty micro-batch")
    P = batch[0].prefix_len
    if any(e.prefix_len != P or e.input_ids[:P] != batch[0].input_ids[:P] for e in batch):
        raise ValueError("examples in a micro-batch must share the instruction prefix")
    n_tokens = sum(e.length for e in batch)
    n_answer = sum(e.n_answer for e in batch)
    rows: list[int] = []
    cols: list[int] = []
    targets: list[int] = []

    if layout == "packed":
        ids = list(batch[0].input_ids[:P])
        pos = list(range(P))
        seg = [0] * P
        for k, e in enumerate(batch, 1):
            start = len(ids)
            ids += e.input_ids[P:]
            pos += range(P, e.length)
            seg += [k] * e.suffix_len
            for j in range(e.prompt_len, e.length):
                rows.append(0)
                cols.append(start + (j - P) - 1)   # the token before target j, same segment since j > P
                targets.append(e.input_ids[j])
        T = len(ids)
        seg_t = torch.tensor(seg)
        allowed = torch.ones(T, T, dtype=torch.bool).tril_()
        allowed &= (seg_t[:, None] == seg_t[None, :]) | (seg_t[None, :] == 0)
        if attn_implementation == "eager":
            dtype = mask_dtype or torch.float32
            mask = torch.zeros(T, T, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
        else:
            mask = allowed
        return MicroBatch(layout, torch.tensor([ids]), torch.tensor([pos]), mask[None, None], None,
                          torch.tensor(rows), torch.tensor(cols), torch.tensor(targets),
                          len(batch), n_tokens, T, n_answer)

    if layout == "prefix_kv":
        S = max(e.suffix_len for e in batch)
        ids = torch.full((len(batch), S), pad_id, dtype=torch.long)
        mask = torch.zeros(len(batch), P + S, dtype=torch.long)
        mask[:, :P] = 1
        for i, e in enumerate(batch):
            ids[i, :e.suffix_len] = torch.tensor(e.input_ids[P:])
            mask[i, P:P + e.suffix_len] = 1
            for j in range(e.prompt_len, e.length):
                rows.append(i)
                cols.append(j - P - 1)
                targets.append(e.input_ids[j])
        pos = torch.arange(P, P + S).expand(len(batch), S).contiguous()
        return MicroBatch(layout, ids, pos, mask, torch.tensor(batch[0].input_ids[:P]),
                          torch.tensor(rows), torch.tensor(cols), torch.tensor(targets),
                          len(batch), n_tokens, P + len(batch) * S, n_answer)

    if layout == "padded":
        S = max(e.length for e in batch)
        ids = torch.full((len(batch), S), pad_id, dtype=torch.long)
        mask = torch.zeros(len(batch), S, dtype=torch.long)
        for i, e in enumerate(batch):
            ids[i, :e.length] = torch.tensor(e.input_ids)
            mask[i, :e.length] = 1
            for j in range(e.prompt_len, e.length):
                rows.append(i)
                cols.append(j - 1)
                targets.append(e.input_ids[j])
        return MicroBatch(layout, ids, None, mask, None, torch.tensor(rows), torch.tensor(cols),
                          torch.tensor(targets), len(batch), n_tokens, len(batch) * S, n_answer)

    raise ValueError(f"unknown layout {layout!r}")
