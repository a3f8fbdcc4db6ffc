"""The declarative training configuration: one pydantic model, loaded from YAML, overridden by flags.

Everything that changes what is learned lives here, so the resolved config saved
next to the adapter (``train_config.yaml``) is enough to repeat a run. The same
model validates the ``train:`` section of a ``kner run`` config (:mod:`kner.config`).

:class:`Settings` and :func:`config_error` are what every kner config file is
built on: an unknown key at any depth is an error naming its dotted path with a
did-you-mean; a wrong type names the key and the type expected; a number written
as a string is a number (YAML 1.1, which PyYAML reads, takes ``2e-4`` for a string).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import typing_extensions
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kner.data.augment import AugmentConfig
from kner.errors import ConfigError
from kner.model.loading import METHODS
from kner.model.prompt import PromptFormat
from kner.model.shape import parse_bytes

LAYOUTS = ("packed", "padded")
OPTIMIZERS = ("paged_adamw_8bit", "adamw_8bit", "adamw")
SCHEDULERS = ("cosine", "linear", "constant")


class Settings(BaseModel):
    """A config section: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


# ---- reading and error messages ---------------------------------------------------------------------------


def read_yaml(path: str | Path) -> tuple[dict, dict[tuple, int]]:
    """The mapping in ``path`` and the line of every key in it (dotted path as a tuple -> 1-based line)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8-sig")
    try:
        data = yaml.safe_load(text) or {}
        node = yaml.compose(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}{line}: invalid YAML ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of settings at the top level")
    lines: dict[tuple, int] = {}

    def walk(n, prefix: tuple) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = prefix + (k.value,)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                lines[prefix + (i,)] = v.start_mark.line + 1
                walk(v, prefix + (i,))

    walk(node, ())
    return data, lines


def _unwrap(tp):
    """``X | None`` -> ``X``; ``Annotated[X, ...]`` -> ``X``; other unions stay."""
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if typing.get_origin(tp) in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
                continue
        return tp


def _keys_of(tp) -> dict[str, Any] | None:
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {n: f.annotation for n, f in tp.model_fields.items()}
    if typing_extensions.is_typeddict(tp):
        return typing.get_type_hints(tp)
    return None


def _walk(root, loc: tuple) -> tuple[list[str], Any, tuple]:
    """Dotted parts of a pydantic error location (union member tags dropped), the type there, the key path."""
    parts: list[str] = []
    keys: list = []
    tp = root
    for el in loc:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if isinstance(el, int) and parts:
            parts[-1] += f"[{el}]"
            keys.append(el)
            args = typing.get_args(tp)
            tp = args[0] if args else None
            continue
        known = _keys_of(tp)
        if known is not None:
            parts.append(str(el))
            keys.append(el)
            tp = known.get(el)
        elif origin is dict:
            parts.append(str(el))
            keys.append(el)
            tp = typing.get_args(tp)[1] if typing.get_args(tp) else None
        elif origin in (Union, types.UnionType):
            # pydantic names the union member it tried; the user's key is the same one.
            tp = next((a for a in typing.get_args(tp) if _keys_of(a) is not None), None)
        else:
            parts.append(str(el))
            keys.append(el)
            tp = None
    return parts, tp, tuple(keys)


_EXPECTED = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
    "none_required": "nothing (null)",
}


def _short(value) -> str:
    s = repr(value)
    return s if len(s) <= 60 else s[:57] + "..."


def did_you_mean(name: str, known, what: str = "keys") -> str:
    close = difflib.get_close_matches(str(name), sorted(known), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; known {what}: {', '.join(sorted(known))}"


def config_error(
    err: ValidationError, model: type[BaseModel], source: str, lines: dict | None = None, prefix: tuple = ()
) -> ConfigError:
    """One line naming every bad key: ``file:line: train.epochs: expected an integer, got 'ten'``."""
    by_path: dict[str, tuple[tuple, list[str]]] = {}
    for e in err.errors():
        parts, _, keys = _walk(model, e["loc"])
        path = ".".join([*map(str, prefix), *parts])
        kind, value = e["type"], e.get("input")
        if kind == "extra_forbidden":
            known = _keys_of(_walk(model, e["loc"][:-1])[1]) or {}
            msg = "unknown key" + did_you_mean(str(e["loc"][-1]), known)
        elif kind in _EXPECTED:
            msg = f"expected {_EXPECTED[kind]}, got {_short(value)}"
        elif kind == "literal_error":
            msg = f"expected {e['ctx']['expected']}, got {_short(value)}"
        elif kind == "missing":
            msg = "required"
        elif kind == "value_error":
            msg = str(e["ctx"]["error"]) if "ctx" in e else e["msg"]
        else:
            msg = e["msg"].replace("Input should be", "must be")
        key = tuple(prefix) + keys
        old = by_path.setdefault(path, (key, []))[1]
        if old and msg.startswith("expected ") and old[-1].startswith("expected "):
            # A union: "expected a string" and "expected a list" become one line.
            what, got = msg[len("expected ") :].rsplit(", got ", 1)
            old[-1] = old[-1].rsplit(", got ", 1)[0] + f" or {what}, got {got}"
        elif msg not in old:
            old.append(msg)
    out: list[tuple[int, str]] = []
    for path, (key, msgs) in by_path.items():
        line = line_of(lines, key)
        where = [f"{source}:{line}" if line else source] if source else []
        out.extend((line or 0, ": ".join([*where, path, m] if path else [*where, m])) for m in msgs)
    return ConfigError("; ".join(m for _, m in sorted(out, key=lambda t: t[0])))


def line_of(lines: dict | None, key: tuple) -> int | None:
    """The line of ``key`` in the file, else of its nearest parent that is there."""
    return next((lines[key[:n]] for n in range(len(key), 0, -1) if lines and key[:n] in lines), None)


def _as_value_error(fn, *args):
    """Call a checker that raises ConfigError inside a pydantic validator, where the error gets the key's path."""
    try:
        return fn(*args)
    except ConfigError as err:
        raise ValueError(str(err)) from None


def looks_like_path(name: str) -> bool:
    """True for ``./m``, ``/abs/m``, ``~/m``, ``a/b/c``; False for Hub ids ``org/name`` and ``gpt2``."""
    return name.startswith(("/", ".", "~")) or "\\" in name or name.endswith("/") or name.count("/") > 1


def check_model_path(name: str) -> None:
    """A local model folder that does not exist says so (the Hub would answer "Repo id must be ...")."""
    if looks_like_path(name) and not Path(name).expanduser().exists():
        raise ConfigError(f"model folder not found: {name}")


# ---- the training config ------------------------------------------------------------------------------------


def options_of(cls, skip: tuple[str, ...] = ()):
    """A dataclass's fields as a TypedDict: a mapping of its options, checked key by key, stays a plain dict."""
    hints = typing.get_type_hints(cls)
    td = typing_extensions.TypedDict(  # type: ignore[misc]  # fields known at run time
        f"{cls.__name__}Options",
        {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in skip},
        total=False,
    )
    td.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
    return td


if TYPE_CHECKING:  # TypedDicts built at import time from the dataclasses' fields
    PromptOptions = dict[str, Any]
    AugmentOptions = dict[str, Any]
else:
    PromptOptions = options_of(PromptFormat)
    AugmentOptions = options_of(AugmentConfig)


class TrainConfig(Settings):
    # --- data -----------------------------------------------------------------
    train: str | None = None  # canonical JSONL (kner.data.example)
    dev: str | None = None  # optional; answer-token loss is reported on it
    scheme: str = "spacy19"  # target label scheme (name or YAML)
    map: str | None = None  # source scheme of the data, mapped with Mapping.load(map, scheme)
    map_fallback: str | None = None  # label for source labels without a row ("-" drops them, counted)
    max_seq_len: int = Field(1024, ge=16)  # tokens, prefix included; longer examples are skipped and reported
    prompt: PromptOptions = Field(default_factory=dict)  # PromptFormat overrides (template, header, ...)
    augment: AugmentOptions = Field(default_factory=dict)  # AugmentConfig: {mention_replace: 0.5, variants: 8}

    # --- model ------------------------------------------------------------------
    model: str = "meta-llama/Llama-2-7b-hf"
    method: Literal[METHODS] = "qlora"  # type: ignore[valid-type]  # pydantic reads the tuple's names
    compute_dtype: str = "auto"  # auto: bf16 where supported, fp16 + loss scaling on T4/V100, fp32 on CPU
    double_quant: bool = True
    quant_type: str = "nf4"
    trust_remote_code: bool = False
    revision: str | None = None
    attn_implementation: str | None = "sdpa"
    gradient_checkpointing: bool = True
    # With checkpointing on a GPU: the layer inputs kept for the recompute wait in pinned CPU memory
    # (0.6 GiB at 2,440 tokens on a 7B model, for a copy each way; docs/training.md).
    offload_activations: bool = True

    # --- LoRA -------------------------------------------------------------------
    lora_r: int = Field(16, gt=0)
    lora_alpha: int = 32
    # 0, as Unsloth: dropout keeps a masked copy of every LoRA input for the backward, 40 % of a
    # layer's saved activations at 7B (tests/test_training_memory.py), and costs a kernel per projection.
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"  # "all-linear", a list of module names, or "q_proj,v_proj"

    # --- optimisation -----------------------------------------------------------
    optimizer: Literal[OPTIMIZERS] = "paged_adamw_8bit"  # type: ignore[valid-type]  # as method
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = 0.0
    scheduler: Literal[SCHEDULERS] = "cosine"  # type: ignore[valid-type]  # as method
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0)  # overrides warmup_ratio
    max_grad_norm: float = 1.0
    max_nonfinite_steps: int = Field(5, ge=1)  # stop (with an error) after this many NaN/inf steps in a row
    epochs: int = 1
    max_steps: int | None = None
    examples_per_step: int = Field(16, ge=1)  # the optimizer sees the same batches whatever the GPU
    seed: int = 42

    # --- batching and memory --------------------------------------------------------
    layout: Literal[LAYOUTS] = "packed"  # type: ignore[valid-type]  # see docs/training.md
    batch_tokens: int | None = Field(None, ge=16)  # micro-batch token budget; None: the largest the plan allows
    max_batch_tokens: int = 8192  # upper bound for the automatic budget
    row_tokens: int | None = 2560  # packed: longest row (at least the longest example); None: the budget.
    # 2560 was the fastest measured (docs/training.md): one long row pays
    # attention over masked pairs, short rows repeat the prefix
    gpu_memory: str | None = None  # e.g. "15GiB"; default: the GPU's total memory
    group_by_length: bool | None = None  # None: on for padded, off for packed

    # --- output -------------------------------------------------------------------
    output: str = "runs/kner"
    save_every: int = Field(200, ge=0)  # checkpoint every N optimizer steps (0: only at the end)
    keep_checkpoints: int = 2
    eval_every: int = Field(0, ge=0)  # dev loss every N steps (0: only at the end)
    resume: bool = False  # continue from the latest checkpoint in output/checkpoints
    progress: bool = True  # live bar (rich)
    tensorboard: bool = True  # when the tensorboard package is installed

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, v):
        if isinstance(v, str) and v != "all-linear":
            return [m.strip() for m in v.split(",") if m.strip()]
        return v

    @field_validator("layout", mode="before")
    @classmethod
    def _removed_layout(cls, v):
        if v == "prefix_kv":
            raise ValueError(
                "prefix_kv was removed (it ran slower than packed and needed up to 1.6x its planned memory); use packed"
            )
        return v

    @field_validator("gpu_memory", mode="before")
    @classmethod
    def _memory(cls, v):
        if v is None:
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(int(v))
        _as_value_error(parse_bytes, v)
        return v

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        _as_value_error(PromptFormat.from_dict, v)
        return v

    @field_validator("augment")
    @classmethod
    def _augment(cls, v):
        _as_value_error(AugmentConfig.from_dict, v)
        return v

    @model_validator(mode="after")
    def _steps(self):
        if self.epochs < 1 and not (self.max_steps or 0) > 0:
            raise ValueError("epochs must be at least 1 (or set max_steps)")
        return self

    def validate(self) -> TrainConfig:  # type: ignore[override]  # pydantic's is a deprecated classmethod
        """Checks that need the file system (the model folder); the rest was checked on construction."""
        check_model_path(self.model)
        return self

    @property
    def uses_group_by_length(self) -> bool:
        return self.layout == "padded" if self.group_by_length is None else self.group_by_length

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), allow_unicode=True, sort_keys=False), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, d: dict, source: str = "", lines: dict | None = None) -> TrainConfig:
        try:
            return cls.model_validate(d)
        except ValidationError as err:
            raise config_error(err, cls, source, lines) from None

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides) -> TrainConfig:
        """Read ``path`` (YAML) and apply ``overrides`` whose value is not None (flags win over the file)."""
        d, lines = read_yaml(path) if path is not None else ({}, {})
        cfg = cls.from_dict(d, str(path or ""), lines)
        return cfg.replace(**{k: v for k, v in overrides.items() if v is not None})

    def replace(self, **changes) -> TrainConfig:
        """A copy with ``changes`` applied, validated as a whole (keys that were set stay set)."""
        given = {k: getattr(self, k) for k in self.model_fields_set}
        return self.from_dict({**given, **changes}, "")
