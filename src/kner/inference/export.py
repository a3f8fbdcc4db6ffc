"""``kner export --merge``: fold the LoRA adapter into 16-bit weights for fast serving; ``kner export --hub``:
a folder ready to upload to the Hugging Face Hub (layout in :mod:`kner.model.hub`).

A QLoRA adapter was trained against the NF4-quantized base, ``dequant(W4) + BA``.
Merging it into the original 16-bit base gives ``W16 + BA``, which differs by
the quantization error ``W16 - dequant(W4)``, so the merged model does not
compute exactly what was trained. Two choices:

``--into 16bit`` (default)
    base loaded in 16-bit, adapter merged. Full-precision base weights; outputs
    may drift from the trained model. The drift is *measured* after export on
    sample prompts (share of positions whose greedy next token differs from the
    4-bit base + adapter, and the largest logit difference) and a warning is
    printed when any greedy choice changes.
``--into dequantized``
    base loaded in 4-bit exactly as in training, dequantized to 16-bit, then
    merged: reproduces the trained model up to rounding.

Either way the folder holds ``model/`` (safetensors), ``tokenizer/`` and a
``kner.json`` with ``model_dir`` set, so ``kner predict --model MERGED_DIR``
loads it in 16-bit with no adapter and no bitsandbytes.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from kner.errors import ConfigError, KnerError
from kner.model import compat, hub
from kner.model.artifacts import MANIFEST, ModelManifest
from kner.model.loading import choose_compute_dtype, load_model, load_tokenizer
from kner.model.prompt import PromptEncoder

log = logging.getLogger(__name__)

SAMPLE_TEXTS = (
    "이순신은 1545년 한성 건천동에서 태어났다.",
    "삼성전자는 9일 서울 서초구 본사에서 주주총회를 열었다.",
    "오에 겐자부로는 일본 현대문학의 초석을 놓은 작가 나쓰메 소세키의 대표작 '마음'을 다시 읽었다.",
    "한국은행은 올해 경제성장률을 2.1%로 내다봤다.",
    "세종대왕은 1443년 훈민정음을 창제하였다.",
    "부산 해운대에서 열린 국제영화제에는 20만 명이 다녀갔다.",
    "유엔 안전보장이사회는 지난달 뉴욕에서 긴급회의를 소집했다.",
    "손흥민이 토트넘과 2026년까지 재계약했다.",
)


@dataclass
class MergeCheck:
    positions: int
    differing: int
    max_logit_diff: float
    reference: str

    @property
    def differ_share(self) -> float:
        return self.differing / self.positions if self.positions else 0.0

    def to_dict(self) -> dict:
        return {
            "positions": self.positions,
            "differing": self.differing,
            "differ_share": round(self.differ_share, 6),
            "max_logit_diff": round(self.max_logit_diff, 6),
            "reference": self.reference,
        }


def dequantize_4bit_inplace(model, dtype):
    """Replace every bitsandbytes ``Linear4bit`` by an ``nn.Linear`` holding its dequantized weight."""
    bnb = compat.bitsandbytes()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, bnb.nn.Linear4bit):
                continue
            w = bnb.functional.dequantize_4bit(child.weight.data, child.weight.quant_state).to(dtype)
            new = nn.Linear(
                child.in_features, child.out_features, bias=child.bias is not None, device=w.device, dtype=dtype
            )
            with torch.no_grad():
                new.weight.copy_(w.reshape(child.out_features, child.in_features))
                if child.bias is not None:
                    new.bias.copy_(child.bias.data.to(dtype))
            setattr(parent, name, new)
    # Forget that it was loaded quantized, or transformers refuses to cast or save it as 16-bit.
    for attr, value in (("is_loaded_in_4bit", False), ("hf_quantizer", None), ("quantization_method", None)):
        if attr in model.__dict__ or hasattr(model, attr):
            try:
                setattr(model, attr, value)
            except AttributeError:
                pass
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def _prompt_logits(model, encoder, texts: Sequence[str]):
    """Logits (CPU, fp32) at every non-prefix prompt position of each text."""
    dev = model.get_input_embeddings().weight.device
    out = []
    with torch.no_grad():
        for t in texts:
            enc = encoder.prompt_ids(t)
            ids = torch.tensor([enc.input_ids], device=dev)
            logits = model(input_ids=ids).logits[0, enc.prefix_len - 1 :]
            out.append(logits.float().cpu())
    return out


def _free(model) -> None:
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def export_merged(
    out_dir: str | Path,
    merged_dir: str | Path,
    *,
    into: str = "16bit",
    dtype: str = "auto",
    check_texts: Sequence[str] | None = None,
    overwrite: bool = False,
) -> dict:
    """Merge ``out_dir``'s adapter into 16-bit weights in ``merged_dir``; returns a report (check included)."""
    if into not in ("16bit", "dequantized"):
        raise ConfigError("--into must be 16bit or dequantized")
    out_dir, merged_dir = Path(out_dir), Path(merged_dir)
    man = ModelManifest.load_from(out_dir)
    if man.model_dir or not man.adapter_dir:
        raise KnerError(f"{out_dir} already holds full weights; there is no adapter to merge")
    adapter = out_dir / man.adapter_dir
    if not adapter.is_dir():
        raise KnerError(f"{adapter}: adapter folder not found")
    if merged_dir.exists() and any(merged_dir.iterdir()):
        if not overwrite:
            raise KnerError(f"{merged_dir} is not empty; pass --overwrite to replace it")
        shutil.rmtree(merged_dir)
    save_dtype = (
        choose_compute_dtype(dtype)
        if dtype != "auto"
        else (choose_compute_dtype("auto") if torch.cuda.is_available() else torch.float16)
    )
    # Merge in fp32 on the CPU (exact and safe), in the saving dtype on a GPU.
    work = torch.float32 if not torch.cuda.is_available() else save_dtype
    work_name = str(work).removeprefix("torch.")
    tok_dir = out_dir / man.tokenizer_dir
    tokenizer = load_tokenizer(
        str(tok_dir) if tok_dir.is_dir() else man.load.model,
        trust_remote_code=man.load.trust_remote_code,
        revision=man.load.revision,
    )
    encoder = PromptEncoder(tokenizer, man.prompt, man.scheme)
    texts = list(check_texts) if check_texts else list(SAMPLE_TEXTS)

    if into == "16bit":
        base = load_model(replace(man.load, quantize_4bit=False, compute_dtype=work_name))
        if torch.cuda.is_available():
            base = base.to("cuda")
    else:
        base = load_model(replace(man.load, quantize_4bit=True, compute_dtype=work_name))
        base = dequantize_4bit_inplace(base, work)
    merged = compat.load_adapter(base, adapter).merge_and_unload()
    merged.eval()
    merged_logits = _prompt_logits(merged, encoder, texts)
    with torch.no_grad():  # parameter-wise: Module.to(dtype) also casts fp32 buffers such as rotary tables
        for prm in merged.parameters():
            prm.data = prm.data.to(save_dtype)
    merged.config.dtype = save_dtype
    for attr in ("quantization_config",):
        if hasattr(merged.config, attr):
            delattr(merged.config, attr)
    merged_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(merged_dir / "model", safe_serialization=True)
    tokenizer.save_pretrained(merged_dir / "tokenizer")
    _free(merged)
    del base

    # Reference: the model as trained and as `kner predict` serves the adapter folder.
    ref_desc = "4-bit base + adapter" if man.load.quantize_4bit else "16-bit base + adapter (unmerged)"
    ref = load_model(replace(man.load, compute_dtype=work_name))
    if not man.load.quantize_4bit and torch.cuda.is_available():
        ref = ref.to("cuda")
    ref = compat.load_adapter(ref, adapter).eval()
    ref_logits = _prompt_logits(ref, encoder, texts)
    _free(ref)

    positions = differing = 0
    max_diff = 0.0
    for a, b in zip(merged_logits, ref_logits):
        positions += a.shape[0]
        differing += int((a.argmax(-1) != b.argmax(-1)).sum())
        max_diff = max(max_diff, float((a - b).abs().max()))
    check = MergeCheck(positions, differing, max_diff, ref_desc)
    report = {
        "source": str(out_dir),
        "into": into,
        "dtype": str(save_dtype).removeprefix("torch."),
        "check": check.to_dict(),
    }
    man_out = ModelManifest(
        load=replace(man.load, quantize_4bit=False),
        method=man.method,
        scheme=man.scheme,
        prompt=man.prompt,
        adapter_dir=None,
        model_dir="model",
        tokenizer_dir="tokenizer",
        extra={**man.extra, "merged": report},
    )
    man_out.save(merged_dir)
    return report


# Not published: peft's own card (README.md is kner's), the manifest (rewritten), pickles.
_NOT_PUBLISHED = {"README.md", MANIFEST}


def _publish_files(src: Path, dst: Path, move: bool) -> list[str]:
    names = []
    for f in sorted(src.iterdir()):
        if not f.is_file() or f.name in _NOT_PUBLISHED or any(f.match(p) for p in hub.PICKLE_PATTERNS):
            continue
        if (dst / f.name).exists():
            raise KnerError(f"{f}: a file of that name is already in the Hub folder (from the weights or tokenizer)")
        (shutil.move if move else shutil.copy2)(f, dst / f.name)
        names.append(f.name)
    return names


def _card_dataset(info: hub.CardInfo, run: dict) -> None:
    """The evaluation set's name and Hub id from a `kner run` config, where the user gave none."""
    data = run.get("data") or {}
    name = data.get("dataset") or data.get("format")
    if isinstance(name, str):
        info.dataset_name = info.dataset_name or name
        if not info.datasets and name in hub.HUB_DATASETS:
            info.datasets = [hub.HUB_DATASETS[name]]


def export_hub(
    model_dir: str | Path,
    hub_dir: str | Path,
    *,
    merge: bool = False,
    metrics: str | Path | None = None,
    system: str | None = None,
    base_model: str | None = None,
    license: str = "other",
    language: Sequence[str] = ("ko",),
    datasets: Sequence[str] = (),
    dataset_name: str | None = None,
    split: str = "test",
    tags: Sequence[str] = (),
    repo_id: str | None = None,
    overwrite: bool = False,
    into: str = "16bit",
    dtype: str = "auto",
    check_texts: Sequence[str] | None = None,
) -> dict:
    """Write ``hub_dir``: ``model_dir``'s adapter (merged weights with ``merge``, or its full weights), tokenizer,
    kner.json and a model card whose model-index holds the scores of ``metrics`` (default: found in a
    `kner run` folder whose train/ is ``model_dir``). Returns what was written and any warnings."""
    src, out = Path(model_dir), Path(hub_dir)
    man = ModelManifest.load_from(src)
    if out.resolve() == src.resolve() or out.resolve() in src.resolve().parents:
        raise KnerError(f"{out}: the Hub folder must be a new folder, not {src} or one holding it")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise KnerError(f"{out} is not empty; pass --overwrite to replace it")
        shutil.rmtree(out)
    warnings: list[str] = []
    run = hub.run_config(src.resolve().parent) if src.resolve().name == "train" else {}
    scores_path = Path(metrics) if metrics is not None else hub.find_scores_file(src)
    scores = hub.read_scores(scores_path, system, run) if scores_path is not None else None
    if scores is None:
        warnings.append("no evaluation scores in the card: pass --metrics FILE (metrics.json of `kner evaluate`)")
    base = base_model or (man.load.model if hub.looks_like_repo_id(man.load.model) else None)

    source, source_man, merge_report = src, man, None
    if merge:
        source = out.with_name(f".{out.name}.merging")
        merge_report = export_merged(src, source, into=into, dtype=dtype, check_texts=check_texts, overwrite=True)
        source_man = ModelManifest.load_from(source)
    adapter = source_man.model_dir is None
    weights = source / (source_man.adapter_dir if adapter else source_man.model_dir)  # type: ignore[operator]
    if not weights.is_dir():
        raise KnerError(f"{weights}: {'adapter' if adapter else 'weights'} folder not found")
    hub.require_safetensors(weights)
    if not any(weights.glob("*.safetensors")):
        raise KnerError(f"{weights}: no safetensors weights to publish")
    if adapter and base is None:
        warnings.append(
            f"the adapter's base model is a local path ({man.load.model}); pass --base-model ORG/NAME so that "
            f"others can load it"
        )

    out.mkdir(parents=True, exist_ok=True)
    files = _publish_files(weights, out, move=merge)
    tok_dir = source / source_man.tokenizer_dir
    if tok_dir.is_dir():
        files += _publish_files(tok_dir, out, move=merge)
    else:
        load_tokenizer(
            man.load.model, trust_remote_code=man.load.trust_remote_code, revision=man.load.revision
        ).save_pretrained(out)
    if merge:
        shutil.rmtree(source)
    load = source_man.load
    if base_model is not None:
        load = replace(load, model=base_model)
        cfg = out / "adapter_config.json"
        if adapter and cfg.is_file():  # what peft's AutoPeftModel reads
            d = json.loads(cfg.read_text(encoding="utf-8"))
            d["base_model_name_or_path"] = base_model
            cfg.write_text(json.dumps(d, indent=2), encoding="utf-8")
    extra = dict(source_man.extra)
    if merge_report is not None:  # without the local path it was merged from
        extra["merged"] = {k: v for k, v in merge_report.items() if k != "source"}
    ModelManifest(
        load=load,
        method=man.method,
        scheme=man.scheme,
        prompt=man.prompt,
        adapter_dir="." if adapter else None,
        model_dir=None if adapter else ".",
        tokenizer_dir=".",
        extra=extra,
    ).save(out)

    info = hub.CardInfo(
        model_name=repo_id.split("/")[-1] if repo_id else out.resolve().name,
        method=man.method,
        scheme=man.scheme.name,
        labels=list(man.scheme.names),
        adapter=adapter,
        base_model=base,
        license=license,
        language=list(language),
        datasets=list(datasets),
        tags=list(tags),
        repo_id=repo_id,
        dataset_name=dataset_name,
        split=split,
    )
    _card_dataset(info, run)
    (out / "README.md").write_text(hub.card_text(info, scores), encoding="utf-8")
    return {
        "dir": str(out),
        "weights": "adapter" if adapter else "merged" if merge else "full",
        "files": sorted([*files, "README.md", MANIFEST]),
        "base_model": base,
        "scores": None if scores is None else {"source": str(scores.source), "system": scores.system, **scores.micro},
        "merge": merge_report,
        "warnings": warnings,
    }
