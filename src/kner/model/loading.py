"""Loading base models and tokenizers, shared by training and inference.

One place decides quantization and compute dtype so that a model is loaded the
same way when it is trained and when it is served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from kner.errors import ConfigError, KnerError
from kner.model import compat, hub

# torch and transformers are imported inside each function (PLC0415 is off for this file in
# pyproject.toml): kner.config and kner.training.config import this module, and checking a config
# must not import them (seconds).

log = logging.getLogger(__name__)

METHODS = ("qlora", "lora", "full")


def choose_compute_dtype(requested: str = "auto"):
    """bf16 where the GPU supports it, fp16 (with loss scaling) on T4/V100, fp32 on CPU."""
    import torch

    if requested != "auto":
        try:
            return {
                "bf16": torch.bfloat16,
                "bfloat16": torch.bfloat16,
                "fp16": torch.float16,
                "float16": torch.float16,
                "fp32": torch.float32,
                "float32": torch.float32,
            }[requested]
        except KeyError:
            raise ConfigError(f"unknown dtype {requested!r}; use auto, bf16, fp16 or fp32") from None
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return torch.float32


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def bnb_config(compute_dtype, double_quant: bool = True, quant_type: str = "nf4"):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=compute_dtype,
    )


@dataclass
class LoadSpec:
    """How a base model is loaded. Saved in the output folder so inference repeats it."""

    model: str
    quantize_4bit: bool = True
    compute_dtype: str = "auto"
    double_quant: bool = True
    quant_type: str = "nf4"
    trust_remote_code: bool = False
    revision: str | None = None
    attn_implementation: str | None = "sdpa"


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as err:
        raise KnerError(f"cannot load tokenizer {name_or_path!r}: {str(err).splitlines()[0]}") from None
    if tok.pad_token is None:
        # LLaMA-2 ships without a pad token; reuse UNK (not EOS, or the model
        # would be trained never to stop) and fall back to EOS only if needed.
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok


def load_model(spec: LoadSpec, device_map=None, allow_pickle: bool = False):
    """Load a causal LM per ``spec``; 4-bit NF4 through bitsandbytes when ``quantize_4bit``. Safetensors
    weights only (a folder or Hub repo with only pickled ``.bin`` files is refused) unless ``allow_pickle``."""
    import torch
    from transformers import AutoModelForCausalLM

    hub.require_safetensors(spec.model, allow_pickle)
    dtype = choose_compute_dtype(spec.compute_dtype)
    # use_safetensors=None would fall back to pickled .bin files, which run code when loaded.
    kwargs = dict(
        trust_remote_code=spec.trust_remote_code,
        revision=spec.revision,
        use_safetensors=None if allow_pickle else True,
        dtype=dtype,
    )
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    if spec.quantize_4bit:
        kwargs["quantization_config"] = bnb_config(dtype, spec.double_quant, spec.quant_type)
        kwargs["device_map"] = device_map or ({"": 0} if torch.cuda.is_available() else {"": "cpu"})
    elif device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(spec.model, **kwargs)
    except (OSError, ValueError) as err:
        msg = str(err).splitlines()[0]
        if not allow_pickle and "safetensors" in msg:
            msg += f" (kner loads safetensors weights only; if it has only pickled .bin files, {hub.PICKLE_HINT})"
        raise KnerError(f"cannot load model {spec.model!r}: {msg}") from None
    return model


# Tiny random models of each supported architecture, for tests and the CPU quickstart.
TINY_ARCHS = ("llama", "mistral", "qwen2", "gemma")


def tiny_config(
    arch: str,
    vocab_size: int,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    max_positions: int = 2048,
    **extra,
):
    from transformers import AutoConfig

    if arch not in TINY_ARCHS:
        raise ConfigError(f"unknown architecture {arch!r}; choose from {', '.join(TINY_ARCHS)}")
    kw = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
    )
    if arch == "gemma":
        kw["head_dim"] = hidden // heads
    kw.update(extra)
    return AutoConfig.for_model(arch, **kw)


def build_model_from_config(config, dtype=None, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    if dtype is not None:
        model = model.to(dtype)
    return model


def save_pretrained_dir(model, tokenizer, path: str | Path) -> Path:
    """Save a (tiny) model with its tokenizer so ``LoadSpec(model=path)`` loads it like a hub model."""
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def quantize_4bit_inplace(
    model,
    compute_dtype,
    double_quant: bool = True,
    quant_type: str = "nf4",
    skip: tuple[str, ...] = ("lm_head",),
    device=None,
):
    """Replace every ``nn.Linear`` (except ``skip``) by a bitsandbytes NF4 ``Linear4bit``, in place.

    For models that exist only as Python objects (tiny from-scratch models, or a 7B
    architecture with random weights built directly on the GPU for benchmarks), so
    they go through the same 4-bit kernels as ``load_model(LoadSpec(quantize_4bit=True))``
    without a save/reload round trip. Quantization happens on ``device`` (default: the
    weight's own device).
    """
    import torch
    from torch import nn

    bnb = compat.bitsandbytes()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or name in skip:
                continue
            dev = torch.device(device) if device is not None else child.weight.device
            new = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=compute_dtype,
                compress_statistics=double_quant,
                quant_type=quant_type,
                quant_storage=compute_dtype,
                device="meta",
            )
            w = child.weight.data.to(compute_dtype)
            new.weight = bnb.nn.Params4bit(
                w,
                requires_grad=False,
                compress_statistics=double_quant,
                quant_type=quant_type,
                quant_storage=compute_dtype,
                module=new,
            ).to(dev)
            if child.bias is not None:
                new.bias = nn.Parameter(child.bias.data.to(device=dev, dtype=compute_dtype), requires_grad=False)
            new.requires_grad_(False)
            setattr(parent, name, new)
            del child, w
    model.is_loaded_in_4bit = True
    model.config.quantization_config = bnb_config(compute_dtype, double_quant, quant_type).to_dict()
    return model
