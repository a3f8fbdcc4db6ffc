"""The NF4 decode product (Triton) against bitsandbytes' own dequantization.

Runs in Triton's interpreter on the CPU (``TRITON_INTERPRET=1``, in a fresh process: the interpreter
is chosen when Triton is first imported), on the GPU where there is one; skipped without Triton or
bitsandbytes."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent

# (rows, out features, in features, double quantization, tile rows/cols, 64-blocks per step, split-K)
CASES = [
    (1, 96, 256, True, (16, 64, 2, 1)),  # one row; output columns past the last tile masked
    (5, 64, 192, True, (16, 64, 2, 2)),  # 3 blocks: a step's second block past the end; split-K
    (33, 80, 320, False, (32, 32, 1, 4)),  # plain fp32 absmax; 5 blocks over 4 programs
    (20, 64, 128, True, (16, 64, 2, 1)),  # rows across two tiles
]


def layer(n: int, k: int, nested: bool, seed: int):
    """A stand-in for a bitsandbytes ``Linear4bit``: the packed weight, its quant_state, a bias."""
    import bitsandbytes.functional as F

    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen).half()
    # Stored in fp16 when double-quantized (as kner's loader does), in uint8 otherwise (bitsandbytes' default).
    storage = torch.float16 if nested else torch.uint8
    packed, qs = F.quantize_4bit(w, blocksize=64, compress_statistics=nested, quant_type="nf4", quant_storage=storage)
    weight = types.SimpleNamespace(data=packed, quant_state=qs, device=packed.device)
    bias = torch.randn(n, generator=gen).half()
    return types.SimpleNamespace(weight=weight, bias=bias, compute_dtype=torch.float16), F.dequantize_4bit(packed, qs)


def check(case, device: str) -> None:
    from kner.inference import nf4_matmul as nf

    m, n, k, nested, (bm, bn, sub, split) = case
    mod, dense = layer(n, k, nested, seed=m * 7 + n)
    assert nf.applies(mod)
    w = nf.Weight(mod, torch.float16)
    if device == "cuda":
        w = nf.Weight(types.SimpleNamespace(weight=_to_cuda(mod.weight), bias=mod.bias.cuda()), torch.float16)
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(m)) * 0.5).half()
    ref = x.float() @ dense.float().t() + mod.bias.float()
    got = nf.matmul(x.to(device), w, (bm, bn, sub, split, 4, 2)).float().cpu()
    assert got.shape == (m, n)
    torch.testing.assert_close(got, ref, atol=3e-2, rtol=1e-2)


def _to_cuda(weight):
    qs = weight.quant_state
    qs.to("cuda")
    return types.SimpleNamespace(data=weight.data.cuda(), quant_state=qs, device=torch.device("cuda"))


def test_kernel_equals_dequantized_product():
    pytest.importorskip("triton")
    pytest.importorskip("bitsandbytes")
    if torch.cuda.is_available():
        for case in CASES:
            check(case, "cuda")
        return
    code = "import test_nf4_matmul as t\nfor c in t.CASES: t.check(c, 'cpu')\nprint('ok')"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-4000:]


def test_which_layers_the_kernel_takes():
    pytest.importorskip("bitsandbytes")
    from kner.inference import nf4_matmul as nf

    mod, _ = layer(64, 128, True, seed=1)
    assert nf.applies(mod)
    mod.weight.quant_state.quant_type = "fp4"
    assert not nf.applies(mod)
    assert not nf.applies(torch.nn.Linear(4, 4))
    plain = torch.nn.Linear(64, 64)
    assert nf.prepare(list(plain.modules())) == 0  # nothing 4-bit: nothing prepared


def test_cpu_keeps_the_layers_forward():
    """Off the GPU nothing is calibrated, so ``linear`` declines and the layer's forward runs."""
    pytest.importorskip("bitsandbytes")
    from kner.inference import nf4_matmul as nf

    mod, _ = layer(64, 128, True, seed=2)
    mod.__dict__[nf._ATTR] = nf.Weight(mod, torch.float16)
    assert nf.linear(mod, torch.randn(3, 128).half()) is None
