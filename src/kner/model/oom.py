"""One test for "the device ran out of memory", shared by training and inference.

Both halve their batch and retry on it, so they must agree on what counts:
``torch.OutOfMemoryError`` (``torch.cuda.OutOfMemoryError`` on older torch) and
the plain ``RuntimeError`` some kernels and backends still raise with "out of
memory" in the message (cuBLAS/cuDNN workspace allocations, MPS).
"""

from __future__ import annotations


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
