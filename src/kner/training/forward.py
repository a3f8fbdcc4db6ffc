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

from kner.training.batching import MicroBatch


@dataclass
class ModelParts:
    decoder: torch.nn.Module  # the transformer body (returns hidden states)
    lm_head: torch.nn.Module
    softcap: float | None  # Gemma-2 style final logit soft-capping, when the config has it

    @classmethod
    def of(cls, model) -> ModelParts:
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        return cls(
            causal_lm.get_decoder(),
            causal_lm.get_output_embeddings(),
            getattr(causal_lm.config, "final_logit_softcapping", None),
        )


def answer_loss_sum(parts: ModelParts, mb: MicroBatch) -> torch.Tensor:
    """Sum (not mean) of the answer tokens' cross-entropy, so micro-batches add up exactly."""
    hidden = parts.decoder(
        input_ids=mb.input_ids, attention_mask=mb.attention_mask, position_ids=mb.position_ids, use_cache=False
    ).last_hidden_state
    h = hidden[mb.pred_rows, mb.pred_cols]
    logits = parts.lm_head(h).float()
    if parts.softcap:
        logits = torch.tanh(logits / parts.softcap) * parts.softcap
    return F.cross_entropy(logits, mb.targets, reduction="sum")
