"""One micro-batch through the model: the summed cross-entropy of its answer tokens.

The LM head runs only on the hidden states that predict answer tokens (about a
sixth of the tokens here), so the vocabulary-sized logits never exist for the
prompt: at 32k vocab that is 128 KiB of fp32 per token saved, and no chunking of
the loss is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kner.model import compat
from kner.model.loading import prefix_cache, run_prefix
from kner.training.batching import MicroBatch


@dataclass
class ModelParts:
    decoder: torch.nn.Module      # the transformer body (returns hidden states)
    lm_head: torch.nn.Module
    softcap: float | None         # Gemma-2 style final logit soft-capping, when the config has it

    @classmethod
    def of(cls, model) -> "ModelParts":
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        decoder = causal_lm.get_decoder()
        compat.allow_cache_under_checkpointing(decoder)   # the prefix caches do not grow on replay
        return cls(decoder, causal_lm.get_output_embeddings(),
                   getattr(causal_lm.config, "final_logit_softcapping", None))


class SharedPrefix:
    """The instruction prefix run once for a whole optimizer step (layout ``prefix_kv``).

    Its per-layer keys/values are handed to the micro-batches as detached leaves, so
    each micro-batch's backward stops at them and only accumulates their gradient;
    ``backward`` then pushes that sum through the prefix's own (checkpointed) graph
    once. The result is the exact gradient of the step -- the same as running the
    prefix inside every micro-batch -- for one prefix pass per step instead of one
    per row, and the two graphs never reference each other (an earlier version kept
    one graph spanning prefix and micro-batch, which held GiBs alive under
    checkpointing).
    """

    def __init__(self, parts: ModelParts, prefix_ids: torch.Tensor, keep: list, grad: bool = True):
        kv = run_prefix(parts.decoder, prefix_ids, keep)
        self.outputs = [t for pair in kv for t in pair] if grad else []
        self.leaves = [(k.detach().requires_grad_(grad), v.detach().requires_grad_(grad)) for k, v in kv]
        self.grads: list[torch.Tensor | None] = [None] * (2 * len(kv))

    def flat_leaves(self) -> list[torch.Tensor]:
        return [t for pair in self.leaves for t in pair]

    def accumulate(self, grads) -> None:
        """Add one micro-batch's gradient of the leaves (fp32, so fp16 sums do not overflow)."""
        for i, g in enumerate(grads):
            if g is not None:
                self.grads[i] = g.float() if self.grads[i] is None else self.grads[i].add_(g)

    def backward(self, params) -> tuple:
        """The step's gradient of ``params`` through the prefix; frees the prefix graph."""
        pairs = [(o, g.to(o.dtype)) for o, g in zip(self.outputs, self.grads) if g is not None]
        self.grads = []
        if not pairs:
            return (None,) * len(params)
        outs, gouts = zip(*pairs)
        grads = torch.autograd.grad(outs, params, grad_outputs=gouts, allow_unused=True)
        self.outputs = []
        return grads


def answer_loss_sum(parts: ModelParts, mb: MicroBatch, keep: list | None = None,
                    prefix: SharedPrefix | None = None) -> torch.Tensor:
    """Sum (not mean) of the answer tokens' cross-entropy, so micro-batches add up exactly.

    For ``prefix_kv`` pass the step's ``SharedPrefix``; without one the prefix is run
    here, inside this micro-batch's graph (the reference path, used by tests and for
    evaluation). Prefix caches are appended to ``keep``; the caller must pass them to
    ``kner.model.loading.release_caches`` after the backward pass.
    """
    if mb.layout == "prefix_kv":
        kv = prefix.leaves if prefix is not None else run_prefix(parts.decoder, mb.prefix_ids, keep)
        cache = prefix_cache(kv, mb.input_ids.shape[0], keep)
        del kv
        hidden = parts.decoder(input_ids=mb.input_ids, attention_mask=mb.attention_mask,
                               position_ids=mb.position_ids, use_cache=False,
                               **compat.cache_kwargs(parts.decoder, cache)).last_hidden_state
    else:
        hidden = parts.decoder(input_ids=mb.input_ids, attention_mask=mb.attention_mask,
                               position_ids=mb.position_ids, use_cache=False).last_hidden_state
    h = hidden[mb.pred_rows, mb.pred_cols]
    logits = parts.lm_head(h).float()
    if parts.softcap:
        logits = torch.tanh(logits / parts.softcap) * parts.softcap
    return F.cross_entropy(logits, mb.targets, reduction="sum")
