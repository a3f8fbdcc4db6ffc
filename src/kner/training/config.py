"""The declarative training configuration: one dataclass, loaded from YAML, overridden by flags.

Everything that changes what is learned lives here, so the resolved config saved
next to the adapter (``train_config.yaml``) is enough to repeat a run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from kner.errors import ConfigError
from kner.modeling import METHODS

LAYOUTS = ("packed", "prefix_kv", "padded")
OPTIMIZERS = ("paged_adamw_8bit", "adamw_8bit", "adamw")
SCHEDULERS = ("cosine", "linear", "constant")


@dataclass
class TrainConfig:
    # --- data -----------------------------------------------------------------
    train: str | None = None            # canonical JSONL (kner.example)
    dev: str | None = None              # optional; answer-token loss is reported on it
    scheme: str = "spacy19"             # target label scheme (name or YAML)
    map: str | None = None              # source scheme of the data, mapped with Mapping.load(map, scheme)
    map_fallback: str | None = None     # label for source labels without a row ("-" drops them, counted)
    max_seq_len: int = 1024             # tokens, prefix included; longer examples are skipped and reported
    prompt: dict = field(default_factory=dict)   # PromptFormat overrides (template, header, ...)
    augment: dict = field(default_factory=dict)  # kner.augment.AugmentConfig: {mention_replace: 0.5, variants: 8}

    # --- model ------------------------------------------------------------------
    model: str = "meta-llama/Llama-2-7b-hf"
    method: str = "qlora"               # qlora | lora | full
    compute_dtype: str = "auto"         # auto: bf16 where supported, fp16 + loss scaling on T4/V100, fp32 on CPU
    double_quant: bool = True
    quant_type: str = "nf4"
    trust_remote_code: bool = False
    revision: str | None = None
    attn_implementation: str | None = "sdpa"
    gradient_checkpointing: bool = True

    # --- LoRA -------------------------------------------------------------------
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: Any = "all-linear"  # "all-linear" or a list of module names

    # --- optimisation -----------------------------------------------------------
    optimizer: str = "paged_adamw_8bit"
    lr: float = 2e-4
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    warmup_steps: int | None = None     # overrides warmup_ratio
    max_grad_norm: float = 1.0
    max_nonfinite_steps: int = 5        # stop (with an error) after this many NaN/inf steps in a row; updates skipped
    epochs: int = 1
    max_steps: int | None = None
    examples_per_step: int = 16         # the optimizer sees the same batches whatever the GPU
    seed: int = 42

    # --- batching and memory --------------------------------------------------------
    layout: str = "packed"              # packed | prefix_kv | padded (see docs/training.md)
    batch_tokens: int | None = None     # micro-batch token budget; None: the largest the memory plan allows
    max_batch_tokens: int = 8192        # upper bound for the automatic budget
    row_tokens: int | None = 2560       # packed: longest row (at least the longest example); None: the budget.
                                        # 2560 was the fastest measured (docs/training.md): one long row pays
                                        # attention over masked pairs, short rows repeat the prefix
    gpu_memory: str | None = None       # e.g. "15GiB"; default: the GPU's total memory
    group_by_length: bool | None = None  # None: on for padded, off for the packed layouts

    # --- output -------------------------------------------------------------------
    output: str = "runs/kner"
    save_every: int = 200               # checkpoint every N optimizer steps (0: only at the end)
    keep_checkpoints: int = 2
    eval_every: int = 0                 # dev loss every N steps (0: only at the end)
    resume: bool = False                # continue from the latest checkpoint in output/checkpoints
    progress: bool = True               # live bar (rich)
    tensorboard: bool = True            # when the tensorboard package is installed

    def validate(self) -> "TrainConfig":
        def check(cond: bool, msg: str):
            if not cond:
                raise ConfigError(msg)

        check(self.method in METHODS, f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        check(self.layout in LAYOUTS, f"layout must be one of {', '.join(LAYOUTS)}, not {self.layout!r}")
        check(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        check(self.scheduler in SCHEDULERS, f"scheduler must be one of {', '.join(SCHEDULERS)}, not {self.scheduler!r}")
        check(self.lora_r > 0, "lora_r must be positive")
        check(0 <= self.lora_dropout < 1, "lora_dropout must be in [0, 1)")
        check(self.lr > 0, "lr must be positive")
        check(self.epochs >= 1 or (self.max_steps or 0) > 0, "epochs must be at least 1 (or set max_steps)")
        check(self.examples_per_step >= 1, "examples_per_step must be at least 1")
        check(self.max_nonfinite_steps >= 1, "max_nonfinite_steps must be at least 1")
        check(self.max_seq_len >= 16, "max_seq_len is too small")
        check(self.batch_tokens is None or self.batch_tokens >= 16, "batch_tokens is too small")
        check(0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)")
        check(self.save_every >= 0 and self.eval_every >= 0, "save_every and eval_every must be >= 0")
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        if self.gpu_memory is not None:
            parse_bytes(self.gpu_memory)
        from kner.augment import AugmentConfig

        AugmentConfig.from_dict(self.augment)
        return self

    @property
    def uses_group_by_length(self) -> bool:
        return self.layout == "padded" if self.group_by_length is None else self.group_by_length

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), allow_unicode=True, sort_keys=False), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, d: dict, source: str = "<config>") -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides) -> "TrainConfig":
        """Read ``path`` (YAML) and apply ``overrides`` whose value is not None (flags win over the file)."""
        d: dict = {}
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"config file {p} not found")
            try:
                d = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as err:
                raise ConfigError(f"{p}: invalid YAML ({err})") from None
            if not isinstance(d, dict):
                raise ConfigError(f"{p}: expected a mapping of settings")
        cfg = cls.from_dict(d, str(path or "<config>"))
        return cfg.replace(**{k: v for k, v in overrides.items() if v is not None})

    def replace(self, **changes) -> "TrainConfig":
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(s: str | int | float) -> int:
    """'15GiB' -> 16106127360; '15GB' -> 15e9; plain numbers are bytes."""
    if isinstance(s, (int, float)):
        return int(s)
    t = str(s).strip().lower().replace(" ", "")
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(num):]
    try:
        return int(float(num) * _UNITS[unit])
    except (ValueError, KeyError):
        raise ConfigError(f"cannot read memory size {s!r}; write e.g. 15GiB or 16GB") from None
