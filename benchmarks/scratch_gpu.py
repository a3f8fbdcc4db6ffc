"""From-scratch proof run (issue 6): configs/scratch-gpu.yaml through kner.pipeline on one GPU.

    python benchmarks/scratch_gpu.py --data .device/scratch/kmou.jsonl --out $OUT [--limit-train N]

The data is the KMOU corpus converted to canonical JSONL (``kner data convert kmou``);
the pipeline splits it by document with seed 13, which reproduces the default split.
Writes the test-split metrics (kner.evaluation.scoring) and the predictions under --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kner.data.example import read_jsonl  # noqa: E402
from kner.evaluation.scoring import evaluate  # noqa: E402
from kner.pipeline import run, stage_predict  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/scratch-gpu.yaml")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--run-dir", default="/tmp/scratch-gpu")
    ap.add_argument("--limit-train", type=int)
    ap.add_argument("--limit-test", type=int)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--save-every", type=int, help="checkpoint interval (steps); a killed run resumes from the last")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config setting, dotted key, YAML value (e.g. train.lr=3e-4)",
    )
    ap.add_argument(
        "--dev-eval",
        action="store_true",
        help="also predict and score the dev split (choose settings on dev, report test)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    cfg["data"].update({"dataset": "jsonl", "format": "jsonl", "path": args.data})
    if args.limit_train or args.limit_test:
        cfg["data"]["limit"] = {"train": args.limit_train, "test": args.limit_test}
    if args.epochs:
        cfg["train"]["epochs"] = args.epochs
    if args.save_every:
        cfg["train"]["save_every"] = args.save_every
    for item in args.set:
        key, _, value = item.partition("=")
        *path, last = key.split(".")
        node = cfg
        for k in path:
            node = node.setdefault(k, {})
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        node[last] = parsed
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    t0 = time.time()
    summary = run(cfg_path, args.run_dir, stop_after=None if cfg["baseline"]["spacy"].get("enabled") else "predict")
    run_dir = Path(args.run_dir)
    gold = read_jsonl(run_dir / "prepare" / "test.jsonl")
    pred = read_jsonl(run_dir / "predict" / "preds.jsonl")
    res = evaluate(gold, pred)
    train_metrics = json.loads((run_dir / "train" / "metrics.json").read_text())
    result = {
        "elapsed_s": round(time.time() - t0, 1),
        "stages": summary["stages"],
        "train": train_metrics.get("train"),
        "dev": train_metrics.get("dev"),
        "predict": json.loads((run_dir / "predict" / "predict.json").read_text()),
        "metrics": res.to_dict(),
    }
    if args.dev_eval:  # the pipeline's predict stage, on the dev split
        dev_dir = run_dir / "predict-dev"
        dev_dir.mkdir(exist_ok=True)
        stage_predict(cfg.get("predict") or {}, run_dir / "train", run_dir / "prepare" / "dev.jsonl", dev_dir)
        dev_pred = read_jsonl(dev_dir / "preds.jsonl")
        result["dev_metrics"] = evaluate(read_jsonl(run_dir / "prepare" / "dev.jsonl"), dev_pred).to_dict()
        print("dev micro F1", result["dev_metrics"].get("micro"))
    import torch

    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name(0)
        result["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    (out / "scratch_result.json").write_text(json.dumps(result, ensure_ascii=False, indent=2))
    (out / "preds.jsonl").write_bytes((run_dir / "predict" / "preds.jsonl").read_bytes())
    (out / "test.jsonl").write_bytes((run_dir / "prepare" / "test.jsonl").read_bytes())
    print(res.to_markdown())
    print(json.dumps({k: result[k] for k in ("elapsed_s", "stages", "train", "predict")}, indent=1))


if __name__ == "__main__":
    main()
