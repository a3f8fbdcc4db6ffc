"""The output folder of ``kner train``: everything inference needs, and nothing remote.

Layout::

    OUT/
      kner.json          # format version, load spec, method, scheme, prompt settings
      adapter/           # PEFT adapter (safetensors)            -- lora / qlora
      model/             # full weights (safetensors)            -- full, or `kner export --merge`
      tokenizer/
      train_config.yaml  # the resolved training config
      metrics.json, log.jsonl, checkpoints/

``kner export --hub`` writes the same manifest with every folder ``"."`` (weights and tokenizer
at the top, as the Hub expects; :mod:`kner.model.hub`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kner.data.schemes import Scheme
from kner.errors import KnerError
from kner.model.loading import LoadSpec
from kner.model.prompt import PromptFormat

FORMAT_VERSION = 1
MANIFEST = "kner.json"


@dataclass
class ModelManifest:
    load: LoadSpec
    method: str
    scheme: Scheme
    prompt: PromptFormat = field(default_factory=PromptFormat)
    adapter_dir: str | None = "adapter"  # relative to the output folder
    model_dir: str | None = None  # full weights, relative; overrides load.model when set
    tokenizer_dir: str = "tokenizer"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "load": asdict(self.load),
            "method": self.method,
            "scheme": self.scheme.to_dict(),
            "prompt": self.prompt.to_dict(),
            "adapter_dir": self.adapter_dir,
            "model_dir": self.model_dir,
            "tokenizer_dir": self.tokenizer_dir,
            "extra": self.extra,
        }

    def save(self, out_dir: str | Path) -> Path:
        p = Path(out_dir) / MANIFEST
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=2), encoding="utf-8")
        return p

    @classmethod
    def load_from(cls, out_dir: str | Path) -> ModelManifest:
        p = Path(out_dir) / MANIFEST
        if not p.is_file():
            raise KnerError(
                f"{out_dir}: not a kner model folder (no {MANIFEST}); pass the output folder of `kner train`"
            )
        d = json.loads(p.read_text(encoding="utf-8"))
        if d.get("format_version") != FORMAT_VERSION:
            raise KnerError(f"{p}: format version {d.get('format_version')} is not supported by this kner")
        return cls(
            load=LoadSpec(**d["load"]),
            method=d["method"],
            scheme=Scheme.from_dict(d["scheme"], str(p)),
            prompt=PromptFormat.from_dict(d.get("prompt")),
            adapter_dir=d.get("adapter_dir"),
            model_dir=d.get("model_dir"),
            tokenizer_dir=d.get("tokenizer_dir", "tokenizer"),
            extra=d.get("extra", {}),
        )
