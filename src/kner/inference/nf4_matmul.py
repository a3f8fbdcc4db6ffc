"""4-bit (NF4) weights times fp16/bf16 activations for decode-sized batches, in one Triton kernel.

In a decode step of a 4-bit 7B model with a few dozen rows, the linear layers are most of the
GPU time, and each one costs bitsandbytes two passes on the H200 (sm90): dequantize the whole
weight to fp16 (written out), then a cuBLAS product that reads it back. bitsandbytes' own fused
4-bit kernel is only picked there for a handful of rows (its sm90 heuristic). This kernel reads
the packed 4-bit codes once, looks each up in the 16-value code table, multiplies the fp16
activations in, and scales each 64-value block's partial product by its absmax (double-quantized
absmax decoded in the kernel, as bitsandbytes stores it): nothing is written but the output.

Layout read as bitsandbytes stores a ``Linear4bit`` weight (``quant_state.shape`` = (N, K),
row-major, two codes per byte, high nibble first; blocks of 64 along K; ``compress_statistics``
or not). The activations' even and odd columns are the two nibbles' partners, so the kernel never
interleaves codes. Split-K programs add their partial products atomically into an fp32 buffer.

Which path runs is measured, not assumed: :func:`calibrate` times this kernel against
bitsandbytes for a model's linear shapes at the row counts the engine uses, once per process and
GPU, and :func:`linear` takes the kernel only where it was faster (on another card, e.g. a T4 where
bitsandbytes has a tuned sm75 kernel, the answer may differ). Off the GPU, without Triton, or for
anything but NF4 with 64-value blocks, bitsandbytes runs as before.
"""

from __future__ import annotations

import functools
import math
import os
import time

import torch

from kner.inference.paged_attention import kernel_available

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
_ATTR = "_kner_nf4"  # a prepared layer's Weight, in its __dict__
BLOCK = 64  # bitsandbytes' 4-bit blocksize (its default; anything else keeps bitsandbytes)


@functools.cache
def _kernel():
    from kner.inference import nf4_kernel  # noqa: PLC0415  lazy: imports Triton (optional)

    return nf4_kernel.nf4_mm


class Weight:
    """What the kernel reads of one ``Linear4bit``, prepared once (the offset read to the host here,
    not in every call, which would be a device sync)."""

    def __init__(self, module, dtype: torch.dtype):
        qs = module.weight.quant_state
        self.n, self.k = (int(v) for v in qs.shape)
        # The packed bytes, whatever dtype holds them (kner and FSDP-style loading store them as fp16/bf16).
        self.packed = module.weight.data.view(-1).view(torch.uint8)
        self.code = qs.code.float()
        self.nested = bool(qs.nested)
        if self.nested:
            self.absmax, self.code2, self.absmax2 = qs.absmax, qs.state2.code.float(), qs.state2.absmax.float()
            self.offset = float(qs.offset)
        else:
            self.absmax = qs.absmax.float()
            self.code2 = self.absmax2 = self.absmax  # unused
            self.offset = 0.0
        self.bias = module.bias
        self.dtype = dtype


def applies(module) -> bool:
    """Whether ``module`` is a bitsandbytes 4-bit linear layer the kernel can compute (NF4, 64-value
    blocks, double quantization with 256-value blocks or none, K a multiple of 64)."""
    w = getattr(module, "weight", None)
    qs = getattr(w, "quant_state", None)
    if qs is None or getattr(qs, "quant_type", None) != "nf4" or qs.blocksize != BLOCK:
        return False
    if qs.nested and qs.state2.blocksize != 256:
        return False
    return len(qs.shape) == 2 and int(qs.shape[1]) % BLOCK == 0 and w.data.is_contiguous()


# Rows bucket -> (BM rows and BN output columns per tile, SUB 64-value blocks per loop step, programs
# aimed at by the split-K choice, num_warps, num_stages), from the sweep in benchmarks/engine_split.py
# on the H200 (docs/benchmarks.md).
TUNED: dict[int, tuple[int, int, int, int, int, int]] = {
    16: (16, 128, 1, 528, 4, 2),
    32: (32, 128, 1, 528, 4, 2),
    64: (64, 128, 1, 264, 4, 4),
    128: (128, 32, 1, 264, 4, 2),
    256: (128, 32, 1, 264, 4, 2),
}
ROWS = (1, *TUNED)  # rows buckets calibrated; more rows than the last: bitsandbytes (prefill)


def _bucket(m: int) -> int | None:
    for r in ROWS:
        if m <= r:
            return r
    return None


def _config(m: int, n: int) -> tuple[int, int, int, int, int, int]:
    """(BM, BN, SUB, SPLIT_K, num_warps, num_stages) for ``m`` rows and ``n`` output columns."""
    bm, bn, sub, programs, warps, stages = TUNED[max(16, _bucket(m) or max(TUNED))]
    tiles = math.ceil(n / bn) * math.ceil(m / bm)
    split = 1
    while tiles * split * 2 <= programs and split < 16:  # split K until the programs fill the GPU
        split *= 2
    return bm, bn, sub, split, warps, stages


def matmul(x: torch.Tensor, w: Weight, config: tuple[int, ...] | None = None) -> torch.Tensor:
    """``x @ dequantized(w).T (+ bias)`` for 2-D ``x`` (M, K), in ``x``'s dtype."""
    m = x.shape[0]
    bm, bn, sub, split, warps, stages = config or _config(m, w.n)
    if x.stride(-1) != 1:
        x = x.contiguous()
    if split == 1:
        out = torch.empty((m, w.n), dtype=x.dtype, device=x.device)
    else:
        out = torch.zeros((m, w.n), dtype=torch.float32, device=x.device)
    blocks = w.k // BLOCK
    per = math.ceil(math.ceil(blocks / sub) / split) * sub  # whole iterations per program
    grid = (-(-w.n // bn), split, -(-m // bm))
    _kernel()[grid](
        x,
        w.packed,
        w.absmax,
        w.code,
        w.code2,
        w.absmax2,
        w.offset,
        out,
        m,
        w.n,
        w.k,
        x.stride(0),
        out.stride(0),
        per,
        BM=bm,
        BN=bn,
        SUB=sub,
        SPLIT_K=split,
        NESTED=w.nested,
        PIPELINED=not _INTERPRETED,
        num_warps=warps,
        num_stages=stages,
    )
    if split != 1:
        out = out.to(x.dtype)
    if w.bias is not None:
        out += w.bias.to(out.dtype)
    return out


# -- which path: measured per process, GPU and shape ------------------------------------------------


_faster: dict[tuple, bool] = {}  # (device index, dtype, n, k, rows bucket) -> kernel faster than bitsandbytes
_timings: dict[tuple, tuple[float, float]] = {}  # the same keys -> (kernel, bitsandbytes) seconds, as measured
_off: list[str] = []


def linear(module, x: torch.Tensor) -> torch.Tensor | None:
    """The kernel's output for ``module(x)`` where calibration found it faster, else None (the caller
    runs the layer's own forward)."""
    if _off:
        return None
    w = module.__dict__.get(_ATTR)
    if w is None or x.dtype != w.dtype:
        return None
    flat = x.reshape(-1, x.shape[-1])
    r = _bucket(flat.shape[0])
    if r is None or not _faster.get((x.device.index, x.dtype, w.n, w.k, r), False):
        return None
    return matmul(flat, w).view(*x.shape[:-1], w.n)


def _timed(fn, reps: int = 20) -> float:
    """Median seconds of ``fn`` replayed in a CUDA graph (how the engine's decode steps run)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    ts = []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        graph.replay()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) / reps)
    return sorted(ts)[1]


def prepare(layers) -> int:
    """Attach the kernel's view to each eligible 4-bit layer of ``layers`` and calibrate each distinct
    shape (:func:`calibrate`); returns how many layers may use the kernel. Nothing happens on the
    CPU, without Triton, or once the kernel is off."""
    layers = [m for m in layers if applies(m)]
    if _off or not layers or not kernel_available(layers[0].weight.device):
        return 0
    shapes = {}
    for m in layers:
        dtype = getattr(m, "compute_dtype", None) or torch.float16
        if dtype not in (torch.float16, torch.bfloat16):
            continue
        m.__dict__[_ATTR] = w = Weight(m, dtype)
        shapes.setdefault((w.n, w.k, dtype), m)
    try:
        for m in shapes.values():
            calibrate(m)
    except Exception as err:  # noqa: BLE001 -- a kernel that cannot compile or run here: bitsandbytes
        switch_off(err)
        return 0
    return sum(_ATTR in m.__dict__ for m in layers)


def forget(module) -> None:
    """Undo :func:`prepare` for one layer."""
    module.__dict__.pop(_ATTR, None)


def calibrate(module) -> dict[int, tuple[float, float]]:
    """Time the kernel and bitsandbytes on ``module``'s shape at each rows bucket, record which is
    faster; returns {rows: (kernel s, bitsandbytes s)}. The kernel's output is also checked against
    bitsandbytes' (a wrong kernel is switched off, not used)."""
    w = module.__dict__[_ATTR]
    dev, dtype = module.weight.device, w.dtype
    out = {}
    with torch.no_grad():
        for r in ROWS:
            key = (dev.index, dtype, w.n, w.k, r)
            if key in _faster:
                continue
            x = torch.randn((r, w.k), device=dev, dtype=dtype) * 0.1
            ref = _bnb(module, x)
            got = matmul(x, w)
            err = (got.float() - ref.float()).abs().max().item()
            tol = 2e-2 * ref.float().abs().max().item() + 1e-3
            if not err <= tol:
                raise RuntimeError(f"NF4 kernel disagrees with bitsandbytes by {err:.3g} at {r}x{w.k}x{w.n}")
            kt, bt = _timed(lambda: matmul(x, w)), _timed(lambda: _bnb(module, x))
            _faster[key] = kt < bt
            out[r] = _timings[key] = (kt, bt)
    return out


def _bnb(module, x):
    import bitsandbytes as bnb  # noqa: PLC0415  lazy: only on CUDA with a 4-bit model

    return bnb.matmul_4bit(x, module.weight.t(), bias=module.bias, quant_state=module.weight.quant_state)


def switch_off(err: BaseException) -> None:
    import logging  # noqa: PLC0415  only on this rare path

    _off.append(str(err).splitlines()[0] if str(err) else type(err).__name__)
    logging.getLogger("kner.inference").warning(
        "kner's NF4 kernel is off for this process (%s); bitsandbytes computes the 4-bit layers", _off[0]
    )
