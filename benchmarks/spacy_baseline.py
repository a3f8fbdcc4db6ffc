"""spaCy baseline on the default KMOU split: train on train, select on dev, score on test.

    nice .venv/bin/python benchmarks/spacy_baseline.py --out runs/spacy-baseline

Writes into ``--out``: the trained pipeline (``model/model-best``), test
predictions in the KMOU scheme (``test.pred.jsonl``), ``results.json`` and
``results.md`` (tables ready for docs/benchmarks.md). Scores are strict
(exact start, end and label) on the original character offsets, so spans the
tokenizer cannot express count as errors. ``--compare-tokenizers`` also
measures how many gold spans each tokenizer can express (no training).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from corpora import default_kmou_split
from kner.baselines.spacy_ner import DEFAULT_TOKENIZER, REPORT_NAME, predict_spacy_with_report, train_spacy
from kner.baselines.tokenization import MODES, alignment_report
from kner.data.example import write_jsonl
from kner.data.schemes import Mapping, load_scheme, map_examples
from kner.evaluation.scoring import evaluate


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def score_table(result, title: str) -> str:
    rows = [
        f"**{title}**",
        "",
        "| label | P | R | F1 | TP | FP | FN | support |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lab in result.labels:
        s = result.per_label[lab]
        rows.append(
            f"| {lab} | {100 * s.precision:.2f} | {100 * s.recall:.2f} | {100 * s.f1:.2f} | "
            f"{s.tp} | {s.fp} | {s.fn} | {s.support} |"
        )
    m = result.micro
    rows.append(
        f"| **micro** | {100 * m['precision']:.2f} | {100 * m['recall']:.2f} | **{100 * m['f1']:.2f}** | "
        f"{m['tp']} | {m['fp']} | {m['fn']} | {m['support']} |"
    )
    ma = result.macro
    rows.append(f"| macro | {100 * ma['precision']:.2f} | {100 * ma['recall']:.2f} | {100 * ma['f1']:.2f} | | | | |")
    return "\n".join(rows)


def result_dict(result) -> dict:
    return {
        "micro": result.micro,
        "macro": {k: v for k, v in result.macro.items()},
        "per_label": {lab: result.per_label[lab].to_dict() for lab in result.labels},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/spacy-baseline"))
    ap.add_argument("--tokenizer", choices=MODES, default=DEFAULT_TOKENIZER)
    ap.add_argument("--unaligned", choices=("expand", "contract", "split"), default="expand")
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="spaCy config override, e.g. training.eval_frequency=1000 (repeatable)",
    )
    ap.add_argument(
        "--compare-tokenizers",
        action="store_true",
        help="also report the share of gold spans each tokenizer cannot express",
    )
    args = ap.parse_args(argv)

    started = dt.datetime.now(dt.timezone.utc)
    split = default_kmou_split()
    train, dev, test = split["train"], split["dev"], split["test"]
    print(f"KMOU default split: train {len(train)}, dev {len(dev)}, test {len(test)} sentences", flush=True)

    alignment = {}
    if args.compare_tokenizers:
        for mode in MODES:
            t0 = time.perf_counter()
            rep = alignment_report(train, mode, args.unaligned)
            alignment[mode] = dict(rep.to_dict(), seconds=round(time.perf_counter() - t0, 2))
            print(f"  {rep.summary()}", flush=True)

    overrides = {}
    for item in args.override:
        key, _, val = item.partition("=")
        overrides[key] = json.loads(val)
    if args.max_epochs is not None:
        overrides["training.max_epochs"] = args.max_epochs
    model_dir = args.out / "model"
    t0 = time.perf_counter()
    best = train_spacy(
        train,
        dev,
        model_dir,
        tokenizer=args.tokenizer,
        config=args.config,
        max_steps=args.max_steps,
        seed=args.seed,
        handling=args.unaligned,
        overrides=overrides,
    )
    total_train_s = time.perf_counter() - t0
    train_report = json.loads((model_dir / REPORT_NAME).read_text(encoding="utf-8"))

    preds, pred_report = predict_spacy_with_report(best, test)
    write_jsonl(args.out / "test.pred.jsonl", preds)
    kmou = load_scheme("kmou")
    native = evaluate(test, preds, kmou.names)
    to19 = Mapping.load("kmou", "spacy19")
    gold19, _ = map_examples(test, to19)
    pred19, _ = map_examples(preds, to19)
    labels19 = [lab for lab in load_scheme("spacy19").names if lab in set(to19.table.values())]
    s19 = evaluate(gold19, pred19, labels19)

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    import kiwipiepy
    import spacy

    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "machine": {
            "cpu": cpu_model(),
            "cores": len(os.sched_getaffinity(0)),
            "load_avg_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "spacy": spacy.__version__,
            "kiwipiepy": kiwipiepy.__version__,
        },
        "split": {k: len(v) for k, v in split.items()},
        "tokenizer": args.tokenizer,
        "unaligned_handling": args.unaligned,
        "alignment_train_all_tokenizers": alignment,
        "alignment": train_report["alignment"],
        "prepare_seconds": train_report["prepare_seconds"],
        "train_seconds": train_report["train_seconds"],
        "train_total_seconds": round(total_train_s, 1),
        "spacy_dev_scores": train_report["dev_scores"],
        "predict_seconds": pred_report["seconds"],
        "test_sentences_per_second": round(len(test) / pred_report["seconds"], 1),
        "test_kmou": result_dict(native),
        "test_spacy19": result_dict(s19),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps(results, ensure_ascii=False, indent=2, default=str), encoding="utf-8"
    )
    md = [
        f"- command: `{results['command']}` (commit {commit}, {results['date']})",
        f"- machine: {results['machine']['cpu']}, {results['machine']['cores']} cores (shared), "
        f"spaCy {spacy.__version__}, kiwipiepy {kiwipiepy.__version__}",
        f"- tokenizer `{args.tokenizer}`, unaligned gold spans: {args.unaligned}; "
        f"train: {train_report['alignment']['train']['unaligned']}/{train_report['alignment']['train']['spans']} "
        f"spans not token-aligned",
        f"- training {train_report['train_seconds'] / 60:.1f} min (+{train_report['prepare_seconds']:.0f} s to build "
        f"DocBins), prediction {len(test)} test sentences in {pred_report['seconds']:.1f} s",
        "",
        score_table(native, "Test, KMOU native labels (strict spans)"),
        "",
        score_table(s19, "Test, mapped to spacy19 with kmou-to-spacy19 (gold and predictions mapped alike)"),
    ]
    (args.out / "results.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
