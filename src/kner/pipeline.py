"""``kner run CONFIG.yaml``: prepare → train → predict → baseline → evaluate/compare.

Each stage writes into its own folder under the run's output folder and ends
by writing ``stage.json`` holding a key: the SHA-256 of the stage's settings,
the digests of its input files and kner's version. A rerun skips every stage
whose key is unchanged; a stage whose key changed runs again (and so do the
stages downstream, whose inputs changed). An interrupted training stage keeps
its checkpoints, and the rerun resumes from them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from kner import __version__
from kner.errors import ConfigError

log = logging.getLogger(__name__)

STAGES = ("prepare", "train", "predict", "baseline", "report")


def load_config(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        cfg = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}{line}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    unknown = set(cfg) - {"name", "output_dir", "seed", "data", "model", "train", "predict", "baseline", "report"}
    if unknown:
        raise ConfigError(f"{p}: unknown top-level keys {sorted(unknown)}")
    return cfg


# What a later stage does not read: a training folder's checkpoints (optimizer states, hundreds of MB
# for a 7B adapter) and logs would only make every rerun hash them again.
_NOT_INPUTS = {"stage.json", "checkpoints", "tensorboard", "log.jsonl"}


def _digest_files(paths: list[Path]) -> list[str]:
    from kner.acquire import sha256

    # A list in input order, not a dict by file name: two stages' "preds.jsonl" must not collide.
    out = []
    for p in paths:
        h = hashlib.sha256()
        files = sorted(f for f in p.rglob("*") if not _NOT_INPUTS & set(f.relative_to(p).parts)) if p.is_dir() else [p]
        for f in files:
            if f.is_file():
                h.update(f.relative_to(p).as_posix().encode() if p.is_dir() else b"")
                h.update(sha256(f).encode())  # streamed: merged 7B weights do not fit in RAM twice
        out.append(h.hexdigest())
    return out


@dataclass
class Runner:
    cfg: dict
    out: Path
    force: tuple[str, ...] = ()
    events: list[dict] = field(default_factory=list)

    def stage(self, name: str, settings: Any, inputs: list[Path], body: Callable[[Path, bool], None]) -> Path:
        folder = self.out / name
        key = hashlib.sha256(json.dumps({"settings": settings, "inputs": _digest_files(inputs),
                                         "kner": __version__}, sort_keys=True, default=str).encode()).hexdigest()
        marker = folder / "stage.json"
        state = json.loads(marker.read_text()) if marker.is_file() else {}
        if state.get("key") == key and state.get("done") and name not in self.force:
            log.info("stage %s: up to date, skipped", name)
            self.events.append({"stage": name, "status": "skipped"})
            return folder
        resume = state.get("key") == key and not state.get("done") and name not in self.force
        if folder.exists() and not resume:
            shutil.rmtree(folder)  # settings or inputs changed: stale outputs must not leak into the new run
        folder.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"key": key, "done": False}))
        t0 = time.time()
        log.info("stage %s: %s", name, "resuming" if resume else "running")
        body(folder, resume)
        elapsed = time.time() - t0
        marker.write_text(json.dumps({"key": key, "done": True, "seconds": round(elapsed, 1)}))
        self.events.append({"stage": name, "status": "resumed" if resume else "ran", "seconds": round(elapsed, 1)})
        return folder


def run(config_path: str | Path, output_dir: str | Path | None = None, data_dir: str | Path | None = None,
        force: tuple[str, ...] = (), stop_after: str | None = None) -> dict:
    cfg = load_config(config_path)
    out = Path(output_dir or cfg.get("output_dir") or Path("runs") / Path(config_path).stem)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(config_path, out / "config.yaml")
    r = Runner(cfg, out, tuple(force))
    seed = int(cfg.get("seed", 13))
    data_cfg = dict(cfg.get("data") or {})
    model_cfg = dict(cfg.get("model") or {})
    train_cfg = dict(cfg.get("train") or {})
    pred_cfg = dict(cfg.get("predict") or {})
    base_cfg = dict(cfg.get("baseline") or {})
    rep_cfg = dict(cfg.get("report") or {})

    prep = r.stage("prepare", {"data": data_cfg, "seed": seed}, [],
                   lambda d, _: stage_prepare(data_cfg, d, data_dir, seed))
    from kner.check import check_prepared
    check_prepared(prep, log)  # also when prepare was skipped: a bad split stops every rerun before training
    if stop_after == "prepare":
        return _summary(r)
    splits = {k: prep / f"{k}.jsonl" for k in ("train", "dev", "test")}

    model_dir = r.stage("train", {"model": model_cfg, "train": train_cfg, "scheme": data_cfg.get("scheme")},
                        [splits["train"], splits["dev"]],
                        lambda d, resume: stage_train(model_cfg, train_cfg, data_cfg, splits, d, resume, seed))
    if stop_after == "train":
        return _summary(r)

    preds = r.stage("predict", pred_cfg, [model_dir, splits["test"]],
                    lambda d, _: stage_predict(pred_cfg, model_dir, splits["test"], d))
    systems = {str(pred_cfg.get("name", "llm")): preds / "preds.jsonl"}

    if (base_cfg.get("spacy") or {}).get("enabled", True):
        spacy_cfg = dict(base_cfg.get("spacy") or {})
        bdir = r.stage("baseline", spacy_cfg, [splits["train"], splits["dev"], splits["test"]],
                       lambda d, _: stage_baseline(spacy_cfg, splits, d, seed))
        systems["spacy"] = bdir / "preds.jsonl"

    rep = r.stage("report", {"report": rep_cfg, "systems": sorted(systems)}, [splits["test"], *systems.values()],
                  lambda d, _: stage_report(rep_cfg, splits["test"], systems, d))
    summary = _summary(r)
    summary["report"] = str(rep)
    return summary


def _summary(r: Runner) -> dict:
    (r.out / "run.json").write_text(json.dumps({"stages": r.events}, indent=2))
    return {"output_dir": str(r.out), "stages": r.events}


# ---- stages -----------------------------------------------------------------------------------------------


def stage_prepare(data_cfg: dict, out: Path, data_dir, seed: int) -> None:
    from kner import readers
    from kner.acquire import SOURCES, locate
    from kner.example import write_jsonl
    from kner.schemes import Mapping, map_examples
    from kner.splits import split_by_document

    fmt = data_cfg.get("format") or data_cfg.get("dataset") or "kmou"
    path = data_cfg.get("path")
    if path is None:
        if data_cfg.get("dataset", fmt) not in SOURCES:
            raise ConfigError(f"data.path is required for dataset {fmt!r} (only {', '.join(SOURCES)} can be fetched)")
        path = locate(data_cfg.get("dataset", fmt), data_dir)
    res = readers.read_dataset(fmt, path, **(data_cfg.get("reader_options") or {}))
    examples = res.examples
    report = {"read": len(examples), "problems": len(res.problems), "skipped": res.skipped}
    scheme = data_cfg.get("scheme") or readers.native_scheme(fmt)
    native = data_cfg.get("map_from") or readers.native_scheme(fmt)
    if native is not None and scheme != native:
        mapping = Mapping.load(native, scheme, data_cfg.get("map_file"))
        examples, mrep = map_examples(examples, mapping, data_cfg.get("fallback"))
        report["mapped"] = {f"{a}->{b}": c for (a, b), c in sorted(mrep.mapped.items())}
        report["dropped"] = dict(mrep.dropped)
    split = data_cfg.get("split") or {}
    parts = split_by_document(examples, tuple(split.get("ratios", (0.8, 0.1, 0.1))), int(split.get("seed", seed)))
    limits = data_cfg.get("limit") or {}
    for name, exs in parts.items():
        n = limits.get(name)
        if n is not None and n < len(exs):
            # A seeded sample, not the head: the head of a split is a few documents only.
            import random
            keep = sorted(random.Random(f"{seed}-{name}").sample(range(len(exs)), int(n)))
            exs = [exs[i] for i in keep]
        report[name] = write_jsonl(out / f"{name}.jsonl", exs)
    if res.problems:
        with (out / "problems.tsv").open("w", encoding="utf-8") as f:
            for p in res.problems:
                f.write(f"{p}\n")
    (out / "prepare.json").write_text(json.dumps(report, ensure_ascii=False, indent=2))


def stage_train(model_cfg: dict, train_cfg: dict, data_cfg: dict, splits: dict, out: Path, resume: bool,
                seed: int) -> None:
    from kner.training.config import TrainConfig
    from kner.training.recipe import train

    settings = dict(train_cfg)
    settings.setdefault("seed", seed)
    settings["train"] = str(splits["train"])
    settings.setdefault("dev", str(splits["dev"]))
    settings["output"] = str(out)
    settings["scheme"] = data_cfg.get("scheme", "spacy19")
    settings["resume"] = resume
    model = tokenizer = None
    scratch = model_cfg.get("from_scratch")
    if scratch:
        model, tokenizer = _scratch_model(scratch, splits["train"], data_cfg.get("scheme", "spacy19"))
        settings["model"] = "scratch"
    else:
        settings["model"] = model_cfg.get("base", "meta-llama/Llama-2-7b-hf")
        for k in ("trust_remote_code", "revision"):
            if k in model_cfg:
                settings[k] = model_cfg[k]
    train(TrainConfig.from_dict(settings), model=model, tokenizer=tokenizer)


def _scratch_model(scratch: dict, train_path: Path, scheme_name: str):
    from kner.example import read_jsonl
    from kner.prompt import PromptFormat, render_tags
    from kner.schemes import load_scheme
    from kner.scratch import build_scratch_model, prompt_pieces, train_tokenizer

    scheme = load_scheme(scheme_name)
    exs = read_jsonl(train_path)
    pf = PromptFormat()
    prefix, suffix = pf.parts(scheme)
    tok_cfg = dict(scratch.get("tokenizer") or {})
    kind = str(tok_cfg.get("kind", "bpe"))
    pieces = prompt_pieces(prefix, suffix, scheme.names) \
        if kind == "char" and tok_cfg.get("prompt_pieces", True) else []
    tokenizer = train_tokenizer([e.text for e in exs], int(tok_cfg.get("vocab_size", 4000)),
                                extra_texts=[prefix + suffix] * 50 + [render_tags(e.entities) for e in exs],
                                kind=kind, min_count=int(tok_cfg.get("min_count", 2)), pieces=pieces)
    arch = {k: v for k, v in scratch.items() if k != "tokenizer"}
    return build_scratch_model(tokenizer, **arch), tokenizer


def stage_predict(pred_cfg: dict, model_dir: Path, test_path: Path, out: Path) -> None:
    from kner.example import read_jsonl, write_jsonl
    from kner.inference import Extractor

    opts = {k: v for k, v in pred_cfg.items() if k != "name"}
    ext = Extractor.load(model_dir, **opts)
    gold = read_jsonl(test_path)
    t0 = time.time()
    preds = ext.predict_examples(gold)
    write_jsonl(out / "preds.jsonl", preds)
    (out / "predict.json").write_text(json.dumps({"sentences": len(preds), "seconds": round(time.time() - t0, 2)}))


def stage_baseline(spacy_cfg: dict, splits: dict, out: Path, seed: int) -> None:
    from kner.baselines.spacy_ner import predict_spacy, train_spacy
    from kner.example import read_jsonl, write_jsonl

    opts = {k: v for k, v in spacy_cfg.items() if k != "enabled"}
    opts.setdefault("seed", seed)
    model = train_spacy(read_jsonl(splits["train"]), read_jsonl(splits["dev"]), out / "model", **opts)
    write_jsonl(out / "preds.jsonl", predict_spacy(model, read_jsonl(splits["test"])))


def stage_report(rep_cfg: dict, test_path: Path, systems: dict[str, Path], out: Path) -> None:
    from kner.example import read_jsonl
    from kner.report import compare

    gold = read_jsonl(test_path)
    compare(gold, {name: read_jsonl(p) for name, p in systems.items()}, out,
            sample=int(rep_cfg.get("sample", 20)), seed=int(rep_cfg.get("seed", 0)))
