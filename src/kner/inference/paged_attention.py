"""Decode attention read straight from the paged K/V pool, without gathering it first.

A decode step's query (one per row) attends to the shared prefix and to the row's own tokens, which
sit in pool blocks listed in the row's block table. Gathering every row's own K/V into a padded
``(rows, kv_heads, longest, head_dim)`` tensor before the attention was 36 % of the GPU time of a
1,000-sentence run (``benchmarks/engine_split.py``: one ``index`` kernel per layer, 175 us each at
80 rows), and its transient buffer took a fifth of the memory left for the pool. Here:

* the prefix part is one batched product for all rows (the prefix K/V read once per layer, as the
  gathering attention does), reduced to each query's running max, sum and weighted values;
* :func:`_own_keys_kernel` (Triton) continues that online softmax over the row's own keys, loading
  each one from its pool slot (block table x block size + offset), and writes the normalised output.

Rows need no padding to a common length (the kernel stops at each row's own length), so a CUDA graph
only depends on the number of rows and the table's width. The Triton path covers plain softmax
attention (no logit soft-capping, no sliding window) with a power-of-two head size, on CUDA;
everything else (the CPU, Gemma-2's soft-capping, sliding windows) gathers and runs the general code
in :mod:`kner.inference.prefix_cache`. Both give the same attention up to floating-point rounding
(tested in Triton's interpreter).
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def _triton():
    try:
        import triton  # noqa: PLC0415  lazy: optional (CUDA installs have it; the CPU wheel does not)
        import triton.language as tl  # noqa: PLC0415  lazy: as above
    except ImportError:
        return None
    return triton, tl


_off: list[str] = []  # why the kernel was switched off in this process (empty: it is on)


def kernel_available(device) -> bool:
    """Whether the kernel may run on ``device``: CUDA, Triton installed, a GPU Triton compiles for
    (compute capability 7.0 or newer), and the kernel has not failed in this process."""
    dev = torch.device(device)
    if dev.type != "cuda" or _off or _triton() is None:
        return False
    return _capability(dev.index if dev.index is not None else torch.cuda.current_device()) >= (7, 0)


@functools.cache
def _capability(index: int) -> tuple[int, int]:  # asked in every layer of every decode step: once per GPU
    return torch.cuda.get_device_capability(index)


def switch_off(err: BaseException) -> None:
    """The kernel failed (compiling or running): the general path from now on, said once."""
    import logging  # noqa: PLC0415  only on this rare path

    _off.append(str(err).splitlines()[0] if str(err) else type(err).__name__)
    logging.getLogger("kner.inference").warning(
        "kner's paged attention kernel is off for this process (%s); gathering the K/V instead", _off[0]
    )


def kernel_applies(query, softcap, sliding_window) -> bool:
    """Whether this attention call is one the kernel computes (else: gather, the general path)."""
    d = query.shape[-1]
    plain = softcap is None and sliding_window is None
    return plain and d >= 16 and d & (d - 1) == 0 and kernel_available(query.device)


def model_supported(config) -> bool:
    """Whether a model's decode attention is the plain softmax the kernel computes (from its config):
    no logit soft-capping, no sliding-window layers, a power-of-two head size."""
    from kner.model.shape import ModelShape, text_config  # noqa: PLC0415  lazy: keeps this module light

    cfg = text_config(config)
    if getattr(cfg, "attn_logit_softcapping", None) is not None:
        return False
    if getattr(cfg, "sliding_window", None) is not None and getattr(cfg, "use_sliding_window", True):
        return False
    if "sliding_attention" in (getattr(cfg, "layer_types", None) or ()):
        return False
    d = ModelShape.from_config(config).head_dim
    return d >= 16 and d & (d - 1) == 0


def gathered(kpool, vpool, table, block: int):
    """The rows' own K/V gathered from the pool, ``(rows, kv_heads, width x block, head_dim)`` each: the
    general path (CPU, soft-capping, sliding windows). Keys past a row's length are masked by the caller."""
    slots = (table.long()[:, :, None] * block + torch.arange(block, device=table.device)).reshape(table.shape[0], -1)
    return kpool[:, slots].transpose(0, 1), vpool[:, slots].transpose(0, 1)


def decode_attention(query, pk, pv, kpool, vpool, table, lens, block: int, scaling: float):
    """Attention of one query per row over the shared prefix and the row's own pool blocks (Triton).

    ``query`` (rows, heads, 1, head_dim); ``pk``/``pv`` (1, kv_heads, prefix, head_dim); ``kpool``/``vpool``
    (kv_heads, pool_tokens, head_dim); ``table`` (rows, width) int32 block ids; ``lens`` (rows,) own keys
    per row (at least 1: the current token). Returns (rows, 1, heads, head_dim), transformers' layout.
    """
    triton, _ = _triton()
    b, h, _, d = query.shape
    kvh, p = pk.shape[1], pk.shape[2]
    g = h // kvh
    q = query[:, :, 0].contiguous()
    # Prefix part, every row at once: its running max m, sum l and unnormalised output acc per query.
    qk = (q * scaling).view(b, kvh, g, d).transpose(0, 1).reshape(kvh, b * g, d)
    if p:
        sp = torch.bmm(qk, pk[0].transpose(1, 2)).float()
        m = sp.amax(-1)
        e = torch.exp(sp - m[..., None])
        l_sum = e.sum(-1)
        acc = torch.bmm(e.to(pv.dtype), pv[0]).float()
    else:
        m = qk.new_full((kvh, b * g), float("-inf"), dtype=torch.float32)
        l_sum = torch.zeros_like(m)
        acc = qk.new_zeros((kvh, b * g, d), dtype=torch.float32)
    out = torch.empty((b, 1, h, d), dtype=query.dtype, device=query.device)
    _kernel()[(b, h)](
        q,
        kpool,
        vpool,
        table,
        lens,
        m.contiguous(),
        l_sum.contiguous(),
        acc.contiguous(),
        out,
        scaling,
        kpool.shape[1],
        table.shape[1],
        b,
        h,
        G=g,
        D=d,
        PAGE=block,
        BLOCK_N=64,
    )
    return out


@functools.cache
def _kernel():
    triton, tl = _triton()

    # One compiled kernel for every pool size, table width and rows bucket: a graph captured without a
    # warm-up (see engine._DecodeGraphs) must not meet a new specialisation, whose compile cannot be captured.
    @triton.jit(do_not_specialize=["T", "W", "B", "H"])
    def _own_keys_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        table_ptr,
        lens_ptr,
        m_ptr,
        l_ptr,
        acc_ptr,
        out_ptr,
        scale,
        T,
        W,
        B,
        H,
        G: tl.constexpr,  # type: ignore[name-defined]  # tl is Triton's, bound at run time
        D: tl.constexpr,  # type: ignore[name-defined]  # tl is Triton's, bound at run time
        PAGE: tl.constexpr,  # type: ignore[name-defined]  # tl is Triton's, bound at run time
        BLOCK_N: tl.constexpr,  # type: ignore[name-defined]  # tl is Triton's, bound at run time
    ):
        # One program per (row, query head): online softmax over the row's own keys, starting from the
        # prefix part's state (max, sum, weighted values), which is laid out (kv_heads, rows x G).
        row = tl.program_id(0)
        head = tl.program_id(1)
        kv = head // G
        state = kv * (B * G) + row * G + head % G
        d = tl.arange(0, D)
        q = tl.load(q_ptr + (row * H + head) * D + d).to(tl.float32) * scale
        m_i = tl.load(m_ptr + state)
        l_i = tl.load(l_ptr + state)
        acc = tl.load(acc_ptr + state * D + d)
        n = tl.load(lens_ptr + row)
        base = kv.to(tl.int64) * T * D
        start = 0
        while start < n:  # a while loop: Triton's interpreter (the CPU test) cannot range() to a loaded bound
            j = start + tl.arange(0, BLOCK_N)
            ok = j < n
            page = tl.load(table_ptr + row * W + j // PAGE, mask=ok, other=0)
            off = base + (page.to(tl.int64) * PAGE + j % PAGE)[:, None] * D + d[None, :]
            k = tl.load(k_ptr + off, mask=ok[:, None], other=0.0).to(tl.float32)
            s = tl.where(ok, tl.sum(k * q[None, :], axis=1), float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=0))
            alpha = tl.exp(m_i - m_new)
            pexp = tl.exp(s - m_new)
            v = tl.load(v_ptr + off, mask=ok[:, None], other=0.0).to(tl.float32)
            acc = acc * alpha + tl.sum(pexp[:, None] * v, axis=0)
            l_i = l_i * alpha + tl.sum(pexp, axis=0)
            m_i = m_new
            start += BLOCK_N
        tl.store(out_ptr + (row * H + head) * D + d, (acc / l_i).to(out_ptr.dtype.element_ty))

    return _own_keys_kernel
