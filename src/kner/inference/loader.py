"""Model, tokenizer, scheme and prompt for :meth:`kner.inference.Extractor.load`; adapter dtype matching.

Resolves a ``kner train``/``kner export`` folder (its ``kner.json``), a Hub repo with one, or a base
model plus a LoRA adapter folder, refusing pickled weights unless allowed, before the minutes of
loading a base model.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from kner.data.schemes import Scheme, load_scheme
from kner.errors import ConfigError, KnerError
from kner.model import compat, hub
from kner.model.artifacts import MANIFEST, ModelManifest
from kner.model.loading import LoadSpec, load_model, load_tokenizer
from kner.model.prompt import PromptFormat


def load_parts(
    path: str | Path,
    *,
    adapter: str | Path | None = None,
    scheme: str | Scheme | None = None,
    prompt: PromptFormat | None = None,
    quantize_4bit: bool | None = None,
    compute_dtype: str | None = None,
    allow_pickle: bool = False,
) -> tuple[Any, Any, Scheme, PromptFormat]:
    """``(model, tokenizer, scheme, prompt)`` for :meth:`kner.inference.Extractor.load` (same arguments)."""
    path = Path(path) if not isinstance(path, Path) else path
    adapter_dir: Path | None = Path(adapter) if adapter else None
    repo_id = None
    if not (path / MANIFEST).is_file() and hub.looks_like_repo_id(path):
        local = hub.fetch(str(path), allow_pickle=allow_pickle)
        if local is not None:
            repo_id, path = str(path), local
    if (path / MANIFEST).is_file():
        man = ModelManifest.load_from(path)
        if repo_id is not None:
            hub.refuse_remote_code(repo_id, man.load.trust_remote_code)
        if scheme is not None and load_scheme(scheme).names != man.scheme.names:
            raise ConfigError(
                f"{path} was trained with scheme {man.scheme.name!r}; "
                f"predicting with {load_scheme(scheme).name!r} would misread its labels"
            )
        sch, pr, spec = man.scheme, prompt or man.prompt, man.load
        tok_dir = path / man.tokenizer_dir
        tok_src = str(tok_dir) if tok_dir.is_dir() else spec.model
        if man.model_dir:
            spec = replace(spec, model=str(path / man.model_dir))
        elif adapter_dir is None and man.adapter_dir and (path / man.adapter_dir).is_dir():
            adapter_dir = path / man.adapter_dir
    else:
        name = str(path)
        if not path.exists() and (name.startswith(("/", ".", "~")) or name.count("/") != 1):
            raise KnerError(f"{path}: no such model folder (and not a hub id like 'org/name')")
        sch = load_scheme(scheme or "spacy19")
        pr = prompt or PromptFormat()
        spec = LoadSpec(model=str(path))
        tok_src = str(adapter_dir) if adapter_dir and (adapter_dir / "tokenizer_config.json").is_file() else str(path)
    if quantize_4bit is not None:
        spec = replace(spec, quantize_4bit=quantize_4bit)
    if compute_dtype is not None:
        spec = replace(spec, compute_dtype=compute_dtype)
    if adapter_dir is not None and not adapter_dir.is_dir():
        raise KnerError(f"{adapter_dir}: adapter folder not found")
    if adapter_dir is not None:  # before the base model's minutes of loading
        hub.require_safetensors(adapter_dir, allow_pickle)
    tokenizer = load_tokenizer(tok_src, trust_remote_code=spec.trust_remote_code, revision=spec.revision)
    model = load_model(spec, allow_pickle=allow_pickle)
    if not spec.quantize_4bit:
        import torch  # noqa: PLC0415  lazy: torch; kner.config imports kner.inference

        if torch.cuda.is_available():
            model = model.to("cuda")
    if adapter_dir is not None:
        try:
            model = compat.load_adapter(model, adapter_dir)
        except (OSError, ValueError) as err:
            raise KnerError(f"cannot load adapter {adapter_dir}: {str(err).splitlines()[0]}") from None
    model.eval()
    return model, tokenizer, sch, pr


def match_adapter_dtype(model) -> int:
    """Cast fp32 LoRA weights to the 16-bit dtype the model computes in; returns how many tensors changed.

    peft keeps adapters in fp32 on a 16-bit base, so every LoRA layer casts its
    input up and its output down: two extra kernels per linear layer per step,
    a large share of a decode step's launch overhead. In 16-bit the adapter's
    contribution changes by rounding only (as in a merged 16-bit model).
    """
    import torch  # noqa: PLC0415  lazy: torch; kner.config imports kner.inference

    try:
        target = model.get_input_embeddings().weight.dtype
    except AttributeError:
        return 0
    if target not in (torch.float16, torch.bfloat16):
        return 0
    n = 0
    for name, prm in model.named_parameters():
        if "lora_" in name and prm.dtype == torch.float32:
            prm.data = prm.data.to(target)
            n += 1
    return n
