"""Sweep of a Triton NF4 x fp16 decode product against bitsandbytes (issue 16): is a kernel of ours worth it?

bitsandbytes' 4-bit product at 16-256 rows took 3-5x a plain fp16 product on the benchmark card
(``engine_split.py``'s ``linears_ms``), and a first kernel of ours (64-wide output tiles, 64 programs
for a 4096-wide layer) was 3-15x slower still. This times the kernel over a few tile shapes (narrower
output tiles: more programs; wider K steps; warps and pipeline stages), for each linear shape of
LLaMA-2-7B and row count, next to bitsandbytes and fp16, and checks the products agree.

    python3 benchmarks/nf4_probe.py --out $OUT/nf4_probe.json      # on the GPU machine
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _triton():
    import triton
    import triton.language as tl

    return triton, tl


@dataclass(frozen=True)
class Packed:
    """One 4-bit weight as the kernel reads it (views of bitsandbytes' tensors, no copies)."""

    bytes: torch.Tensor  # (out x in / 2,) uint8: element 2j in the high nibble, 2j+1 in the low one
    absmax: torch.Tensor  # per block of ``blocksize``: fp32, or uint8 codes under double quantization
    code: torch.Tensor  # (16,) fp32: the 4-bit code's values
    code2: torch.Tensor | None  # (256,) fp32: the absmax codes' values (double quantization)
    absmax2: torch.Tensor | None  # fp32 per 256 absmax blocks (double quantization)
    offset: float  # added to every decoded absmax (double quantization)
    out_features: int
    in_features: int
    blocksize: int


def matmul(x, p, block_n=16, block_k=128, warps=4, stages=3, block_m_cap=128):
    m, k = x.shape
    n = p.out_features
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    block_m = max(16, min(block_m_cap, 1 << (m - 1).bit_length()))
    grid = (-(-n // block_n), -(-m // block_m))
    nested = p.code2 is not None
    _kernel()[grid](
        x,
        p.bytes,
        p.absmax,
        p.code2 if nested else p.code,
        p.absmax2 if nested else p.code,
        p.code,
        out,
        m,
        n,
        p.offset,
        x.stride(0),
        K=k,
        NESTED=nested,
        BS=p.blocksize,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        num_warps=warps,
        num_stages=stages,
    )
    return out


def _packed(layer):
    w = layer.weight
    qs = w.quant_state
    n, k = (int(s) for s in qs.shape)
    nested = bool(qs.nested)
    return Packed(
        bytes=w.data.view(torch.uint8).view(-1),
        absmax=qs.absmax,
        code=qs.code.float(),
        code2=qs.state2.code.float() if nested else None,
        absmax2=qs.state2.absmax.float() if nested else None,
        offset=float(qs.offset) if nested else 0.0,
        out_features=n,
        in_features=k,
        blocksize=int(qs.blocksize),
    )


CONFIGS = [  # (block_n, block_k, warps, stages)
    (16, 128, 4, 3),
    (16, 256, 4, 3),
    (32, 128, 4, 3),
    (32, 256, 4, 4),
    (16, 128, 2, 2),
    (32, 128, 8, 3),
    (64, 128, 4, 3),
]


def timed(fn, device, reps=30):
    for _ in range(3):
        fn()
    torch.cuda.synchronize(device)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        ts.append(time.perf_counter() - t)
    return round(statistics.median(ts) * 1e3, 4)


def graphed(fn, device):
    """ms per call replayed from a CUDA graph of 20 calls (as the engine runs decode steps): launch cost out."""
    s = torch.cuda.Stream(device)
    s.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream(device).wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(20):
            fn()
    return round(timed(g.replay, device, reps=10) / 20, 4)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="nf4_probe.json")
    ap.add_argument("--rows", default="16,64,128,256")
    args = ap.parse_args()
    from kner.model.loading import quantize_4bit_inplace

    dev = torch.device("cuda")
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shapes": {}}
    for n, k in ((4096, 4096), (11008, 4096), (4096, 11008)):
        lin = torch.nn.Sequential(torch.nn.Linear(k, n, bias=False, device=dev, dtype=torch.float16))
        lin.config = type("C", (), {})()
        quantize_4bit_inplace(lin, torch.float16)
        layer = lin[0]
        p = _packed(layer)
        w16 = torch.randn(n, k, device=dev, dtype=torch.float16) / k**0.5
        for m in (int(r) for r in args.rows.split(",")):
            x = torch.randn(m, k, device=dev, dtype=torch.float16)
            rec = {}
            with torch.inference_mode():
                ref = layer(x).float()
                rec["bnb"] = timed(lambda: layer(x), dev)
                rec["bnb_graph"] = graphed(lambda: layer(x), dev)
                rec["fp16"] = timed(lambda: torch.nn.functional.linear(x, w16), dev)
                rec["fp16_graph"] = graphed(lambda: torch.nn.functional.linear(x, w16), dev)
                for cfg in CONFIGS:
                    name = "kner_{}_{}_{}_{}".format(*cfg)
                    try:
                        got = matmul(x, p, *cfg)
                        diff = float((got.float() - ref).abs().max())
                        rec[name] = [
                            timed(lambda: matmul(x, p, *cfg), dev),
                            graphed(lambda: matmul(x, p, *cfg), dev),
                            diff,
                        ]
                    except Exception as err:  # noqa: BLE001 -- a config that does not compile is a result
                        rec[name] = repr(err)[:200]
            res["shapes"][f"{n}x{k}@{m}"] = rec
            print(f"{n}x{k}@{m}", json.dumps(rec), flush=True)
            Path(args.out).write_text(json.dumps(res, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


@functools.cache
def _kernel():
    triton, tl = _triton()

    @triton.jit
    def _nf4_matmul_kernel(
        x_ptr,
        w_ptr,
        abs_ptr,
        code2_ptr,
        abs2_ptr,
        code_ptr,
        out_ptr,
        M,
        N,
        offset,
        stride_xm,
        K: tl.constexpr,  # a few values per model (one compile each); lets the compiler plan the K loop
        NESTED: tl.constexpr,
        BS: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        # out[m, n] = sum_k x[m, k] * W[n, k]: a (BLOCK_M, BLOCK_N) tile per program, K in steps of
        # BLOCK_K. Even k sit in the high nibbles, odd k in the low ones: two products of BLOCK_K / 2.
        HALF: tl.constexpr = BLOCK_K // 2
        NB: tl.constexpr = BLOCK_K // BS  # absmax blocks per K step
        rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rj = tl.arange(0, HALF)
        rb = tl.arange(0, NB)
        m_ok = rm < M
        n_ok = rn < N
        rn64 = rn.to(tl.int64)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            wb = tl.load(w_ptr + rn64[:, None] * (K // 2) + (k0 // 2 + rj)[None, :], mask=n_ok[:, None], other=0)
            hi = tl.load(code_ptr + (wb >> 4).to(tl.int32))
            lo = tl.load(code_ptr + (wb & 15).to(tl.int32))
            blk = rn64[:, None] * (K // BS) + (k0 // BS + rb)[None, :]
            if NESTED:
                q = tl.load(abs_ptr + blk, mask=n_ok[:, None], other=0).to(tl.int32)
                scale = tl.load(code2_ptr + q) * tl.load(abs2_ptr + blk // 256, mask=n_ok[:, None], other=0) + offset
            else:
                scale = tl.load(abs_ptr + blk, mask=n_ok[:, None], other=0)
            hi = tl.reshape(tl.reshape(hi, (BLOCK_N, NB, BS // 2)) * scale[:, :, None], (BLOCK_N, HALF))
            lo = tl.reshape(tl.reshape(lo, (BLOCK_N, NB, BS // 2)) * scale[:, :, None], (BLOCK_N, HALF))
            xk = x_ptr + rm[:, None] * stride_xm + (k0 + 2 * rj)[None, :]
            xe = tl.load(xk, mask=m_ok[:, None], other=0.0)
            xo = tl.load(xk + 1, mask=m_ok[:, None], other=0.0)
            acc += tl.dot(xe, tl.trans(hi.to(xe.dtype)))
            acc += tl.dot(xo, tl.trans(lo.to(xo.dtype)))
        o = out_ptr + rm[:, None] * N + rn[None, :]
        tl.store(o, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])

    return _nf4_matmul_kernel


if __name__ == "__main__":
    main()
