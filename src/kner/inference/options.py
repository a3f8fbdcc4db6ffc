"""``ExtractorConfig``: the knobs of :class:`kner.inference.Extractor` (batching, memory, budgets, decoding).

Kept apart from the extractor so configuration code (:mod:`kner.config`, the CLI) names the options
without the extraction machinery.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from kner.errors import ConfigError


@dataclass
class ExtractorConfig:
    constrained: bool = True
    batch_size: int | None = None  # fixed rows per batch; None = plan from free memory
    max_batch_size: int = 256
    cpu_batch_size: int = 16
    max_memory: float | None = None  # GiB this process may use on the GPU (None: all that is free)
    memory_safety: float = (
        0.92  # share of free memory planned; 0.85 left 3.8 GiB of a 15 GiB cap unused (docs/inference.md)
    )
    new_tokens_factor: float = 1.2  # new-token budget = ceil(text tokens x factor) + overhead
    new_tokens_overhead: int = 16
    max_new_tokens: int | None = None  # hard cap on the budget
    max_chunk_tokens: int = 384  # longer texts are split (and anything not fitting the context)
    prefill_chunk_tokens: int = 2048
    ignore_eos: bool = False  # benchmarks: always generate the whole budget
    logits_hook: Callable | None = None  # tests: adjust logits before choosing
    adapter_dtype: str = "model"  # model: cast fp32 LoRA weights to the model's 16-bit dtype; keep
    fuse_lora: bool = True  # inference-only LoRA forward with fewer kernels (kner.inference.fused)

    @classmethod
    def from_options(cls, **opts) -> ExtractorConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(opts) - names
        if unknown:
            raise ConfigError(f"unknown extractor option(s): {', '.join(sorted(unknown))}")
        return cls(**opts)
