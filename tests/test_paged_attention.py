"""The decode attention kernel (Triton) against the general path it replaces on CUDA.

Runs in Triton's interpreter on the CPU (``TRITON_INTERPRET=1``, numpy underneath; the test extra
installs Triton), on the GPU where there is one; skipped where Triton is not installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kner.inference import paged_attention as pa

HERE = Path(__file__).resolve().parent


def reference(q, pk, pv, kpool, vpool, table, lens, block, scale):
    """Softmax over [prefix keys, the row's own keys] per row and head, one at a time (fp32)."""
    b, h, _, d = q.shape
    g = h // pk.shape[1]
    k_own, v_own = pa.gathered(kpool, vpool, table, block)
    out = torch.empty(b, 1, h, d)
    for r in range(b):
        for hd in range(h):
            kv, n = hd // g, int(lens[r])
            keys = torch.cat([pk[0, kv], k_own[r, kv, :n]]).float()
            vals = torch.cat([pv[0, kv], v_own[r, kv, :n]]).float()
            out[r, 0, hd] = torch.softmax(keys @ q[r, hd, 0].float() * scale, 0) @ vals
    return out


CASES = [(5, 4, 4, 32, 7, 16), (3, 8, 2, 64, 0, 16), (4, 4, 2, 16, 20, 8), (2, 2, 1, 16, 3, 2)]


def check(case, device: str) -> None:
    """One case: grouped-query heads, no prefix, rows of 1 key to a full table, blocks in any order, the
    block table wider than a row needs and a row's last block part-filled: the kernel stops at each length."""
    rows, heads, kv_heads, head_dim, prefix, block = case
    gen = torch.Generator().manual_seed(rows * 100 + heads)
    dt = torch.float16 if device == "cuda" else torch.float32
    blocks, width = 40, 6
    kpool, vpool = (torch.randn(kv_heads, blocks * block, head_dim, generator=gen) for _ in range(2))
    pk, pv = (torch.randn(1, kv_heads, prefix, head_dim, generator=gen) for _ in range(2))
    kpool[:, -1] = float("nan")  # a slot past every row's length: never read
    table = torch.randperm(blocks - 1, generator=gen)[: rows * width].view(rows, width).to(torch.int32)
    lens = torch.tensor([1, width * block, 17, 33, 5][:rows]).clamp(max=width * block)
    q = torch.randn(rows, heads, 1, head_dim, generator=gen)
    scale = head_dim**-0.5
    ref = reference(q, pk, pv, kpool, vpool, table, lens, block, scale)
    dev = torch.device(device)
    args = [t.to(dev, dt) for t in (q, pk, pv, kpool, vpool)] + [table.to(dev), lens.to(dev)]
    got = pa.decode_attention(*args, block, scale).float().cpu()
    assert got.shape == (rows, 1, heads, head_dim)
    torch.testing.assert_close(got, ref, atol=2e-3 if dt == torch.float16 else 1e-5, rtol=1e-3)


def test_kernel_equals_softmax_over_prefix_and_own_blocks():
    """On the GPU directly; on the CPU in Triton's interpreter, in a fresh process: the interpreter is
    chosen when Triton is first imported, which another test may already have done here."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        for case in CASES:
            check(case, "cuda")
        return
    code = "import test_paged_attention as t\nfor c in t.CASES: t.check(c, 'cpu')\nprint('ok')"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-4000:]


def test_which_models_the_kernel_covers():
    from transformers import AutoConfig

    common = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1)
    assert pa.model_supported(AutoConfig.for_model("llama", **common))
    assert pa.model_supported(AutoConfig.for_model("qwen2", use_sliding_window=False, **common))
    assert not pa.model_supported(AutoConfig.for_model("mistral", sliding_window=24, **common))
    assert not pa.model_supported(AutoConfig.for_model("gemma2", attn_logit_softcapping=50.0, **common))
    assert not pa.model_supported(AutoConfig.for_model("llama", hidden_size=80, num_attention_heads=4))  # head 20
    assert not pa.kernel_available("cpu")


def test_a_kernel_that_fails_leaves_the_run_to_the_gathering_path(monkeypatch, caplog):
    """A GPU or Triton build the kernel does not compile on: the step still gets the right attention
    (the general path), the process says so once, and later steps go straight to the general path."""
    from types import SimpleNamespace

    from kner.inference import prefix_cache

    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("PassManager::run failed\nmore detail")

    monkeypatch.setattr(pa, "_off", [])
    monkeypatch.setattr(pa, "_triton", lambda: object())  # "installed"
    monkeypatch.setattr(pa, "_capability", lambda index: (7, 5))
    monkeypatch.setattr(pa, "decode_attention", broken)
    gen = torch.Generator().manual_seed(0)
    rows, heads, d, block, width = 3, 2, 16, 4, 3
    kpool, vpool = (torch.randn(heads, 12 * block, d, generator=gen) for _ in range(2))
    pk, pv = (torch.randn(1, heads, 5, d, generator=gen) for _ in range(2))
    table = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]], dtype=torch.int32)
    lens = torch.tensor([1, 6, 12])
    q = torch.randn(rows, heads, 1, d, generator=gen)
    keys = torch.arange(width * block)
    mask = (keys[None] < lens[:, None])[:, None, None, :]
    state = SimpleNamespace(layers=[SimpleNamespace(pk=pk, pv=pv)], positions=None)
    state.op = ("decode", None, table, lens, block)
    module = SimpleNamespace(layer_idx=0)
    monkeypatch.setattr(prefix_cache._active, "cache", state, raising=False)
    monkeypatch.setattr(pa, "kernel_applies", lambda *a: pa.kernel_available("cuda:0"))
    with caplog.at_level("WARNING", logger="kner.inference"):
        first, _ = prefix_cache.shared_prefix_attention(module, q, kpool[None], vpool[None], mask, scaling=d**-0.5)
        again, _ = prefix_cache.shared_prefix_attention(module, q, kpool[None], vpool[None], mask, scaling=d**-0.5)
    ref = reference(q, pk, pv, kpool, vpool, table, lens, block, d**-0.5)
    torch.testing.assert_close(first, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, ref, atol=1e-5, rtol=1e-5)
    assert len(calls) == 1 and pa._off == ["PassManager::run failed"]
    assert [r.message for r in caplog.records].count(
        "kner's paged attention kernel is off for this process (PassManager::run failed); gathering the K/V instead"
    ) == 1
