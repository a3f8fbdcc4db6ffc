"""One test for "the device ran out of memory", shared by training and inference.

Both halve their batch and retry on it, so they must agree on what counts:
``torch.OutOfMemoryError`` (``torch.cuda.OutOfMemoryError`` on older torch) and
the plain ``RuntimeError`` some kernels and backends still raise with "out of
memory" in the message (cuBLAS/cuDNN workspace allocations, MPS).
"""

from __future__ import annotations

import os

# Every GPU stage allocates big, short-lived, differently sized blocks (training: one layer's
# recomputed activations per micro-batch; inference: the K/V pool and per-step gathers), which
# fragment PyTorch's default caching allocator: training reserved 8.15 GiB for 6.86 GiB allocated
# (docs/benchmarks.md). Expandable segments let freed blocks be reused whatever their size.
ALLOC_CONF = "expandable_segments:True"


def prefer_expandable_segments(env=None) -> None:
    """Ask for expandable segments unless the user chose an allocator config. Only takes effect
    before torch first touches CUDA: the CLI calls it before any command runs."""
    env = os.environ if env is None else env
    if not (env.get("PYTORCH_CUDA_ALLOC_CONF") or env.get("PYTORCH_ALLOC_CONF")):
        env["PYTORCH_CUDA_ALLOC_CONF"] = ALLOC_CONF


def is_oom(err: BaseException) -> bool:
    import torch  # noqa: PLC0415  lazy: torch takes seconds, and kner.config imports kner.inference, which uses this

    types = tuple(
        t
        for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
        if isinstance(t, type)
    )
    if types and isinstance(err, types):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
