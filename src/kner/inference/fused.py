"""Inference-only LoRA layers with fewer kernel launches.

On a GPU a decode step of a 4-bit 7B model with an adapter is bound by the CPU
launching kernels, not by the GPU (measured: 2,275 kernel launches a step; the
GPU busy a third of the time, docs/inference.md). peft's 4-bit LoRA layer
spends five of them on the adapter -- a defensive ``clone`` of the base output,
``A``, ``B``, ``* scaling``, ``+`` -- plus Python bookkeeping for adapters,
variants and mixed batches that inference never uses. The fused forward does
``out.addmm_(x @ A^T, B^T, alpha=scaling)``: two kernels.

Only plain LoRA with one active adapter is fused (no DoRA or other variants,
no dropout at inference anyway); any other layer keeps peft's forward. The
output differs from peft's by floating-point rounding only (tested).
"""

from __future__ import annotations

import types

import torch

_ATTR = "_kner_fused"


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    if torch.is_grad_enabled() or kwargs.get("adapter_names") is not None or self.disable_adapters:
        return type(self).forward(self, x, *args, **kwargs)  # training or unusual calls: peft's own path
    name = getattr(self, _ATTR)
    a, b, scaling = self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name]  # (r, in), (out, r)
    result = self.base_layer(x, *args, **kwargs)
    flat = result.view(-1, result.shape[-1])
    xin = x.reshape(-1, x.shape[-1])
    if xin.dtype != a.dtype:
        xin = xin.to(a.dtype)
    if flat.dtype == a.dtype:
        flat.addmm_(xin @ a.t(), b.t(), alpha=scaling)
    else:
        flat.add_(((xin @ a.t()) @ b.t() * scaling).to(flat.dtype))
    return result


def _fusable(module) -> str | None:
    """The adapter name if ``module`` is a peft LoRA layer this can fuse, else None."""
    if not (hasattr(module, "lora_A") and hasattr(module, "base_layer") and hasattr(module, "active_adapters")):
        return None
    if getattr(module, "merged", False) or len(module.active_adapters) != 1:
        return None
    name = module.active_adapters[0]
    if name not in module.lora_A or name in getattr(module, "lora_variant", {}):
        return None
    if getattr(module, "use_dora", {}).get(name, False):
        return None
    return name


def fuse_lora(model) -> int:
    """Give every fusable LoRA layer of ``model`` the fused inference forward; returns how many.

    The forward reads the adapter's live weights (no copies: changed weights are
    used as they are). Training is unaffected: with gradients on, the layers run
    peft's forward. ``unfuse_lora`` restores peft's forward everywhere.
    """
    n = 0
    for module in model.modules():
        name = _fusable(module)
        if name is None:
            continue
        setattr(module, _ATTR, name)
        module.forward = types.MethodType(_fused_forward, module)
        n += 1
    return n


def unfuse_lora(model) -> int:
    n = 0
    for module in model.modules():
        if hasattr(module, _ATTR):
            delattr(module, _ATTR)
            module.__dict__.pop("forward", None)
            n += 1
    return n
