"""Data-parallel training over several processes (``torchrun`` / ``accelerate launch``).

Every process holds a whole copy of the model (4-bit base + LoRA for ``qlora``) on
its own GPU. A step is the same fixed list of examples on every rank (it depends
on the seed and epoch only); each rank computes the gradient of its share of the
step with the *whole step's* answer-token count as the denominator, and the
gradients are summed over the ranks before clipping and the optimizer step. The
summed gradient is then the single-process step's gradient, so N GPUs give the
same run as one GPU with the same ``examples_per_step`` (up to floating-point
summation order).

Why not ``torch.nn.parallel.DistributedDataParallel``: the recipe computes each
micro-batch's gradient with ``torch.autograd.grad`` and adds it to ``.grad`` only
once it is complete, so that an out-of-memory error halfway through a backward
pass leaves nothing half-added and the micro-batch can be split and retried on
that rank alone. DDP's reducer hooks fire during ``backward`` and would all-reduce
a half-finished micro-batch (and ``autograd.grad`` does not go through them at
all); it also averages where the step needs a sum, and a retry on one rank would
leave the others waiting in a collective. The trainable parameters of LoRA are
small (40 M at 7B, r=16), so one bucketed all-reduce after the step's last
micro-batch costs little and keeps the step atomic.

Without a process group (or with a world of one) every function here is a no-op
returning its input, so the single-GPU path is unchanged.
"""

from __future__ import annotations

import atexit
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as td

from kner.data.splits import balance
from kner.errors import KnerError

log = logging.getLogger("kner.train")

_BUCKET_BYTES = 256 * 2**20  # bounds the extra memory of the flattened gradients (full fine-tuning)
_quieted: list[tuple[logging.Logger, int]] = []
_created = False  # the process group is ours to destroy


@dataclass(frozen=True)
class RankInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _dist():
    return td


def active() -> bool:
    """True inside a process group of more than one process."""
    td = _dist()
    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


def rank_info() -> RankInfo:
    """This process's place: from the process group once joined, else from the launcher's environment."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if active():
        td = _dist()
        return RankInfo(td.get_rank(), td.get_world_size(), local)
    return RankInfo(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), local)


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes the output folder, logs and checkpoints."""
    return not active() or _dist().get_rank() == 0


def init() -> RankInfo:
    """Join the process group that ``torchrun`` / ``accelerate launch`` describe in the environment.

    ``WORLD_SIZE > 1`` starts it: NCCL with one GPU per process (``cuda:LOCAL_RANK``,
    made the current device so that ``"cuda"`` means this rank's GPU), gloo on CPU.
    The group then lives until the process exits (``teardown`` at exit), so several
    ``train()`` calls in one launch share it: joining a second default group in the
    same process under torchrun reads the first one's stale addresses from the
    launcher's store and hangs. A group the caller created is used as is and left
    to the caller. Logging of other ranks is lowered to warnings, so each line is
    printed once.
    """
    global _created
    td = _dist()
    joined = False
    if td.is_available() and td.is_initialized():
        if td.get_backend() == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", td.get_rank() % torch.cuda.device_count())))
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not td.is_available():
            raise KnerError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            if local >= torch.cuda.device_count():
                raise KnerError(
                    f"LOCAL_RANK={local} but only {torch.cuda.device_count()} GPU(s) are visible; "
                    f"launch at most that many processes per node (--nproc_per_node)"
                )
            torch.cuda.set_device(local)
            td.init_process_group("nccl", device_id=torch.device("cuda", local))
        else:
            td.init_process_group("gloo")
        _created = joined = True
        atexit.register(teardown)
    _quiet_other_ranks()
    if joined:
        log.info("data parallel: %d processes (%s)", td.get_world_size(), td.get_backend())
    return rank_info()


def teardown() -> None:
    """Leave the process group if ``init`` created it (runs at exit); restore the log levels it lowered."""
    global _created
    while _quieted:
        logger, level = _quieted.pop()
        logger.setLevel(level)
    td = _dist()
    if _created and td.is_available() and td.is_initialized():
        td.destroy_process_group()
    _created = False


def _quiet_other_ranks() -> None:
    if active() and not is_main() and not _quieted:
        logger = logging.getLogger("kner")
        _quieted.append((logger, logger.level))
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))


def split_step(examples: list, world_size: int) -> list[list]:
    """Cut one step's examples into ``world_size`` shares of about equal tokens.

    Greedy: longest example first onto the share with the fewest tokens so far
    (ties: the lower rank; equal lengths: the lower example index), so every rank
    computes the same split without talking. Tokens are each example's full length
    (prefix included), which balances the examples' own tokens and, since the
    prefix is the same for all, their number too. A share may be empty when the
    step has fewer examples than ranks.
    """
    ordered = sorted(examples, key=lambda e: e.index)  # equal lengths: the lower example index first
    return [[ordered[i] for i in part] for part in balance([e.length for e in ordered], world_size)]


def share_of_step(examples: list, rank: int | None = None, world_size: int | None = None) -> list:
    """This rank's share of a step (all of it without a process group)."""
    if rank is None or world_size is None:
        if not active():
            return list(examples)
        info = rank_info()
        rank, world_size = info.rank, info.world_size
    return split_step(examples, world_size)[rank]


def _collective_device(like=None):
    if _dist().get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if like is None else like


def all_reduce_grads(params, bucket_bytes: int = _BUCKET_BYTES) -> None:
    """Sum (not average) every parameter's ``.grad`` over the ranks, in place.

    A rank whose share did not touch a parameter (``.grad`` None) contributes zeros;
    a parameter no rank touched keeps ``.grad = None``, so the optimizer skips it
    exactly as it would in one process. Gradients are flattened into buckets of
    at most ``bucket_bytes`` per collective.
    """
    if not active():
        return

    td = _dist()
    params = list(params)
    if not params:
        return
    dev = _collective_device(params[0].device)
    used = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=dev)
    td.all_reduce(used)
    todo = [p for p, u in zip(params, used.tolist()) if u]
    bucket: list = []
    size = 0
    for p in todo:
        nbytes = p.numel() * p.element_size()
        if bucket and (size + nbytes > bucket_bytes or p.dtype != bucket[0].dtype or p.device != bucket[0].device):
            _reduce_bucket(bucket)
            bucket, size = [], 0
        bucket.append(p)
        size += nbytes
    if bucket:
        _reduce_bucket(bucket)


def _reduce_bucket(params: list) -> None:
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    _dist().all_reduce(flat)
    offset = 0
    for p in params:
        g = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few numbers over the ranks (float64)."""
    if not active():
        return list(values)

    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    _dist().all_reduce(t)
    return t.tolist()


def all_reduce_max(value: float) -> float:
    """The largest value over the ranks (e.g. peak memory: the rank that came closest to OOM)."""
    if not active():
        return value

    t = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    _dist().all_reduce(t, op=_dist().ReduceOp.MAX)
    return float(t.item())


def broadcast_params(params, src: int = 0) -> None:
    """Copy rank ``src``'s values of ``params`` to every rank (once, at the start).

    Every rank seeds identically before LoRA is created, which already gives the
    same initial weights; the broadcast makes it hold whatever the initialisation
    draws from (devices, library versions)."""
    if not active():
        return

    td = _dist()
    with torch.no_grad():
        for p in params:
            if p.device.type == "cpu" and td.get_backend() == "nccl":
                t = p.data.to(_collective_device())
                td.broadcast(t, src)
                p.data.copy_(t.cpu())
            else:
                td.broadcast(p.data, src)


def gather_objects(obj) -> list | None:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; None without a process group."""
    if not active():
        return None
    out: list = [None] * _dist().get_world_size()
    _dist().all_gather_object(out, obj)
    return out


def barrier() -> None:
    if active():
        _dist().barrier()
