"""Checkpoints that resume a run exactly.

A checkpoint is written after an optimizer step and holds everything the next
step depends on: the trainable weights, optimizer, scheduler, grad-scaler and
RNG states, and the data position (epoch, step within the epoch, token budget).
The data order itself is a pure function of the seed and the epoch, so it is
not stored. Folders are written under a temporary name and renamed, so a run
killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from kner.errors import KnerError

STATE = "state.json"


@dataclass
class Position:
    global_step: int  # optimizer steps done
    epoch: int  # epoch of the next step
    step_in_epoch: int  # index of the next step within its epoch
    budget: int  # micro-batch token budget (the micro-batch cut depends on it)
    examples_seen: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0


def rng_state() -> dict:
    st = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        st["numpy"] = np.random.get_state()
    except ImportError:
        pass
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    torch.set_rng_state(st["torch"])
    if "numpy" in st:
        np.random.set_state(st["numpy"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu").clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor], where: str) -> None:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(state))
    extra = sorted(set(state) - set(params))
    if missing or extra:
        raise KnerError(
            f"{where}: checkpoint does not match the model being trained "
            f"({len(missing)} trainable tensors missing, {len(extra)} unexpected; e.g. "
            f"{(missing or extra)[0]}); resume with the same model, method and LoRA settings"
        )
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state[n].to(device=p.device, dtype=p.dtype))


def save_checkpoint(
    root: Path, pos: Position, model, optimizer, scheduler, scaler, keep: int = 2, rng_ranks: list[dict] | None = None
) -> Path:
    """``rng_ranks``: every rank's RNG states under data parallelism (rank 0 writes for all);
    each rank draws its own dropout masks, so each resumes its own stream."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{pos.global_step:07d}"
    tmp = root / f".tmp-{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_ranks[0] if rng_ranks else rng_state(),
            "rng_ranks": rng_ranks,
        },
        tmp / "states.pt",
    )
    (tmp / STATE).write_text(json.dumps(asdict(pos), indent=2), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE).is_file())


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(path: Path, model, optimizer, scheduler, scaler, rank: int = 0) -> Position:
    try:
        pos = Position(**json.loads((path / STATE).read_text(encoding="utf-8")))
        load_trainable_state(model, load_file(str(path / "trainable.safetensors")), str(path))
        st = torch.load(path / "states.pt", map_location="cpu", weights_only=False)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise KnerError(f"{path}: cannot read checkpoint ({err})") from None
    optimizer.load_state_dict(st["optimizer"])
    scheduler.load_state_dict(st["scheduler"])
    if scaler is not None and st.get("scaler") is not None:
        scaler.load_state_dict(st["scaler"])
    ranks = st.get("rng_ranks") or []
    set_rng_state(ranks[rank] if rank < len(ranks) else st["rng"])
    return pos
