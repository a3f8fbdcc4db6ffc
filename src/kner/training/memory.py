"""Predict peak GPU memory of a training step from the model's config alone, and pick a token budget.

No weights are read: ``AutoConfig`` gives the shapes, and every term below is
bytes = count x width. The activation coefficients were fitted once on a GPU
(LLaMA-2-7B shapes, fp16, gradient checkpointing; see docs/training.md) and are
expressed per hidden/intermediate unit so they carry over to other sizes.

Terms (all in bytes):

* ``weights``: 4-bit linear layers (0.5 byte a weight + quantization constants:
  one 8-bit absmax per 64 weights with double quantization, else one fp32),
  embeddings and LM head in the compute dtype, norms in fp32.
* ``trainable``: LoRA (or all, for ``full``) parameters in fp32, their
  accumulated gradient, and one micro-batch's gradient before it is added.
* ``optimizer``: AdamW states (8-bit: 2 bytes a parameter, fp32: 8). The paged
  8-bit optimizer keeps them in CUDA unified memory, outside PyTorch's allocator:
  counted in the device total, not in the allocator's peak.
* ``activations``: per computed token, the checkpointed input of every layer
  (none when offloaded to host memory), plus one layer's recomputed activations
  and their gradients during backward.
* ``attention``: the packed layout's block mask (tokens x row length).
* ``logits``: only answer positions reach the LM head (fp16 logits, fp32 copy,
  fp32 gradient).
* ``dequant``: bitsandbytes dequantizes the largest weight matrix to the compute
  dtype in forward and again in backward.
* ``allocator``: caching-allocator slack on top of what is live at the peak (a
  fixed part, and a fraction of the per-token terms: big, short-lived blocks
  fragment the cache).
* ``cuda_context``: CUDA/cuBLAS context, outside the allocator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from kner.errors import KnerError
from kner.model.shape import GiB, ModelShape, parse_bytes

# Fitted on the GPU benchmark (docs/training.md: LLaMA-2-7B shapes, NF4, LoRA r=16,
# fp16, no flash attention; peak allocated and reserved at 1024..4096 tokens).
ACT_PER_HIDDEN = 92.0  # bytes per token per hidden unit: one layer recomputed + its gradients
ACT_PER_INTER = 16.0  # bytes per token per intermediate (MLP) unit
ALLOCATOR_SLACK = 0.25  # reserved-but-free blocks, as a fraction of the per-token terms
ALLOCATOR_FIXED = int(0.27 * GiB)
CUDA_CONTEXT = int(0.45 * GiB)


@dataclass
class Estimate:
    tokens: int
    components: dict[str, int]
    paged: int  # bytes outside PyTorch's allocator (paged optimizer states)

    @property
    def allocator_peak(self) -> int:
        """Predicted ``torch.cuda.max_memory_reserved()``."""
        return sum(v for k, v in self.components.items() if k != "cuda_context")

    @property
    def device_total(self) -> int:
        return self.allocator_peak + self.components.get("cuda_context", 0) + self.paged


def estimate(
    shape: ModelShape,
    tokens: int,
    *,
    method: str = "qlora",
    compute_bytes: int = 2,
    lora_r: int = 16,
    target_modules="all-linear",
    optimizer: str = "paged_adamw_8bit",
    layout: str = "packed",
    answer_fraction: float = 0.2,
    double_quant: bool = True,
    gradient_checkpointing: bool = True,
    offload_activations: bool = False,
    on_gpu: bool = True,
    row_tokens: int | None = None,
) -> Estimate:
    """Peak memory of one micro-batch of ``tokens`` computed tokens."""
    d, L, I, V = shape.hidden, shape.layers, shape.intermediate, shape.vocab
    c: dict[str, int] = {}
    if method == "qlora":
        per_weight = 0.5 + (1 / 64 + 4 / (64 * 256) if double_quant else 4 / 64)
        c["weights"] = int(
            shape.linear_params * per_weight + shape.embedding_params * compute_bytes + shape.norm_params * 4
        )
        n_train = shape.lora_params(lora_r, target_modules)
    elif method == "lora":
        c["weights"] = (shape.linear_params + shape.embedding_params) * compute_bytes + shape.norm_params * 4
        n_train = shape.lora_params(lora_r, target_modules)
    else:  # full: fp32 master weights
        c["weights"] = shape.total_params * 4
        n_train = shape.total_params
    # fp32 parameters (LoRA; for full they are the weights above), accumulated grad, one micro-batch's grad
    c["trainable"] = n_train * (4 if method != "full" else 0) + n_train * 8
    opt = n_train * (2 if "8bit" in optimizer else 8)
    paged = opt if optimizer.startswith("paged") and on_gpu else 0
    if not paged:
        c["optimizer"] = opt

    per_layer = ACT_PER_HIDDEN * d + ACT_PER_INTER * I
    if gradient_checkpointing:
        kept = 0 if offload_activations and on_gpu else L * d * compute_bytes  # offloaded: in host memory
        act = tokens * (kept + per_layer)
    else:
        act = tokens * L * per_layer
    c["activations"] = int(act)
    if layout == "packed":
        row = min(tokens, row_tokens or tokens)
        c["attention"] = tokens * row * 3  # per row: bool mask + its additive float form inside SDPA
    else:
        c["attention"] = 0
    answer_tokens = int(tokens * answer_fraction)
    c["logits"] = answer_tokens * V * (compute_bytes + 4 + 4)
    if method == "qlora":
        biggest = max(a * b for a, b in shape.linear_shapes().values())
        c["dequant"] = 2 * biggest * compute_bytes
    per_token = c["activations"] + c["attention"] + c["logits"]
    c["allocator"] = int(per_token * ALLOCATOR_SLACK) + (ALLOCATOR_FIXED if on_gpu else 0)
    if on_gpu:
        c["cuda_context"] = CUDA_CONTEXT
    return Estimate(tokens, c, paged)


@dataclass
class MemoryPlan:
    shape: ModelShape
    cap: int  # bytes the run may use on the device
    budget: int  # chosen micro-batch token budget
    estimate: Estimate  # at the chosen budget
    table: list[Estimate] = field(default_factory=list)  # every candidate budget
    settings: dict = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return self.estimate.device_total <= self.cap

    def to_dict(self) -> dict:
        return {
            "shape": asdict(self.shape),
            "cap_bytes": self.cap,
            "budget": self.budget,
            "settings": self.settings,
            "components": self.estimate.components,
            "paged_bytes": self.estimate.paged,
            "allocator_peak_bytes": self.estimate.allocator_peak,
            "device_total_bytes": self.estimate.device_total,
            "table": [
                {"tokens": e.tokens, "allocator_peak_bytes": e.allocator_peak, "device_total_bytes": e.device_total}
                for e in self.table
            ],
        }


def candidate_budgets(max_budget: int, step: int = 256) -> list[int]:
    return list(range(step, max_budget + 1, step))


def plan_memory(
    shape: ModelShape,
    cap: int,
    *,
    budget: int | None = None,
    min_tokens: int = 0,
    max_budget: int = 8192,
    headroom: float = 0.05,
    **kw,
) -> MemoryPlan:
    """Choose the largest token budget whose predicted device total stays under ``cap`` minus ``headroom``.

    ``min_tokens`` is the most tokens a single example makes the model compute (the
    longest example, with the prefix): no budget below it can train every example.
    With ``budget`` given, it is only checked, not chosen.
    """
    limit = int(cap * (1 - headroom))
    cands = sorted(set(candidate_budgets(max(max_budget, 256)) + ([budget] if budget else [])))
    table = [estimate(shape, t, **kw) for t in cands]
    if budget is not None:
        chosen = next(e for e in table if e.tokens == budget)
    else:
        ok = [e for e in table if e.device_total <= limit and e.tokens >= min_tokens]
        if not ok:
            need = estimate(shape, max(min_tokens, 256), **kw)
            raise KnerError(
                f"a micro-batch of {need.tokens} tokens (the longest example) needs about "
                f"{need.device_total / GiB:.1f} GiB "
                f"but only {cap / GiB:.1f} GiB is available; lower max_seq_len, the LoRA rank, or use method qlora"
            )
        chosen = ok[-1]
    return MemoryPlan(shape, cap, chosen.tokens, chosen, table, dict(kw, max_budget=max_budget, min_tokens=min_tokens))


def format_plan(plan: MemoryPlan) -> str:
    e = plan.estimate
    lines = [
        f"model: {plan.shape.model_type}, {plan.shape.total_params / 1e9:.2f} B parameters, "
        f"{plan.shape.layers} layers x {plan.shape.hidden} hidden",
        f"micro-batch token budget: {plan.budget}  ({plan.settings.get('layout', 'packed')} layout)",
        "",
    ]
    for k, v in e.components.items():
        lines.append(f"  {k:<13} {v / GiB:7.2f} GiB")
    if e.paged:
        lines.append(f"  {'optimizer':<13} {e.paged / GiB:7.2f} GiB  (paged: CUDA unified memory)")
    lines += [
        f"  {'allocator peak':<13} {e.allocator_peak / GiB:6.2f} GiB  (torch.cuda.max_memory_reserved)",
        f"  {'device total':<13} {e.device_total / GiB:7.2f} GiB  of {plan.cap / GiB:.2f} GiB "
        f"{'(fits)' if plan.fits else '(DOES NOT FIT)'}",
        "",
        "  budget  allocator  device",
    ]
    for t in plan.table:
        if t.tokens in (512, 1024, 2048, 4096, plan.budget) or t.tokens % 1024 == 0:
            lines.append(f"  {t.tokens:6d}  {t.allocator_peak / GiB:7.2f}   {t.device_total / GiB:6.2f} GiB")
    return "\n".join(lines)


def load_config(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoConfig  # noqa: PLC0415  lazy: `kner plan` imports this module; seconds

    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise KnerError(f"cannot read the config of {name_or_path!r}: {str(err).splitlines()[0]}") from None


def device_capacity(gpu_memory: str | None = None) -> int:
    """Bytes the run may use: ``gpu_memory`` when given, else the GPU's total memory."""
    if gpu_memory:
        return parse_bytes(gpu_memory)
    import torch  # noqa: PLC0415  lazy: only to ask the GPU its size

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    return 16 * GiB  # CPU: nothing to protect; plan as for a 16 GB card
