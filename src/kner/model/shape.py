"""A model's dimensions read from its config, and memory sizes: what both memory planners stand on.

The training planner (``kner.training.memory``) and the inference planner
(``kner.inference.memory``) read the same shapes from the same config; memory
sizes given by the user (``--gpu-memory``, ``--max-memory``, ``gpu_memory:``)
are read by one parser so that the same string means the same bytes to every
command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kner.errors import ConfigError

GiB = 2**30


def text_config(config: Any) -> Any:
    """The decoder's config (multimodal and composite configs nest it), else ``config`` itself."""
    try:
        return config.get_text_config(decoder=True)
    except (AttributeError, TypeError):
        return config


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    model_type: str = "?"

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        c = text_config(config)
        try:
            heads = int(c.num_attention_heads)
            hidden = int(c.hidden_size)
            return cls(
                hidden=hidden,
                layers=int(c.num_hidden_layers),
                intermediate=int(c.intermediate_size),
                vocab=int(c.vocab_size),
                heads=heads,
                kv_heads=int(getattr(c, "num_key_value_heads", None) or heads),
                head_dim=int(getattr(c, "head_dim", None) or hidden // heads),
                tied=bool(getattr(c, "tie_word_embeddings", False)),
                model_type=str(getattr(c, "model_type", "?")),
            )
        except (AttributeError, TypeError) as err:
            raise ConfigError(
                f"cannot read model shapes from the config ({err}); only decoder-only LMs are supported"
            ) from None

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer, by the usual module names."""
        d, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {
            "q_proj": (d, q),
            "k_proj": (d, kv),
            "v_proj": (d, kv),
            "o_proj": (q, d),
            "gate_proj": (d, i),
            "up_proj": (d, i),
            "down_proj": (i, d),
        }

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def norm_params(self) -> int:
        return self.hidden * (2 * self.layers + 1)

    @property
    def total_params(self) -> int:
        return self.linear_params + self.embedding_params + self.norm_params

    def lora_params(self, r: int, targets: str | list[str] = "all-linear") -> int:
        shapes = self.linear_shapes()
        names = shapes if targets in ("all-linear", None) else [t for t in targets if t in shapes]
        return self.layers * sum(r * (shapes[n][0] + shapes[n][1]) for n in names)


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "kb": 1e3,
    "m": 1e6,
    "mb": 1e6,
    "g": 1e9,
    "gb": 1e9,
    "t": 1e12,
    "tb": 1e12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(s: str | int | float) -> int:
    """'15GiB' -> 16106127360; '15GB' -> 15e9; plain numbers are bytes."""
    if isinstance(s, (int, float)):
        return int(s)
    t = str(s).strip().lower().replace(" ", "")
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(num) :]
    try:
        return int(float(num) * _UNITS[unit])
    except (ValueError, KeyError):
        raise ConfigError(f"cannot read memory size {s!r}; write e.g. 15GiB or 16GB") from None


def parse_gib(value: str | None, option: str = "--max-memory") -> float | None:
    """A memory option in GiB: a bare number is GiB; a unit is read as :func:`parse_bytes` reads it
    (GiB = 2^30, GB = 10^9), so ``--max-memory 16GB`` and ``--gpu-memory 16GB`` mean the same memory."""
    if value is None:
        return None
    try:
        if re.fullmatch(r"\s*[0-9.]+\s*", value):
            return float(value)
        return parse_bytes(value) / GiB
    except (ConfigError, ValueError):
        raise ConfigError(f"{option} takes GiB, e.g. 15 or 15GiB (or 16GB), not {value!r}") from None
