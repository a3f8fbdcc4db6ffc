"""Building a run's components from its config: model, memory plan and token budget, optimizer, schedule.

Each function builds one component for ``kner.training.recipe``; none of them runs a step.
"""

from __future__ import annotations

import logging
import math
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kner.errors import ConfigError, KnerError
from kner.model import compat
from kner.model.loading import LoadSpec, load_model, load_tokenizer, quantize_4bit_inplace
from kner.model.shape import ModelShape
from kner.training import distributed as dist
from kner.training.config import TrainConfig
from kner.training.memory import MemoryPlan, device_capacity, plan_memory

log = logging.getLogger("kner.train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        np.random.seed(seed)
    except ImportError:
        pass


# ---------------------------------------------------------------------------
# Model and tokenizer


def load_spec(cfg: TrainConfig) -> LoadSpec:
    """How the base model is loaded; saved in the output folder so inference repeats it."""
    return LoadSpec(
        model=cfg.model,
        quantize_4bit=cfg.method == "qlora",
        compute_dtype=cfg.compute_dtype,
        double_quant=cfg.double_quant,
        quant_type=cfg.quant_type,
        trust_remote_code=cfg.trust_remote_code,
        revision=cfg.revision,
        attn_implementation=cfg.attn_implementation,
    )


def tokenizer_for(cfg: TrainConfig, tokenizer=None):
    """The given tokenizer (given a pad token if it has none), else the model's."""
    if tokenizer is None:
        return load_tokenizer(cfg.model, cfg.trust_remote_code, cfg.revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def model_for(cfg: TrainConfig, spec: LoadSpec, model, tokenizer, out: Path, dtype) -> tuple[Any, Path | None]:
    """The model ready to train (frozen base, LoRA or all trainable) and where its base weights were saved.

    A model given as an object is quantized in place for ``qlora`` and, when
    ``cfg.model`` is no folder holding it, its base weights go to ``out/base`` so the
    output folder is self-contained.
    """
    base_dir = None
    if model is None:
        # Under data parallelism the current device is this rank's GPU (set by dist.init).
        model = load_model(spec, device_map={"": torch.cuda.current_device()} if torch.cuda.is_available() else None)
    else:
        base_dir = _adopt_model(model, tokenizer, cfg, out, dtype)
    return prepare_for_training(model, cfg, dtype), base_dir


def _adopt_model(model, tokenizer, cfg: TrainConfig, out: Path, dtype) -> Path | None:
    base_dir = None
    if cfg.method != "full" and not Path(cfg.model).is_dir():
        base_dir = out / "base"
        if not getattr(model, "is_loaded_in_4bit", False):
            if dist.is_main():
                model.save_pretrained(base_dir, safe_serialization=True)
                tokenizer.save_pretrained(base_dir)
        else:
            log.warning(
                "the given model is already quantized and config.model is not a folder: "
                "the output folder will not hold the base weights"
            )
            base_dir = None
    if torch.cuda.is_available() and next(model.parameters()).device.type == "cpu":
        model.to("cuda")
    if cfg.method == "qlora" and not getattr(model, "is_loaded_in_4bit", False):
        quantize_4bit_inplace(model, dtype, cfg.double_quant, cfg.quant_type)
    elif cfg.method == "lora":
        model.to(dtype)
    if cfg.attn_implementation and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation(cfg.attn_implementation)
        except (ValueError, ImportError) as err:
            log.warning("cannot switch attention to %s: %s", cfg.attn_implementation, err)
    return base_dir


def prepare_for_training(model, cfg: TrainConfig, dtype):
    """Freeze, gradient checkpointing, LoRA (or everything trainable for ``full``)."""
    ckpt_kwargs: dict = {"use_reentrant": False}  # torch.autograd.grad needs non-reentrant checkpoints
    if cfg.offload_activations and next(model.parameters()).device.type == "cuda":
        ckpt_kwargs["offload"] = True  # host memory only means something next to a GPU
    compat.lean_rmsnorms(model)
    if cfg.method == "full":
        model.float()  # fp32 master weights; compute runs under autocast
        for p in model.parameters():
            p.requires_grad_(True)
        if cfg.gradient_checkpointing:
            compat.enable_checkpointing(model, **ckpt_kwargs)
        model.config.use_cache = False
        return model

    from peft import LoraConfig  # noqa: PLC0415  lazy: peft takes seconds to import; only LoRA methods need it

    if getattr(model, "is_loaded_in_4bit", False):
        model = compat.prepare_kbit_model(model, cfg.gradient_checkpointing, **ckpt_kwargs)
        # prepare_model_for_kbit_training upcasts every non-4-bit weight to fp32. For the
        # embeddings and LM head (0.5 GB at 7B) that doubles their memory and turns the
        # whole residual stream fp32; they are frozen, so keep them in the compute dtype.
        for mod in (model.get_input_embeddings(), model.get_output_embeddings()):
            if mod is not None:
                mod.to(dtype)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        if cfg.gradient_checkpointing:
            compat.enable_checkpointing(model, **ckpt_kwargs)
    model.config.use_cache = False
    torch.manual_seed(cfg.seed)  # LoRA initialisation
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        model = compat.get_peft_model(model, lora)
    except ValueError as err:
        raise ConfigError(f"LoRA: {err}") from None
    for p in model.parameters():  # trainable weights in fp32 (GradScaler and AdamW need it)
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


# ---------------------------------------------------------------------------
# Memory plan and token budget


def row_tokens(cfg: TrainConfig, longest: int) -> int | None:
    """The longest packed row: ``cfg.row_tokens``, but never shorter than the longest example."""
    return max(cfg.row_tokens, longest) if cfg.row_tokens else None


def memory_plan(
    model_config, cfg: TrainConfig, train_tok: list, longest: int, prefix_len: int, dtype, device
) -> MemoryPlan | None:
    """The predicted peak memory per token budget; on a GPU with ``gpu_memory`` the allocator is capped too.

    None where no plan can be made but none is needed (CPU, or ``batch_tokens`` given).
    """
    # Share of computed tokens that reach the LM head.
    answer_fraction = sum(e.n_answer for e in train_tok) / max(1, sum(e.suffix_len for e in train_tok) + prefix_len)
    on_gpu = device.type == "cuda"
    cap = device_capacity(cfg.gpu_memory)
    if on_gpu and cfg.gpu_memory:
        total = torch.cuda.get_device_properties(device).total_memory
        # Enforce the cap on the allocator too, so a 16 GB card can be emulated on a bigger one.
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
    try:
        plan = plan_memory(
            ModelShape.from_config(model_config),
            cap,
            budget=cfg.batch_tokens,
            min_tokens=longest,
            max_budget=max(cfg.max_batch_tokens, longest),
            method=cfg.method,
            compute_bytes=dtype.itemsize,
            lora_r=cfg.lora_r,
            target_modules=cfg.target_modules,
            optimizer=cfg.optimizer,
            layout=cfg.layout,
            answer_fraction=answer_fraction,
            double_quant=cfg.double_quant,
            gradient_checkpointing=cfg.gradient_checkpointing,
            offload_activations=cfg.offload_activations,
            on_gpu=on_gpu,
            row_tokens=row_tokens(cfg, longest),
        )
    except KnerError:
        if cfg.batch_tokens is None and on_gpu:
            raise
        return None
    e = plan.estimate
    log.info(
        "memory plan: budget %d tokens, predicted peak %.2f GiB allocator / %.2f GiB device (cap %.2f GiB)",
        plan.budget,
        e.allocator_peak / 2**30,
        e.device_total / 2**30,
        cap / 2**30,
    )
    if on_gpu and not plan.fits:
        log.warning(
            "batch_tokens=%d is predicted to need %.2f GiB of %.2f GiB; OOMs will be split and retried",
            plan.budget,
            e.device_total / 2**30,
            cap / 2**30,
        )
    return plan


def token_budget(
    cfg: TrainConfig, plan: MemoryPlan | None, longest: int, on_gpu: bool, checkpoint_budget: int | None = None
) -> int:
    """The micro-batch token budget of the run: decided here and nowhere else.

    ``batch_tokens`` when given. Otherwise the memory plan's; on CPU at most 1024
    (nothing to protect, but long packed rows cost attention over masked pairs,
    quadratic, and the CPU has no fused kernel for it). A resumed run keeps its
    checkpoint's budget: the micro-batch cut, and so the losses, depend on it.
    """
    if cfg.batch_tokens:
        budget = cfg.batch_tokens
    else:
        budget = plan.budget if plan is not None else max(cfg.max_batch_tokens, longest)
        if not on_gpu:
            budget = max(min(budget, 1024), longest)
        if checkpoint_budget is not None and checkpoint_budget != budget:
            log.info("resume: keeping the checkpoint's token budget %d (plan says %d)", checkpoint_budget, budget)
            budget = checkpoint_budget
    if budget < longest:
        raise ConfigError(
            f"batch_tokens={budget} is smaller than the longest example ({longest} tokens with the "
            f"prefix); raise batch_tokens or lower max_seq_len"
        )
    return budget


# ---------------------------------------------------------------------------
# Optimizer and schedule


def make_optimizer(params, cfg: TrainConfig, device):
    if cfg.optimizer in ("paged_adamw_8bit", "adamw_8bit"):
        try:
            bnb = compat.bitsandbytes()
            cls = bnb.optim.PagedAdamW8bit if cfg.optimizer == "paged_adamw_8bit" else bnb.optim.AdamW8bit
            if device.type != "cuda" and cfg.optimizer == "paged_adamw_8bit":
                log.info("paged optimizers need CUDA; on %s the 8-bit AdamW runs unpaged", device.type)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Paged optimizers are not supported")
                return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        except (ImportError, RuntimeError) as err:
            log.warning("bitsandbytes %s unavailable (%s); falling back to torch AdamW", cfg.optimizer, err)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    # lazy: transformers' schedules module imports its trainer utils, and with them peft and bitsandbytes
    # (seconds); importing kner.training.recipe must not pay for that
    from transformers import (  # noqa: PLC0415
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(cfg.warmup_ratio * total_steps)
    if cfg.scheduler == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    if cfg.scheduler == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    return get_constant_schedule_with_warmup(optimizer, warmup)
