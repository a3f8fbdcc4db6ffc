"""Which devices sharded prediction runs on: ``--gpus N|all`` or ``--devices 0,2|cpu,cpu``."""

from __future__ import annotations

import os
from collections.abc import Sequence

from kner.errors import ConfigError


def visible_gpus() -> list[str]:
    """What to put in a child's ``CUDA_VISIBLE_DEVICES`` for each GPU this process sees."""
    import torch  # noqa: PLC0415  lazy: torch only to count GPUs (a --devices cpu parent never imports it)

    n = torch.cuda.device_count()  # NVML count: does not create a CUDA context in the parent
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and env.strip():
        entries = [e.strip() for e in env.split(",") if e.strip()]
        return entries[:n]
    return [str(i) for i in range(n)]


def resolve_devices(gpus: str | int | None = None, devices: str | Sequence[str] | None = None) -> list[str]:
    """Worker devices: ``"cpu"`` or a GPU index as this process numbers them (``"0"``, ``"1"``).

    ``gpus``: a count or ``"all"`` (the first N visible GPUs). ``devices``: an
    explicit list (``"0,1"``, ``"cuda:1"``, ``"cpu,cpu"``; CPU workers are for tests
    and machines without GPUs).
    """
    if gpus is not None and devices is not None:
        raise ConfigError("give --gpus or --devices, not both")
    if devices is not None:
        items = [d.strip() for d in (devices.split(",") if isinstance(devices, str) else devices)]
        if not items or any(not d for d in items):
            raise ConfigError(f"--devices takes a comma-separated list such as 0,1 or cpu,cpu, not {devices!r}")
        out = []
        for d in items:
            d = d.lower().removeprefix("cuda:")
            if d != "cpu" and not d.isdigit():
                raise ConfigError(f"unknown device {d!r}: use GPU indices (0, 1, cuda:1) or cpu")
            out.append(d)
        gpu_ids = [d for d in out if d != "cpu"]
        if len(set(gpu_ids)) != len(gpu_ids):
            raise ConfigError(
                "a GPU is listed twice in --devices; two workers on one card would each plan for all of its memory"
            )
        if gpu_ids:
            n = len(visible_gpus())
            bad = [d for d in gpu_ids if int(d) >= n]
            if bad:
                raise ConfigError(f"GPU {bad[0]} requested but {n} GPU(s) are visible")
        return out
    n_vis = len(visible_gpus())
    if gpus is None or str(gpus).lower() == "all":
        if n_vis == 0:
            raise ConfigError("--gpus all: no GPU is visible (use --devices cpu to run a worker on the CPU)")
        return [str(i) for i in range(n_vis)]
    try:
        n = int(gpus)
    except ValueError:
        raise ConfigError(f"--gpus takes a number or 'all', not {gpus!r}") from None
    if n < 1:
        raise ConfigError("--gpus must be at least 1")
    if n > n_vis:
        raise ConfigError(
            f"--gpus {n}: only {n_vis} GPU(s) are visible"
            + (" (use --devices cpu,... to run workers on the CPU)" if n_vis == 0 else "")
        )
    return [str(i) for i in range(n)]
