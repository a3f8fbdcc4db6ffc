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
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kner import __version__
from kner.config import (
    DataSection,
    ModelSection,
    PredictSection,
    ReportSection,
    RunConfig,
    ScratchSection,
    SpacySection,
    load_run_config,
    section,
)
from kner.data import readers
from kner.data.acquire import locate, sha256
from kner.data.check import check_prepared
from kner.data.example import read_jsonl, write_jsonl
from kner.data.schemes import Mapping, load_scheme, map_examples
from kner.data.splits import split_by_document
from kner.errors import ConfigError
from kner.evaluation.report import compare
from kner.evaluation.scoring import read_for_scoring
from kner.inference import Extractor
from kner.model.prompt import PromptFormat, render_tags
from kner.training.config import TrainConfig

log = logging.getLogger(__name__)

STAGES = ("prepare", "train", "predict", "baseline", "report")


# What a later stage does not read: a training folder's checkpoints (optimizer states, hundreds of MB
# for a 7B adapter) and logs would only make every rerun hash them again.
_NOT_INPUTS = {"stage.json", "checkpoints", "tensorboard", "log.jsonl"}


def _digest_files(paths: list[Path]) -> list[str]:
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
    cfg: RunConfig
    out: Path
    force: tuple[str, ...] = ()
    dry_run: bool = False  # say what each stage would do; run and write nothing
    events: list[dict] = field(default_factory=list)
    _pending: dict[Path, str] = field(default_factory=dict)  # dry run: folder -> stage that would (re)write it

    @staticmethod
    def key(settings: Any, inputs: list[Path]) -> str:
        return hashlib.sha256(
            json.dumps(
                {"settings": settings, "inputs": _digest_files(inputs), "kner": __version__},
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()

    def stage(self, name: str, settings: Any, inputs: list[Path], body: Callable[[Path, bool], None]) -> Path:
        folder = self.out / name
        if self.dry_run:
            return self._plan(name, folder, settings, inputs)
        key = self.key(settings, inputs)
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

    def _plan(self, name: str, folder: Path, settings: Any, inputs: list[Path]) -> Path:
        # An input an earlier stage would rewrite has no digest yet: its key is unknown until then.
        after = sorted(
            {s for p in inputs for f, s in self._pending.items() if p == f or f in p.parents}, key=STAGES.index
        )
        if after:
            status = f"would run (after {', '.join(after)})"
        else:
            marker = folder / "stage.json"
            state = json.loads(marker.read_text()) if marker.is_file() else {}
            same = state.get("key") == self.key(settings, inputs)
            status = (
                "would run (forced)"
                if name in self.force
                else "up to date"
                if same and state.get("done")
                else "would resume"
                if same
                else "would run"
            )
        if status != "up to date":
            self._pending[folder] = name
        self.events.append({"stage": name, "status": status})
        return folder


def run(
    config_path: str | Path,
    output_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    force: tuple[str, ...] = (),
    stop_after: str | None = None,
    dry_run: bool = False,
) -> dict:
    """Run the stages (``dry_run``: only say, per stage, whether it would run); the whole config is checked first."""
    if stop_after is not None and stop_after not in STAGES[:-1]:
        raise ConfigError(f"--stop-after takes one of {', '.join(STAGES[:-1])}, not {stop_after!r}")
    cfg = load_run_config(config_path)
    out = Path(output_dir or cfg.output_dir or Path("runs") / Path(config_path).stem)
    if not dry_run:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(config_path, out / "config.yaml")
    r = Runner(cfg, out, tuple(force), dry_run)
    seed = cfg.seed
    # Stage keys hash the keys the file wrote, not the defaults: kner's version is in every key already.
    prep = r.stage(
        "prepare",
        {"data": cfg.given("data"), "seed": seed},
        [],
        lambda d, _: stage_prepare(cfg.data, d, data_dir, seed),
    )

    if not dry_run:
        check_prepared(prep, log)  # also when prepare was skipped: a bad split stops every rerun before training
    if stop_after == "prepare":
        return _summary(r)
    splits = {k: prep / f"{k}.jsonl" for k in ("train", "dev", "test")}

    model_dir = r.stage(
        "train",
        {"model": cfg.given("model"), "train": cfg.given("train"), "scheme": cfg.data.scheme},
        [splits["train"], splits["dev"]],
        lambda d, resume: stage_train(cfg.model, cfg.train, cfg.data, splits, d, resume, seed),
    )
    if stop_after == "train":
        return _summary(r)

    preds = r.stage(
        "predict",
        cfg.given("predict"),
        [model_dir, splits["test"]],
        lambda d, _: stage_predict(cfg.predict, model_dir, splits["test"], d),
    )
    systems = {cfg.predict.name: preds / "preds.jsonl"}
    if stop_after == "predict":
        return _summary(r)

    if cfg.baseline.spacy.enabled:
        bdir = r.stage(
            "baseline",
            cfg.given("baseline").get("spacy", {}),
            [splits["train"], splits["dev"], splits["test"]],
            lambda d, _: stage_baseline(cfg.baseline.spacy, splits, d, seed),
        )
        systems["spacy"] = bdir / "preds.jsonl"
    if stop_after == "baseline":
        return _summary(r)

    rep = r.stage(
        "report",
        {"report": cfg.given("report"), "systems": sorted(systems)},
        [splits["test"], *systems.values()],
        lambda d, _: stage_report(cfg.report, splits["test"], systems, d),
    )
    summary = _summary(r)
    summary["report"] = str(rep)
    return summary


def _summary(r: Runner) -> dict:
    if r.dry_run:
        return {"output_dir": str(r.out), "stages": r.events, "config": r.cfg}
    (r.out / "run.json").write_text(json.dumps({"stages": r.events}, indent=2))
    return {"output_dir": str(r.out), "stages": r.events}


# ---- stages -----------------------------------------------------------------------------------------------


def stage_prepare(data: DataSection, out: Path, data_dir, seed: int) -> None:
    fmt = data.reader
    path = data.path if data.path is not None else locate(data.dataset or fmt, data_dir)
    res = readers.read_dataset(fmt, path, **data.reader_options)
    examples = res.examples
    report: dict[str, Any] = {"read": len(examples), "problems": len(res.problems), "skipped": res.skipped}
    if (pair := data.mapping()) is not None:
        mapping = Mapping.load(*pair, data.map_file)
        examples, mrep = map_examples(examples, mapping, data.fallback)
        report["mapped"] = {f"{a}->{b}": c for (a, b), c in sorted(mrep.mapped.items())}
        report["dropped"] = dict(mrep.dropped)
    split_seed = data.split.seed if data.split.seed is not None else seed
    parts = split_by_document(examples, tuple(data.split.ratios), split_seed)
    for name, exs in parts.items():
        n = getattr(data.limit, name)
        if n is not None and n < len(exs):
            # A seeded sample, not the head: the head of a split is a few documents only.

            keep = sorted(random.Random(f"{seed}-{name}").sample(range(len(exs)), int(n)))
            exs = [exs[i] for i in keep]
        report[name] = write_jsonl(out / f"{name}.jsonl", exs)
    if res.problems:
        with (out / "problems.tsv").open("w", encoding="utf-8") as f:
            for p in res.problems:
                f.write(f"{p}\n")
    (out / "prepare.json").write_text(json.dumps(report, ensure_ascii=False, indent=2))


def stage_train(
    model_cfg: ModelSection, train_cfg: TrainConfig, data: DataSection, splits: dict, out: Path, resume: bool, seed: int
) -> None:
    from kner.training.recipe import train  # noqa: PLC0415  lazy: imports torch (seconds); a --dry-run or a finished stage needs none

    given = train_cfg.model_fields_set
    scheme = data.target_scheme()
    changes: dict[str, Any] = {"train": str(splits["train"]), "output": str(out), "scheme": scheme, "resume": resume}
    if "seed" not in given:
        changes["seed"] = seed
    if "dev" not in given:
        changes["dev"] = str(splits["dev"])
    model = tokenizer = None
    if model_cfg.from_scratch:
        model, tokenizer = _scratch_model(model_cfg.from_scratch, splits["train"], scheme)
        changes["model"] = "scratch"
    else:
        changes.update(model=model_cfg.base, trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.revision)
    train(train_cfg.replace(**changes), model=model, tokenizer=tokenizer)


def _scratch_model(scratch: ScratchSection, train_path: Path, scheme_name: str):
    from kner.model.scratch import build_scratch_model, prompt_pieces, train_tokenizer  # noqa: PLC0415  lazy: imports transformers (seconds)

    scheme = load_scheme(scheme_name)
    exs = read_jsonl(train_path)
    pf = PromptFormat()
    prefix, suffix = pf.parts(scheme)
    tok = scratch.tokenizer
    pieces = prompt_pieces(prefix, suffix, scheme.names) if tok.kind == "char" and tok.prompt_pieces else []
    tokenizer = train_tokenizer(
        [e.text for e in exs],
        tok.vocab_size,
        extra_texts=[prefix + suffix] * 50 + [render_tags(e.entities) for e in exs],
        kind=tok.kind,
        min_count=tok.min_count,
        pieces=pieces,
    )
    return build_scratch_model(tokenizer, **scratch.arch_settings()), tokenizer


def stage_predict(pred_cfg: PredictSection | dict, model_dir: Path, test_path: Path, out: Path) -> None:
    if isinstance(pred_cfg, dict):  # benchmarks/scratch_gpu.py passes the YAML section
        pred_cfg = section(PredictSection, pred_cfg, "predict")
    # The keys written only: Extractor's own defaults stay the defaults.
    ext = Extractor.load(model_dir, **pred_cfg.model_dump(exclude={"name"}, exclude_unset=True))
    gold = read_jsonl(test_path)
    t0 = time.time()
    preds = ext.predict_examples(gold)
    write_jsonl(out / "preds.jsonl", preds)
    (out / "predict.json").write_text(json.dumps({"sentences": len(preds), "seconds": round(time.time() - t0, 2)}))


def stage_baseline(spacy_cfg: SpacySection, splits: dict, out: Path, seed: int) -> None:
    from kner.baselines.spacy_ner import predict_spacy, train_spacy  # noqa: PLC0415  lazy: imports spaCy (seconds); only the baseline stage

    opts = spacy_cfg.options(seed)
    model = train_spacy(read_jsonl(splits["train"]), read_jsonl(splits["dev"]), out / "model", **opts)
    write_jsonl(out / "preds.jsonl", predict_spacy(model, read_jsonl(splits["test"])))


def stage_report(rep_cfg: ReportSection, test_path: Path, systems: dict[str, Path], out: Path) -> None:
    # As `kner compare` reads them: a duplicate or two-label prediction is scored, not refused.
    gold = read_for_scoring(test_path)
    compare(
        gold, {name: read_for_scoring(p) for name, p in systems.items()}, out, sample=rep_cfg.sample, seed=rep_cfg.seed
    )
