"""``kner train`` and ``kner plan``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from kner.cli import app, configure_logging


@app.command()
def train(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML file of settings; flags override it."),
    train_file: Path | None = typer.Option(None, "--train", help="Training data, canonical JSONL."),
    dev: Path | None = typer.Option(None, help="Development data (JSONL): answer-token loss is reported."),
    scheme: str | None = typer.Option(None, help="Target label scheme (default spacy19) or a YAML file."),
    map_from: str | None = typer.Option(None, "--map", help="Source scheme of the data, mapped to --scheme."),
    map_fallback: str | None = typer.Option(None, help="Label for source labels with no mapping row ('-' drops)."),
    model: str | None = typer.Option(None, help="Hub id or local folder (default meta-llama/Llama-2-7b-hf)."),
    method: str | None = typer.Option(None, help="qlora (default) | lora | full."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output folder (default runs/kner)."),
    epochs: int | None = typer.Option(None),
    max_steps: int | None = typer.Option(None, help="Stop after this many optimizer steps."),
    examples_per_step: int | None = typer.Option(None, help="Examples per optimizer step (default 16)."),
    lr: float | None = typer.Option(None, help="Peak learning rate (default 2e-4)."),
    warmup_ratio: float | None = typer.Option(None),
    scheduler: str | None = typer.Option(None, help="cosine (default) | linear | constant."),
    optimizer: str | None = typer.Option(None, help="paged_adamw_8bit (default) | adamw_8bit | adamw."),
    lora_r: int | None = typer.Option(None, help="LoRA rank (default 16)."),
    lora_alpha: int | None = typer.Option(None, help="LoRA alpha (default 32)."),
    lora_dropout: float | None = typer.Option(None, help="LoRA dropout (default 0.05)."),
    target_modules: str | None = typer.Option(None, help="'all-linear' (default) or comma-separated names."),
    compute_dtype: str | None = typer.Option(None, "--dtype", help="auto (default) | bf16 | fp16 | fp32."),
    layout: str | None = typer.Option(None, help="packed (default) | padded."),
    batch_tokens: int | None = typer.Option(None, help="Micro-batch token budget (default: from the memory plan)."),
    gpu_memory: str | None = typer.Option(None, help="GPU memory to plan for and cap at, e.g. 15GiB."),
    max_seq_len: int | None = typer.Option(None, help="Skip (and report) longer examples (default 1024)."),
    save_every: int | None = typer.Option(None, help="Checkpoint every N steps (default 200)."),
    eval_every: int | None = typer.Option(None, help="Dev loss every N steps (default: at the end)."),
    seed: int | None = typer.Option(None),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in the output folder."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No live bar; log lines instead."),
):
    """Fine-tune a causal LM (QLoRA by default) into a Korean NER tagger."""
    from kner.training.config import TrainConfig
    from kner.training.recipe import train as run

    configure_logging(logging.INFO, sys.stderr)
    cfg = TrainConfig.load(
        config,
        train=_s(train_file),
        dev=_s(dev),
        scheme=scheme,
        map=map_from,
        map_fallback=map_fallback,
        model=model,
        method=method,
        output=_s(output),
        epochs=epochs,
        max_steps=max_steps,
        examples_per_step=examples_per_step,
        lr=lr,
        warmup_ratio=warmup_ratio,
        scheduler=scheduler,
        optimizer=optimizer,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        compute_dtype=compute_dtype,
        layout=layout,
        batch_tokens=batch_tokens,
        gpu_memory=gpu_memory,
        max_seq_len=max_seq_len,
        save_every=save_every,
        eval_every=eval_every,
        seed=seed,
        resume=resume or None,
        progress=False if no_progress else None,
    )
    out = run(cfg)
    from kner.training.distributed import is_main

    if is_main():  # under torchrun every rank returns here; one line is enough
        typer.echo(f"model written to {out}")


@app.command()
def plan(
    model: str = typer.Option("meta-llama/Llama-2-7b-hf", help="Hub id or local folder; only its config is read."),
    gpu_memory: str | None = typer.Option(None, help="GPU memory, e.g. 15GiB (default: this machine's GPU)."),
    method: str = typer.Option("qlora", help="qlora | lora | full."),
    seq_len: int = typer.Option(1024, help="Longest example in tokens (prefix included): the budget must hold it."),
    budget: int | None = typer.Option(None, help="Check this micro-batch token budget instead of choosing one."),
    max_budget: int = typer.Option(8192, help="Largest budget to consider."),
    layout: str = typer.Option("packed", help="packed | padded."),
    lora_r: int = typer.Option(16),
    dtype: str = typer.Option("fp16", help="Compute dtype: fp16 (T4/V100) or bf16 (2 bytes), fp32 (4)."),
    optimizer: str = typer.Option("paged_adamw_8bit"),
    row_tokens: int = typer.Option(2560, help="packed: longest row, as kner train's row_tokens (0: the budget)."),
    offload: bool = typer.Option(
        True, "--offload/--no-offload", help="Layer inputs in host memory, as kner train's offload_activations."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
):
    """Predict peak GPU memory from the model's config and choose the micro-batch token budget."""
    import json

    from kner.errors import ConfigError
    from kner.training.config import TrainConfig
    from kner.training.memory import ModelShape, device_capacity, format_plan, load_config, plan_memory

    TrainConfig.from_dict({"layout": layout, "method": method, "optimizer": optimizer})  # the same checks as train
    widths = {"fp16": 2, "float16": 2, "bf16": 2, "bfloat16": 2, "fp32": 4, "float32": 4}
    if dtype not in widths:
        raise ConfigError(f"unknown dtype {dtype!r}; use fp16, bf16 or fp32")
    shape = ModelShape.from_config(load_config(model))
    cap = device_capacity(gpu_memory)
    p = plan_memory(
        shape,
        cap,
        budget=budget,
        min_tokens=seq_len,
        max_budget=max(max_budget, seq_len),
        method=method,
        compute_bytes=widths[dtype],
        lora_r=lora_r,
        optimizer=optimizer,
        layout=layout,
        row_tokens=max(row_tokens, seq_len) if row_tokens else None,
        offload_activations=offload,
    )
    typer.echo(json.dumps(p.to_dict(), indent=2) if json_out else format_plan(p))


def _s(p) -> str | None:
    return str(p) if p is not None else None
