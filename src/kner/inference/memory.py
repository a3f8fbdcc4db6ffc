"""How much of the K/V pool and how many rows fit, from free GPU memory and the model's K/V size.

The K/V is what grows with the rows: per token it takes
``layers x kv_heads x head_dim x 2 (K and V) x dtype bytes`` (LLaMA-2-7B in
fp16: 32 x 32 x 128 x 2 x 2 = 0.5 MiB). On top come transient buffers: a
prefill chunk's activations and attention scores, one decode step's gathered
K/V, scores and logits, and the largest dequantized 4-bit weight. The plan
keeps a safety margin, and :func:`kner.model.oom.is_oom` lets the caller halve
the rows and pool and retry if the estimate was still too optimistic.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass

from kner.model.shape import ModelShape, text_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelDims:
    layers: int
    kv_heads: int
    heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    dtype_bytes: int
    max_positions: int | None

    @property
    def kv_bytes_per_token(self) -> int:
        return self.layers * self.kv_heads * self.head_dim * 2 * self.dtype_bytes

    @classmethod
    def from_model(cls, model) -> ModelDims:
        """Shapes from the config (the ``ModelShape`` the training planner reads too), width from the weights."""
        shape = ModelShape.from_config(model.config)
        dtype_bytes = 2
        try:
            dtype_bytes = model.get_input_embeddings().weight.element_size()
        except AttributeError:
            pass
        return cls(
            layers=shape.layers,
            kv_heads=shape.kv_heads,
            heads=shape.heads,
            head_dim=shape.head_dim,
            hidden=shape.hidden,
            intermediate=shape.intermediate,
            vocab=shape.vocab,
            dtype_bytes=dtype_bytes,
            max_positions=getattr(text_config(model.config), "max_position_embeddings", None),
        )


def usable_memory(device, cap_bytes: int | None = None) -> int | None:
    """Bytes this process may still allocate on ``device``; None on CPU (no planning there).

    Honors ``torch.cuda.set_per_process_memory_fraction`` (the T4-emulation cap)
    and an explicit ``cap_bytes`` (total for the process, like ``--max-memory``).
    """
    import torch  # noqa: PLC0415  lazy: torch; kner.config imports kner.inference

    if device is None or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return None
    dev = torch.device(device)
    if dev.index is None:  # "cuda": get_per_process_memory_fraction refuses a device without an index
        dev = torch.device("cuda", torch.cuda.current_device())
    free, total = torch.cuda.mem_get_info(dev)
    allocated = torch.cuda.memory_allocated(dev)
    reserved = torch.cuda.memory_reserved(dev)
    avail = free + (reserved - allocated)  # cached blocks our allocator can reuse
    limits = []
    frac = None
    getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    if getter is not None:
        try:
            frac = getter(dev)
        except (RuntimeError, TypeError):
            frac = None
    if frac is not None and frac < 1.0:
        limits.append(int(frac * total) - allocated)
    if cap_bytes is not None:
        limits.append(int(cap_bytes) - allocated)
    return max(0, min([avail, *limits]))


def largest_linear_elems(model) -> int:
    """Elements of the biggest linear weight: bitsandbytes dequantizes one at a time to 16-bit."""
    import torch  # noqa: PLC0415  lazy: torch; kner.config imports kner.inference

    best = 0
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            best = max(best, mod.in_features * mod.out_features)
    return best


def release_memory() -> None:
    import torch  # noqa: PLC0415  lazy: torch; kner.config imports kner.inference

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class EnginePlan:
    pool_tokens: int  # K/V pool size, in tokens (all layers)
    max_rows: int
    transient_tokens: int | None  # bound on rows x longest row for the per-step K/V gather
    budget_bytes: int | None


def plan_engine(
    dims: ModelDims,
    *,
    prefix_len: int,
    footprints: list[int],
    suffix_max: int,
    usable: int | None,
    max_rows: int,
    prefill_chunk_tokens: int = 2048,
    safety: float = 0.85,
    largest_weight_elems: int = 0,
    transient_share: float = 0.2,
    gathers: bool = True,
) -> EnginePlan:
    """Split free memory between the paged K/V pool and per-step transients.

    ``footprints``: per text, prompt tokens after the prefix + new-token budget.
    Fixed costs: a prefill chunk's activations and fp32 attention scores, the
    largest dequantized weight, logits of ``max_rows`` rows. The rest is the
    budget; ``transient_share`` of it bounds the padded per-layer K/V gather of a
    decode step (K and V of every row up to the longest row, fp32 scores and
    the probabilities' copies per key), and the remainder is the pool. ``gathers=False``: the decode
    attention reads the pool in place (:mod:`kner.inference.paged_attention`), so all of it is pool.
    """
    longest = max(footprints) if footprints else 1
    if usable is None:  # CPU: no planning, room for every row at its longest
        return EnginePlan(min(len(footprints), max_rows) * (longest + 32) + 64, max_rows, None, None)
    db = dims.dtype_bytes
    chunk = max(prefill_chunk_tokens, suffix_max)
    fixed = (
        largest_weight_elems * db * 2
        + chunk * (dims.hidden * 6 + dims.intermediate * 3) * db
        + dims.heads * chunk * (prefix_len + suffix_max) * 4 * 3
        + max_rows * dims.vocab * 4 * 3
    )
    budget = int(usable * safety) - fixed
    layer_kv = dims.kv_heads * dims.head_dim * 2 * db
    per_row_key = layer_kv + layer_kv // 4 + dims.heads * 4 * 4
    if not gathers:
        return EnginePlan(int(max(0, budget) // dims.kv_bytes_per_token), max_rows, None, budget)
    transient = int(max(budget, 0) * transient_share)
    transient_tokens = max(longest, transient // per_row_key)
    pool = max(0, budget - transient) // dims.kv_bytes_per_token
    return EnginePlan(int(pool), max_rows, int(transient_tokens), budget)
