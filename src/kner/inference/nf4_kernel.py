"""The Triton kernel of :mod:`kner.inference.nf4_matmul` (imported only where Triton is installed).

Module-level functions, because a Triton kernel resolves the functions it calls among its globals.
"""

import triton
import triton.language as tl


@triton.jit
def _step(acc, x_ptr, w_ptr, a_ptr, code_ptr, code2_ptr, a2_ptr, offset, rm, rn, mm, nm, K, sxm, b, NESTED):
    """One 64-value block of K: the block's weights decoded as bitsandbytes does (code x absmax, rounded
    to the activations' dtype), then one product into ``acc``. The decoding costs the same for any
    number of rows; only the activations' load and the product grow with them."""
    blocks = K // 64
    ok = b < blocks
    x = tl.load(x_ptr + rm[:, None] * sxm + (b * 64 + tl.arange(0, 64))[None, :], mask=mm[:, None] & ok, other=0.0)
    wb = tl.load(w_ptr + rn[:, None] * (K // 2) + (b * 32 + tl.arange(0, 32))[None, :], mask=nm[:, None] & ok, other=0)
    blk = rn * blocks + b
    if NESTED:
        q = tl.load(a_ptr + blk, mask=nm & ok, other=0).to(tl.int32)
        scale = tl.load(code2_ptr + q) * tl.load(a2_ptr + blk // 256, mask=nm & ok, other=0.0) + offset
    else:
        scale = tl.load(a_ptr + blk, mask=nm & ok, other=0.0)
    hi = tl.load(code_ptr + (wb >> 4))  # fp32 code values of the even and the odd columns
    lo = tl.load(code_ptr + (wb & 15))
    w = tl.reshape(tl.join(hi, lo), (hi.shape[0], 64))  # back in column order: (BN, 64)
    w = (w * scale[:, None]).to(x.dtype)
    return tl.dot(x, tl.trans(w), acc)


@triton.jit(do_not_specialize=["M"])  # one compiled kernel for every row count (none inside a graph capture)
def nf4_mm(
    x_ptr,  # (M, K) activations, row stride sxm
    w_ptr,  # (N * K / 2,) uint8: two 4-bit codes per byte, high nibble first
    a_ptr,  # (N * K / 64,) absmax: uint8 codes if NESTED, else fp32
    code_ptr,  # (16,) fp32: the 4-bit code table
    code2_ptr,  # (256,) fp32: NESTED absmax code table
    a2_ptr,  # (N * K / 64 / 256,) fp32: NESTED absmax scales
    offset,  # fp32: NESTED absmax offset
    out_ptr,  # (M, N): activations' dtype if SPLIT_K == 1, else fp32 (zeroed; atomically added to)
    M,
    N,
    K,
    sxm,
    som,
    per,  # 64-value blocks per program along K (a multiple of SUB)
    BM: tl.constexpr,
    BN: tl.constexpr,
    SUB: tl.constexpr,  # 64-value blocks per loop iteration
    SPLIT_K: tl.constexpr,
    NESTED: tl.constexpr,
    PIPELINED: tl.constexpr,  # a for loop (software-pipelined loads); False: a while loop, for the interpreter
):
    pid_n, pid_k, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    mm, nm = rm < M, rn < N
    b_lo = pid_k * per
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    if PIPELINED:
        for i in range(0, per, SUB):
            for s in tl.static_range(SUB):
                acc = _step(
                    acc,
                    x_ptr,
                    w_ptr,
                    a_ptr,
                    code_ptr,
                    code2_ptr,
                    a2_ptr,
                    offset,
                    rm,
                    rn,
                    mm,
                    nm,
                    K,
                    sxm,
                    b_lo + i + s,
                    NESTED,
                )
    else:  # Triton's interpreter (the CPU test) cannot range() to a runtime bound
        i = 0
        while i < per:
            for s in tl.static_range(SUB):
                acc = _step(
                    acc,
                    x_ptr,
                    w_ptr,
                    a_ptr,
                    code_ptr,
                    code2_ptr,
                    a2_ptr,
                    offset,
                    rm,
                    rn,
                    mm,
                    nm,
                    K,
                    sxm,
                    b_lo + i + s,
                    NESTED,
                )
            i += SUB
    ptrs = out_ptr + rm[:, None] * som + rn[None, :]
    if SPLIT_K == 1:
        tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=mm[:, None] & nm[None, :])
    else:
        tl.atomic_add(ptrs, acc, mask=mm[:, None] & nm[None, :])
