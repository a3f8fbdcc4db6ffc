"""A 4-bit (NF4/FP4) matrix product for decode steps: the packed weight read once, never dequantized to memory.

At inference bitsandbytes multiplies a few rows by a 4-bit weight either with its own fused kernel or
by dequantizing the whole weight to 16 bits and calling cuBLAS, choosing per GPU and shape. Measured
on the card the benchmarks run on (``benchmarks/engine_split.py``: H200, T4 emulation), a 4096x4096
product at 64 rows took 0.111 ms through bitsandbytes and 0.028 ms as a plain fp16 product; the
dequantized copy (twice the 16-bit weight's bytes written and read back) is most of the gap. The
kernel here loads a tile of packed bytes, looks up the 4-bit codes, scales them by their block's absmax
(itself 8-bit quantized under double quantization, decoded in the kernel as bitsandbytes does), and
multiplies on the tensor cores in fp16 with fp32 accumulation: the same weights as bitsandbytes'
dequantization, the products summed in another order.

:func:`matmul` is used by the fused LoRA forward (:mod:`kner.inference.fused`) for up to
``MAX_ROWS`` rows on CUDA; larger inputs (prefill) keep bitsandbytes' path, where its dequantize +
cuBLAS is efficient. Tested against bitsandbytes' own dequantization in Triton's interpreter.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from kner.inference.paged_attention import _triton, switch_off, triton_usable

MAX_ROWS = 256  # above this (prefills) the dequantized cuBLAS product is as fast: bitsandbytes' own path


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


def kernel_available(device) -> bool:
    return triton_usable(device, "nf4")


def packed(layer) -> Packed | None:
    """The kernel's view of a bitsandbytes ``Linear4bit``, cached on it; None if it cannot run it."""
    got = getattr(layer, "_kner_packed", False)
    if got is not False:
        return got
    got = _packed(layer)
    layer._kner_packed = got
    return got


def _packed(layer) -> Packed | None:
    w = getattr(layer, "weight", None)
    qs = getattr(w, "quant_state", None)
    if qs is None or getattr(qs, "packing_format_for_cpu", False) or len(qs.shape) != 2:
        return None
    n, k = (int(s) for s in qs.shape)
    bs = int(qs.blocksize)
    if k % 128 or bs not in (64, 128) or k % bs:
        return None
    nested = bool(getattr(qs, "nested", False))
    if nested and int(qs.state2.blocksize) != 256:
        return None
    return Packed(
        bytes=w.data.view(torch.uint8).view(-1),
        absmax=qs.absmax,
        code=qs.code.float(),
        code2=qs.state2.code.float() if nested else None,
        absmax2=qs.state2.absmax.float() if nested else None,
        offset=float(qs.offset) if nested else 0.0,
        out_features=n,
        in_features=k,
        blocksize=bs,
    )


def matmul(x: torch.Tensor, p: Packed) -> torch.Tensor:
    """``x @ W.T`` for 16-bit ``x`` of shape (rows, in_features); returns (rows, out_features), x's dtype."""
    m, k = x.shape
    n = p.out_features
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64
    block_n, block_k = 64, 128
    grid = (triton_cdiv(n, block_n), triton_cdiv(m, block_m))
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
        num_warps=4,
        num_stages=3,
    )
    return out


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


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
