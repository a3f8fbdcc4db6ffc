"""One optimizer step: micro-batches, atomic gradients, the out-of-memory split.

The step's loss is the mean cross-entropy over *all* its answer tokens: each
micro-batch contributes ``sum_ce / answer_tokens_of_step``, so the summed gradient
does not depend on how the step was cut. Each micro-batch's gradient is computed
with ``torch.autograd.grad`` and added to ``.grad`` only once it is complete, so an
out-of-memory error in the middle of a backward pass leaves nothing half-added,
and the retry on two halves gives the same gradient.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from kner.errors import KnerError
from kner.model.oom import is_oom
from kner.training import distributed as dist
from kner.training.batching import Batching, MicroBatch, Row, TokenizedExample, split_in_two
from kner.training.forward import ModelParts, answer_loss_sum

log = logging.getLogger("kner.train")


@dataclass(frozen=True)
class StepModel:
    """What a step computes with."""

    parts: ModelParts
    params: list[torch.nn.Parameter]  # the trainable ones, in a fixed order (gradients are zipped onto them)
    dtype: torch.dtype  # compute dtype: autocast unless fp32
    device: torch.device
    scaler: torch.amp.GradScaler  # fp16 loss scaling; disabled for bf16/fp32


@dataclass
class StepResult:
    loss: float = 0.0
    examples: int = 0
    tokens: int = 0
    computed: int = 0
    answer_tokens: int = 0
    micro_batches: int = 0
    oom_splits: int = 0
    split_notes: list[str] = field(default_factory=list)

    def summed_over_ranks(self) -> StepResult:
        """A rank's share of the step -> the whole step's numbers (sums over the ranks)."""
        if not dist.active():
            return self
        keys = [f.name for f in fields(self) if f.name != "split_notes"]
        total = dict(zip(keys, dist.all_reduce_sum([getattr(self, k) for k in keys])))
        if not dist.is_main():
            for note in self.split_notes:  # rank 0 prints its own through the progress bar
                log.warning("rank %d: %s", dist.rank_info().rank, note)
        sums: dict[str, Any] = {k: v if k == "loss" else int(v) for k, v in total.items()}
        return StepResult(**sums, split_notes=self.split_notes if dist.is_main() else [])


class StepRunner:
    """Runs one optimizer step's micro-batches, then the update (see the module docstring)."""

    def __init__(self, model: StepModel, batching: Batching):
        self.model = model
        self.batching = batching
        self.update_skipped = False  # the last finish_step skipped a non-finite update
        self.last_oom: str | None = None

    def autocast(self):
        if self.model.dtype != torch.float32:
            return torch.autocast(self.model.device.type, dtype=self.model.dtype)
        return contextlib.nullcontext()

    def scale(self) -> float | None:
        scaler = self.model.scaler
        return float(scaler.get_scale()) if scaler.is_enabled() else None

    def step(self, examples: list[TokenizedExample], denom: int | None = None) -> StepResult:
        """Accumulate the step's gradient into ``.grad``.

        ``denom``: answer tokens of the whole step when ``examples`` is one rank's share of it.
        """
        res = StepResult()
        if not examples:  # a rank's share of a step with fewer examples than ranks
            return res
        denom = sum(e.n_answer for e in examples) if denom is None else denom
        pending = self.batching.micro_batches(examples)
        loss_sum = 0.0
        while pending:
            batch = pending.pop(0)
            done = self._try_micro_batch(batch, denom)
            if done is None:  # out of memory: retry the two halves in its place
                n = sum(map(len, batch))
                if n < 2:
                    raise KnerError(
                        f"one example of {batch[0][0].length} tokens does not fit in GPU memory "
                        f"({self.last_oom}); lower max_seq_len or the LoRA rank, or free the GPU"
                    )
                a, b = split_in_two(batch)
                pending[:0] = [a, b]
                res.oom_splits += 1
                res.split_notes.append(
                    f"out of memory on a micro-batch of {n} examples ({self.last_oom}); "
                    f"retrying as {sum(map(len, a))} + {sum(map(len, b))}"
                )
                continue
            mb_loss, mb = done
            loss_sum += mb_loss
            res.examples += mb.n_examples
            res.tokens += mb.n_tokens
            res.computed += mb.n_computed
            res.answer_tokens += mb.n_answer
            res.micro_batches += 1
        res.loss = loss_sum / max(denom, 1)
        return res

    def _try_micro_batch(self, batch: list[Row], denom: int) -> tuple[float, MicroBatch] | None:
        """The micro-batch's loss and its gradient added to ``.grad``; None (nothing added) on OOM."""
        m = self.model
        oom = None
        try:
            mb = self.batching.collate(batch, m.dtype).to(m.device)
            with self.autocast():
                loss_sum = answer_loss_sum(m.parts, mb)
            loss = loss_sum / max(denom, 1)
            grads = torch.autograd.grad(m.scaler.scale(loss), m.params, allow_unused=True)
            # Nothing is added before the whole backward succeeded: an OOM above leaves no trace.
            for p, g in zip(m.params, grads):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad.add_(g)
            return float(loss_sum.detach()), mb
        except RuntimeError as err:  # torch.OutOfMemoryError is one
            if not is_oom(err):
                raise
            oom = str(err).splitlines()[0] if str(err) else "out of memory"
            # leave the except block first, so the traceback frees its tensors
        self.last_oom = oom
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None

    def finish_step(self, optimizer, scheduler, max_grad_norm: float) -> float | None:
        """Unscale, clip, update (unless not finite), advance the schedule; the gradient norm."""
        scaler = self.model.scaler
        scaler.unscale_(optimizer)
        # The norm is always computed (inf = no clipping): it is how a NaN gradient is seen.
        clip = max_grad_norm if max_grad_norm and max_grad_norm > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(self.model.params, clip))
        self.update_skipped = False
        if scaler.is_enabled():
            scaler.step(optimizer)  # skips the update itself on inf/NaN and lowers the scale
            scaler.update()
        elif math.isfinite(norm):
            optimizer.step()
        else:
            # bf16/fp32 have no loss scaler: without this one NaN step would poison every weight.
            self.update_skipped = True
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return norm if math.isfinite(norm) else None

    def eval_loss(self, examples: list[TokenizedExample]) -> tuple[float, int]:
        """Mean answer-token cross-entropy over ``examples`` and the number of answer tokens."""
        m = self.model
        total, n = 0.0, 0
        with torch.no_grad(), self.autocast():
            for i in range(0, len(examples), 64):
                for batch in self.batching.micro_batches(examples[i : i + 64]):
                    mb = self.batching.collate(batch, m.dtype).to(m.device)
                    total += float(answer_loss_sum(m.parts, mb))
                    n += mb.n_answer
        return total / max(n, 1), n
