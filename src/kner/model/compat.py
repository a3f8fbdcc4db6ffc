"""Every use of transformers / peft / bitsandbytes internals, behind one small API.

kner subclasses transformers' cache classes and routes attention through a function
of its own. Those are
internals, and they move between releases; this module is the only place that
touches them, so a new release means reading this file, not the whole package.

What differs across the supported range (``pyproject.toml``; CI runs the suite
with the lowest pinned versions and with the newest pip resolves):

==========================  ==============================  ==========================
what                        transformers 5.17               transformers 5.24
==========================  ==============================  ==========================
KV cache keyword            ``past_key_values=``            ``cache=`` (the old name
                                                            warns, removed in 5.40)
enable checkpointing        ``gradient_checkpointing_       ``activation_checkpointing_
                            enable``                        enable`` (old name warns)
checkpointed layers         ``__call__`` (forward hooks     ``forward`` (hooks run once)
                            also run in the replay)
==========================  ==============================  ==========================

Each switch is decided by looking at what the installed library (or the model's
own class, for remote code) actually offers, not by a version number, so a
release in between picks whichever name it has.

Unchanged in the range and used as is: ``Cache``, ``DynamicCache``,
``AttentionInterface`` and ``config._attn_implementation``. kner's own cache layers
subclass the class handed out here (``kner.inference.prefix_cache`` and
``kner.inference.engine``: ``CacheLayerMixin``)
and rely on this contract of a cache layer: ``update(key_states, value_states,
*args, **kwargs)`` returns the keys/values to attend to; ``get_mask_sizes(query_length)``
returns ``(kv_length, kv_offset)``; ``get_seq_length()``, ``get_max_length()``,
``lazy_initialization(key_states, value_states)``, ``batch_select_indices(indices)``;
attributes ``keys``, ``values``, ``is_initialized``, ``is_compileable``,
``is_sliding``; and ``Cache(layers=[...])`` / ``Cache(layer_class_to_replicate=cls)``.
Check those first when a release changes ``transformers/cache_utils.py``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import warnings
from contextlib import contextmanager
from typing import Any

# Imports of torch, transformers, peft and bitsandbytes are lazy, inside each function (PLC0415 is
# ignored for this file in pyproject.toml): kner.model.loading imports this module, and kner.config
# imports loading, so checking a run config would otherwise import peft (8 s) and transformers.

# ---------------------------------------------------------------------------
# bitsandbytes


class _NoCpuKernelsHint(logging.Filter):
    """Drops bitsandbytes' "pip install kernels" hint on machines without CUDA.

    bitsandbytes logs it when importing its CPU backend on any AVX512-BF16 CPU, also
    when the 4-bit path will never run on the CPU; kner's CPU use (tests, the
    quickstart) works without that optional package. With CUDA the hint is kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if "pip install kernels" not in record.getMessage():
            return True
        import torch

        return torch.cuda.is_available()


# Installed on import (kner.model.loading imports this module), before transformers or
# peft import bitsandbytes on kner's behalf; a filter on bitsandbytes' own logger,
# so it affects nothing else.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NoCpuKernelsHint())


def bitsandbytes():
    """``import bitsandbytes`` (the CPU-only kernels hint filtered, see above)."""
    import bitsandbytes as bnb

    return bnb


# ---------------------------------------------------------------------------
# Model forward: the KV cache argument


def _unwrap(model):
    """The transformers model under a peft wrapper (whose forward only forwards ``**kwargs``)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@functools.cache
def _library_cache_kwarg() -> str:
    """The name transformers' own models take: every one builds its mask through ``create_causal_mask``."""
    from transformers.masking_utils import create_causal_mask

    return "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


@functools.cache
def _cache_kwarg(cls: Any) -> str:  # a model class
    params = inspect.signature(cls.forward).parameters  # follows functools.wraps of HF's decorators
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:  # e.g. remote code written for an older transformers
        return "past_key_values"
    return _library_cache_kwarg()  # a wrapper passing ``**kwargs`` on


def cache_kwargs(model, cache) -> dict:
    """``{name: cache}`` for ``model(...)``: ``cache`` where the model takes it (5.24 does), else
    ``past_key_values``."""
    model_cls: type = type(_unwrap(model))
    return {_cache_kwarg(model_cls): cache}


# ---------------------------------------------------------------------------
# Cache classes


def cache_classes():
    """``(Cache, CacheLayerMixin)``: the base classes of kner's own caches."""
    from transformers.cache_utils import Cache, CacheLayerMixin

    return Cache, CacheLayerMixin


def dynamic_cache():
    """An empty growing cache (what ``generate`` uses)."""
    from transformers import DynamicCache

    return DynamicCache()


# ---------------------------------------------------------------------------
# Gradient (activation) checkpointing


def decoder_layers(model) -> list:
    """The model's checkpointable decoder layers."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def enable_checkpointing(model, offload: bool = False, **checkpoint_kwargs) -> None:
    """Turn on checkpointing of the decoder layers; ``checkpoint_kwargs`` go to ``torch.utils.checkpoint``.

    ``offload``: the layer inputs kept for the recompute live in pinned host memory (transformers'
    own option, ``torch.autograd.graph.save_on_cpu`` around each layer's checkpoint): one
    ``layers x tokens x hidden`` copy out in the forward and back in the backward, for that much less
    device memory (LLaMA-2-7B: 0.25 MiB a token)."""
    new = getattr(model, "activation_checkpointing_enable", None)
    if new is not None:
        new(activation_checkpointing_kwargs=checkpoint_kwargs, offload=offload)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs, offload=offload)


# RMSNorm classes whose forward is exactly Llama's: ``weight * (x32 * rsqrt(mean(x32^2) + eps)).to(dtype)``
# (tests/test_compat.py checks each one's source against LlamaRMSNorm's, so a release that changes one
# fails there). Gemma's ``(1 + weight)`` form is not among them and keeps its own forward.
PLAIN_RMSNORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "Exaone4RMSNorm", "Phi3RMSNorm")


def _lean_rmsnorm_forward(self, hidden_states):
    import torch
    import torch.nn.functional as F

    # Autocast off: it would run the norm in fp32 and hand the next layers fp32 again.
    with torch.autocast(hidden_states.device.type, enabled=False):
        y = F.rms_norm(hidden_states, (hidden_states.shape[-1],), None, self.variance_epsilon)
        return y * self.weight.to(y.dtype)


def lean_rmsnorms(model) -> int:
    """Training: every plain RMSNorm computed by ``torch.nn.functional.rms_norm`` in the input's dtype.

    The same values up to rounding (the fused op also reduces in fp32; where the weight is exactly an
    fp16/bf16 number, as in fp16 and bf16 checkpoints, the final product rounds the same), but
    transformers' version keeps an fp32 copy of its input for the backward, returns fp32 (the weight is
    fp32 after ``prepare_model_for_kbit_training``), and autocast then casts that output once for every
    projection reading it. On CUDA ``rms_norm`` is one fused kernel that keeps only its half-precision
    input and one fp32 number a token. Returns the number of norms switched.
    """
    import types

    n = 0
    for m in model.modules():
        if type(m).__name__ in PLAIN_RMSNORMS and hasattr(m, "variance_epsilon"):
            m.forward = types.MethodType(_lean_rmsnorm_forward, m)
            n += 1
    return n


# ---------------------------------------------------------------------------
# peft: it reads ``model.is_gradient_checkpointing``, which newer transformers
# deprecate with a FutureWarning raised inside transformers. Nothing of ours to
# change, so exactly that warning is silenced around the peft calls kner makes.


@contextmanager
def _peft_on_new_transformers():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def prepare_kbit_model(model, checkpointing: bool, **checkpoint_kwargs):
    """peft's ``prepare_model_for_kbit_training``, with checkpointing enabled through :func:`enable_checkpointing`.

    peft's own checkpointing option does the same two steps, but calls the
    deprecated ``gradient_checkpointing_enable``.
    """
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if checkpointing:
        if checkpoint_kwargs.get("use_reentrant", True):  # reentrant checkpoints need inputs that require grad
            model.enable_input_require_grads()
        enable_checkpointing(model, **checkpoint_kwargs)
    return model


def get_peft_model(model, peft_config, **kwargs):
    from peft import get_peft_model as _get

    with _peft_on_new_transformers():
        return _get(model, peft_config, **kwargs)


def load_adapter(model, adapter_dir, **kwargs):
    """``PeftModel.from_pretrained(model, adapter_dir)``."""
    from peft import PeftModel

    with _peft_on_new_transformers():
        return PeftModel.from_pretrained(model, str(adapter_dir), **kwargs)


# ---------------------------------------------------------------------------
# Attention


def attention_implementation(config, default: str | None = None) -> str | None:
    """The attention implementation a config selects (``sdpa``, ``eager``, a registered name...)."""
    return getattr(config, "_attn_implementation", default)


def set_attention_implementation(config, name: str | None) -> None:
    """Switch a config's attention without reloading or validating (cheap: done around each decode call).

    ``model.set_attn_implementation`` is the public way, but it walks every submodule
    and checks the kernel each time; for a name registered by :func:`register_attention`
    flipping the config is all the model's attention layers read.
    """
    config._attn_implementation = name


def register_attention(name: str, fn) -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(name, fn)


def attention_function(name: str):
    """The attention function registered as ``name`` (built-in or custom); sdpa when unknown."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS.get(name, sdpa_attention_forward)
