"""benchmarks/unsloth_side_by_side.py on CPU: the kner side runs end to end, variants get their own folder,
and the objective check (the same examples' loss before any update) agrees across kner's variants."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kner.data.example import Entity, Example, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "unsloth_side_by_side.py"

sbs = pytest.importorskip("unsloth_side_by_side")


def _examples(n: int) -> list[Example]:
    out = []
    for i in range(n):
        name = ["이순신", "세종", "장영실"][i % 3]
        text = f"{name}은 조선의 인물이다 {i}"
        out.append(
            Example(
                f"s{i}", text, [Entity(0, len(name), "PER", name), Entity(len(name) + 2, len(name) + 4, "GPE", "조선")]
            )
        )
    return out


def test_kner_side_and_a_variant_on_cpu(tmp_path, llama_dir):
    data = tmp_path / "train.jsonl"
    write_jsonl(data, _examples(24))
    out = tmp_path / "sbs.json"
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--n", "24", "--modes", "t4", "--data", str(data)]
    cmd += ["--tokenizer", str(llama_dir), "--work", str(tmp_path / "work"), "--out", str(out)]
    cmd += ["--sides", "kner,kner:lora_dropout=0;examples_per_step=8,kner:no_such_key=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    base, variant, bad = (
        runs["t4_kner"],
        runs["t4_kner:lora_dropout=0;examples_per_step=8"],
        runs["t4_kner:no_such_key=1"],
    )
    assert base["ok"] and variant["ok"], (base, variant)
    assert base["examples_per_step"] == 16 and variant["examples_per_step"] == 8
    assert variant["steps"] == 3 and base["steps"] == 2  # 24 examples, one epoch
    assert base["first_batch_loss"] == pytest.approx(variant["first_batch_loss"], rel=1e-6)
    assert base["examples_per_s"] > 0 and base["answer_tokens_per_s"] > 0
    assert not bad["ok"] and "no_such_key" in bad["stderr_tail"]
    assert json.loads(out.read_text())["summary"]["kner_examples_per_s"] == round(base["examples_per_s"], 2)
    assert sorted(p.name for p in (tmp_path / "work").glob("kner_t4*")) == [
        "kner_t4",
        "kner_t4_lora_dropout0_examples_per_step8",
    ]


def test_overrides_parse():
    assert sbs._overrides("kner") == {}
    assert sbs._overrides("kner:batch_tokens=4096;lora_dropout=0") == {"batch_tokens": "4096", "lora_dropout": "0"}
