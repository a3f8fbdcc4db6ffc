"""`kner run`: every stage runs once, reruns skip, changed settings rerun downstream, training resumes."""

import json
from pathlib import Path

import pytest
import yaml

from kner.pipeline import run

# The KMOU fixture (15 documents): 80/10/10 by document leaves 13 test sentences, enough for the limits.
KMOU_FIXTURE = Path(__file__).parent / "fixtures" / "kmou" / "corpus"
TINY = {
    "name": "tiny",
    "seed": 13,
    "data": {
        "format": "kmou",
        "path": str(KMOU_FIXTURE),
        "scheme": "spacy19",
        "map_from": "kmou",
        "limit": {"train": 40, "dev": 8, "test": 12},
    },
    "model": {
        "from_scratch": {
            "arch": "llama",
            "hidden": 32,
            "layers": 1,
            "heads": 2,
            "max_positions": 1024,
            "tokenizer": {"vocab_size": 600},
        }
    },
    "train": {
        "method": "full",
        "compute_dtype": "fp32",
        "epochs": 1,
        "examples_per_step": 8,
        "lr": 1e-3,
        "batch_tokens": 4096,
        "gradient_checkpointing": False,
        "optimizer": "adamw",
        "save_every": 2,
        "progress": False,
        "tensorboard": False,
    },
    "predict": {"constrained": True},
    "baseline": {"spacy": {"enabled": True, "tokenizer": "char", "max_steps": 10}},
    "report": {"sample": 5},
}


def _write(tmp_path: Path, cfg: dict) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return p


def _status(summary: dict) -> dict:
    return {e["stage"]: e["status"] for e in summary["stages"]}


@pytest.mark.slow
def test_run_skips_finished_stages_and_reruns_what_changed(tmp_path):
    out = tmp_path / "run"
    first = run(_write(tmp_path, TINY), out)
    assert _status(first) == dict.fromkeys(["prepare", "train", "predict", "baseline", "report"], "ran")
    report = json.loads((out / "report" / "report.json").read_text())
    assert set(report["systems"]) == {"llm", "spacy"}
    preds = [json.loads(l) for l in (out / "predict" / "preds.jsonl").read_text().splitlines()]
    gold = [json.loads(l) for l in (out / "prepare" / "test.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == [g["id"] for g in gold] and len(gold) == 12
    for p in preds:  # constrained decoding: every entity is a real span of the input
        assert all(p["text"][e["start"] : e["end"]] == e["text"] for e in p["entities"])

    again = run(_write(tmp_path, TINY), out)
    assert set(_status(again).values()) == {"skipped"}

    changed = json.loads(json.dumps(TINY))
    changed["report"]["sample"] = 3
    st = _status(run(_write(tmp_path, changed), out))
    assert st["train"] == "skipped" and st["baseline"] == "skipped" and st["report"] == "ran"

    changed["train"]["lr"] = 2e-3  # new model: predictions follow, the baseline does not
    before = (out / "predict" / "preds.jsonl").read_bytes()
    st = _status(run(_write(tmp_path, changed), out))
    assert {k: st[k] for k in ("prepare", "train", "predict", "baseline")} == {
        "prepare": "skipped",
        "train": "ran",
        "predict": "ran",
        "baseline": "skipped",
    }
    # The report is keyed by the prediction files' contents, not by the model that made them.
    same = (out / "predict" / "preds.jsonl").read_bytes() == before
    assert st["report"] == ("skipped" if same else "ran")


@pytest.mark.slow
def test_interrupted_training_resumes_from_its_checkpoint(tmp_path):
    cfg = json.loads(json.dumps(TINY))
    cfg["baseline"]["spacy"]["enabled"] = False
    out = tmp_path / "run"
    run(_write(tmp_path, cfg), out, stop_after="train")
    log = [json.loads(l) for l in (out / "train" / "log.jsonl").read_text().splitlines()]
    losses = {e["step"]: e["loss"] for e in log if e.get("event") == "step"}
    # Simulate a kill after the step-2 checkpoint: the marker says "not done", later checkpoints vanish.
    marker = out / "train" / "stage.json"
    state = json.loads(marker.read_text())
    marker.write_text(json.dumps({"key": state["key"], "done": False}))
    ckpts = sorted((out / "train" / "checkpoints").iterdir())
    assert ckpts, "training wrote no checkpoint"
    keep = [c for c in ckpts if c.name.endswith("2")] or ckpts[:1]
    for c in ckpts:
        if c not in keep:
            import shutil

            shutil.rmtree(c)
    st = _status(run(_write(tmp_path, cfg), out, stop_after="train"))
    assert st["train"] == "resumed"
    log2 = [json.loads(l) for l in (out / "train" / "log.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "resume" and e["step"] > 0 for e in log2)
    resumed = {e["step"]: e["loss"] for e in log2 if e.get("event") == "step"}
    for step, loss in resumed.items():
        assert loss == pytest.approx(losses[step], abs=1e-6), step


def test_stop_after_each_stage_stops_there(tmp_path, monkeypatch):
    # The stage bodies are replaced by stand-ins that leave their output file: only the stopping is tested.
    import kner.pipeline as pipeline

    ran = []

    def fake(name, output):
        def body(*args):
            ran.append(name)
            out = [a for a in args if isinstance(a, Path) and not a.suffix][-1]  # the stage's own folder
            (out / output).write_text("", encoding="utf-8")

        return body

    monkeypatch.setattr(pipeline, "stage_train", fake("train", "model.txt"))
    monkeypatch.setattr(pipeline, "stage_predict", fake("predict", "preds.jsonl"))
    monkeypatch.setattr(pipeline, "stage_baseline", fake("baseline", "preds.jsonl"))
    monkeypatch.setattr(pipeline, "stage_report", fake("report", "report.json"))
    cfg = _write(tmp_path, TINY)
    for stop, expected in [
        ("prepare", []),
        ("train", ["train"]),
        ("predict", ["train", "predict"]),
        ("baseline", ["train", "predict", "baseline"]),
    ]:
        ran.clear()
        summary = run(cfg, tmp_path / "run", force=("train", "predict", "baseline"), stop_after=stop)
        assert ran == expected, stop
        assert list(_status(summary)) == ["prepare", *expected]


def test_stop_after_an_unknown_stage_is_refused_before_any_work(tmp_path):
    from kner.errors import ConfigError

    with pytest.raises(ConfigError, match="--stop-after takes one of prepare, train, predict, baseline, not 'eval'"):
        run(_write(tmp_path, TINY), tmp_path / "run", stop_after="eval")
    assert not (tmp_path / "run").exists()
