"""From examples to micro-batches: answer-only labels, fixed steps, token-budget micro-batches.

Three ideas keep tokens from being wasted:

* **Fixed steps.** Each epoch is shuffled (seeded) into optimizer steps of
  ``examples_per_step`` examples. Which examples form a step never depends on the
  GPU; memory only decides how a step is cut into micro-batches, so the
  optimizer sees the same batches on a T4 and an H100 and after a resume.
* **Token budgets.** A step is cut into micro-batches whose *computed* tokens
  (padding included) stay within the budget the memory plan allows.
* **Shared prefix.** The instruction prefix is identical for every example, so it
  is computed once per row, not once per example:

  - ``packed``: one row ``[prefix, ex1, ex2, ...]``; a block mask lets each example
    see the prefix and itself only, and positions restart after the prefix, so
    every example is computed exactly as inference sees it. No padding.
  - ``padded``: every row is a whole example (prefix included), padded right. The
    reference ``packed`` is measured against.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kner.data.example import Example
from kner.model.prompt import PromptEncoder

if TYPE_CHECKING:  # annotations only: kner.data.check imports this module without torch
    import torch


@dataclass(frozen=True)
class TokenizedExample:
    index: int  # position in the training list (the data order is defined on these)
    input_ids: tuple[int, ...]
    prefix_len: int  # input_ids[:prefix_len] is the shared instruction prefix
    prompt_len: int  # labels are input_ids[prompt_len:] (answer tags + EOS)

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
    too_long: list[str]  # ids of examples longer than max_seq_len (skipped, reported)
    fallbacks: int  # examples tokenized piecewise (see PromptEncoder)


def tokenize_examples(
    examples: list[Example], encoder: PromptEncoder, max_seq_len: int, separator: str = " "
) -> tuple[list[TokenizedExample], TokenizeReport]:
    out: list[TokenizedExample] = []
    too_long: list[str] = []
    before = encoder.fallbacks
    for ex, enc in zip(examples, encoder.encode_examples(examples, separator)):
        if len(enc.input_ids) > max_seq_len:
            too_long.append(ex.id)
            continue
        out.append(TokenizedExample(len(out), tuple(enc.input_ids), enc.prefix_len, enc.prompt_len))
    return out, TokenizeReport(too_long, encoder.fallbacks - before)


def epoch_steps(
    lengths: list[int], examples_per_step: int, seed: int, epoch: int, group_by_length: bool = False
) -> list[list[int]]:
    """The optimizer steps of one epoch as lists of example indices; every example exactly once.

    ``group_by_length`` sorts windows of 16 steps by length before cutting them, so a
    step holds similar lengths (less padding for ``padded``); the order of
    the steps is shuffled again so long and short steps alternate.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = examples_per_step * 16
        grouped: list[int] = []
        for i in range(0, len(order), window):
            grouped += sorted(order[i : i + window], key=lambda j: -lengths[j])
        order = grouped
    steps = [order[i : i + examples_per_step] for i in range(0, len(order), examples_per_step)]
    if group_by_length:
        rng.shuffle(steps)
    return steps


Row = list[TokenizedExample]
"""One row of a micro-batch. ``packed``: the prefix then several examples; otherwise one example."""


def _flat(rows: list[Row]) -> list[TokenizedExample]:
    return [e for r in rows for e in r]


def row_len(row: Row) -> int:
    """Tokens of a packed row: the prefix once, then each example's own tokens."""
    return row[0].prefix_len + sum(e.suffix_len for e in row)


def batch_cost(rows: list[Row], layout: str) -> int:
    """Tokens a micro-batch makes the model compute (padding included): what the budget bounds."""
    exs = _flat(rows)
    if not exs:
        return 0
    if layout == "packed":
        return len(rows) * max(row_len(r) for r in rows)
    return len(exs) * max(e.length for e in exs)


def pack_rows(examples: list[TokenizedExample], cap: int) -> list[Row]:
    """Fewest rows of at most ``cap`` tokens, balanced (longest example first onto the emptiest row).

    Balanced rather than first-fit: first-fit leaves one short remainder row, which
    costs a whole micro-batch's fixed overhead for a few tokens, and long rows pay
    attention over masked-out pairs (it grows with the row's length).
    """
    if not examples:
        return []
    P = examples[0].prefix_len
    order = sorted(examples, key=lambda e: (-e.suffix_len, e.index))
    total = sum(e.suffix_len for e in order)
    k = max(1, -(-total // max(1, cap - P)))
    while True:
        rows: list[Row] = [[] for _ in range(k)]
        load = [0] * k
        for ex in order:
            r = min(range(k), key=lambda i: (load[i], i))
            rows[r].append(ex)
            load[r] += ex.suffix_len
        if P + max(load) <= cap or k >= len(order):
            return [r for r in rows if r]
        k += 1


def micro_batches(
    step: list[TokenizedExample], budget: int, layout: str, row_tokens: int | None = None
) -> list[list[Row]]:
    """Cut one optimizer step into micro-batches (lists of rows) of at most ``budget`` computed tokens.

    Deterministic (ties broken by index), so a resumed run rebuilds the same batches.
    ``packed`` rows hold at most ``row_tokens`` tokens (default: the budget); a micro-batch
    holds as many rows as the budget allows. An example that alone exceeds the budget
    still gets its own micro-batch; the caller checks the budget against the longest
    example before training.
    """
    if layout == "packed":
        rows = pack_rows(step, min(row_tokens or budget, budget))
        rows.sort(key=lambda r: (-row_len(r), min(e.index for e in r)))
        n = max(1, -(-sum(row_len(r) for r in rows) // budget))
        while True:  # balance rows over the fewest micro-batches that fit
            mbs: list[list[Row]] = [[] for _ in range(n)]
            for row in rows:
                fits = [i for i in range(n) if batch_cost(mbs[i] + [row], layout) <= budget]
                i = min(fits or range(n), key=lambda j: (batch_cost(mbs[j], layout), j))
                mbs[i].append(row)
            if all(batch_cost(mb, layout) <= budget for mb in mbs if len(mb) > 1) or n >= len(rows):
                return [mb for mb in mbs if mb]
            n += 1
    batches: list[list[Row]] = []
    for ex in sorted(step, key=lambda e: (-e.length, e.index)):
        if batches and batch_cost(batches[-1] + [[ex]], layout) <= budget:
            batches[-1].append([ex])
        else:
            batches.append([[ex]])
    return batches


def split_in_two(rows: list[Row]) -> tuple[list[Row], list[Row]]:
    """For the OOM retry: two micro-batches with about equal tokens, every example kept."""
    if len(rows) >= 2:
        total = sum(sum(e.length for e in r) for r in rows)
        acc, cut = 0, 1
        for i, r in enumerate(rows[:-1], 1):
            acc += sum(e.length for e in r)
            cut = i
            if acc * 2 >= total:
                break
        return rows[:cut], rows[cut:]
    row = rows[0] if rows else []
    if len(row) < 2:
        raise ValueError("cannot split a micro-batch of one example")
    ordered = sorted(row, key=lambda e: (-e.suffix_len, e.index))
    return [ordered[0::2]], [ordered[1::2]]


def as_rows(examples: list[TokenizedExample], layout: str) -> list[Row]:
    """All ``examples`` as one micro-batch: one packed row, or one row per example."""
    return [list(examples)] if layout == "packed" else [[e] for e in examples]


@dataclass(frozen=True)
class Batching:
    """How the examples of a step become micro-batches: fixed for a run once the budget is decided."""

    budget: int  # computed tokens a micro-batch may hold (kner.training.setup.token_budget)
    layout: str = "packed"
    row_tokens: int | None = None  # packed: longest row, at least the longest example; None: the budget
    pad_id: int = 0
    attn_implementation: str | None = "sdpa"  # "eager" gets an additive float mask

    def micro_batches(self, examples: list[TokenizedExample]) -> list[list[Row]]:
        return micro_batches(examples, self.budget, self.layout, self.row_tokens)

    def collate(self, rows: list[Row], mask_dtype=None) -> MicroBatch:
        return collate(rows, self.layout, self.pad_id, self.attn_implementation, mask_dtype)


@dataclass
class MicroBatch:
    """Tensors for one forward pass plus where the answer tokens are."""

    layout: str
    input_ids: torch.Tensor  # [rows, cols]
    position_ids: torch.Tensor | None
    attention_mask: torch.Tensor | None  # 2-D padding mask (padded) or 4-D block mask (packed)
    pred_rows: torch.Tensor  # hidden state (row, col) that predicts each target
    pred_cols: torch.Tensor
    targets: torch.Tensor
    n_examples: int
    n_tokens: int  # useful tokens: each example's full length, as inference sees it
    n_computed: int  # tokens the model actually runs (prefix once, padding included)
    n_answer: int

    def to(self, device) -> MicroBatch:
        def mv(t):
            return t.to(device, non_blocking=True) if t is not None else None

        return MicroBatch(
            self.layout,
            mv(self.input_ids),
            mv(self.position_ids),
            mv(self.attention_mask),
            mv(self.pred_rows),
            mv(self.pred_cols),
            mv(self.targets),
            self.n_examples,
            self.n_tokens,
            self.n_computed,
            self.n_answer,
        )


def collate(
    rows: list[Row], layout: str, pad_id: int, attn_implementation: str | None = "sdpa", mask_dtype=None
) -> MicroBatch:
    import torch  # noqa: PLC0415  lazy: kner.data.check imports this module to count tokens, without torch

    batch = _flat(rows)
    if not batch:
        raise ValueError("empty micro-batch")
    P = batch[0].prefix_len
    if any(e.prefix_len != P or e.input_ids[:P] != batch[0].input_ids[:P] for e in batch):
        raise ValueError("examples in a micro-batch must share the instruction prefix")
    n_tokens = sum(e.length for e in batch)
    n_answer = sum(e.n_answer for e in batch)
    rows_idx: list[int] = []
    cols: list[int] = []
    targets: list[int] = []

    if layout == "packed":
        # The row length is padded to a multiple of 16 (the memory-efficient SDPA kernel
        # wants the mask's last dimension aligned; unaligned, torch falls back to the slow
        # math kernel). A pad attends to the prefix and itself only, so no softmax row is
        # empty and no real token sees a pad.
        T = -(-max(row_len(r) for r in rows) // 16) * 16
        ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
        pos = torch.zeros(len(rows), T, dtype=torch.long)
        seg = torch.empty(len(rows), T, dtype=torch.long)  # segment of every column; 0 = the prefix
        seg[:, :P] = 0
        for r, row in enumerate(rows):
            ids[r, :P] = torch.tensor(batch[0].input_ids[:P])
            pos[r, :P] = torch.arange(P)
            start = P  # column of the next example in this row
            for k, e in enumerate(row, 1):
                n = e.suffix_len
                ids[r, start : start + n] = torch.tensor(e.input_ids[P:])
                pos[r, start : start + n] = torch.arange(P, e.length)
                seg[r, start : start + n] = k
                for j in range(e.prompt_len, e.length):
                    rows_idx.append(r)
                    cols.append(start + (j - P) - 1)  # the token before target j, same segment since j > P
                    targets.append(e.input_ids[j])
                start += n
            seg[r, start:] = -torch.arange(1, T - start + 1)
        causal = torch.ones(T, T, dtype=torch.bool).tril_()[None]
        allowed = causal & ((seg[:, :, None] == seg[:, None, :]) | (seg[:, None, :] == 0))
        if attn_implementation == "eager":
            dtype = mask_dtype or torch.float32
            mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
        else:
            mask = allowed
        computed = sum(row_len(r) for r in rows)
        return MicroBatch(
            layout,
            ids,
            pos,
            mask[:, None],
            torch.tensor(rows_idx),
            torch.tensor(cols),
            torch.tensor(targets),
            len(batch),
            n_tokens,
            computed,
            n_answer,
        )

    if layout == "padded":
        S = max(e.length for e in batch)
        ids = torch.full((len(batch), S), pad_id, dtype=torch.long)
        mask = torch.zeros(len(batch), S, dtype=torch.long)
        for i, e in enumerate(batch):
            ids[i, : e.length] = torch.tensor(e.input_ids)
            mask[i, : e.length] = 1
            for j in range(e.prompt_len, e.length):
                rows_idx.append(i)
                cols.append(j - 1)
                targets.append(e.input_ids[j])
        return MicroBatch(
            layout,
            ids,
            None,
            mask,
            torch.tensor(rows_idx),
            torch.tensor(cols),
            torch.tensor(targets),
            len(batch),
            n_tokens,
            len(batch) * S,
            n_answer,
        )

    raise ValueError(f"unknown layout {layout!r}")
