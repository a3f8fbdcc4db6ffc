"""benchmarks/decode_step_probe.py on CPU: the engine's decode forward runs from static inputs, and the
fused-RMSNorm lever gives the same logits (the CUDA-graph lever needs a GPU)."""

from __future__ import annotations

import argparse
import shutil

import pytest

probe = pytest.importorskip("decode_step_probe")


def test_probe_runs_and_rmsnorm_keeps_the_logits(tmp_path, llama_dir, monkeypatch):
    shutil.copytree(llama_dir, tmp_path / "tokenizer")
    monkeypatch.setattr(probe.ib, "DATA", tmp_path)
    res = probe.probe(argparse.Namespace(tiny=True, rows=[1, 3], own_tokens=7, steps=2))
    assert res["fused_lora_layers"] > 0 and res["prefix_tokens"] > 0
    for rows in ("1", "3"):
        rec = res["buckets"][rows]
        assert rec["eager_ms"] > 0 and rec["rmsnorm_ms"] > 0
        assert rec["rmsnorm_modules"] == 5  # 2 layers x 2 + the final norm
        assert rec["rmsnorm_max_logit_diff"] < 1e-4
        assert "graph_ok" not in rec  # CPU: no capture attempted
