"""Progress: a live bar, a JSONL log of every step, and TensorBoard when it is installed."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

log = logging.getLogger("kner.train")


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_reserved() / 2**30
    return 0.0


class JsonlLog:
    """Append-only per-step log. On resume, lines past the checkpoint's step are dropped
    (they belong to the run that was killed and are about to be redone)."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            path.write_text("", encoding="utf-8")
        elif path.exists():
            keep = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by the kill
                if rec.get("step", 0) <= resume_step or rec.get("event") == "resume":
                    keep.append(line)
            path.write_text("".join(l + "\n" for l in keep), encoding="utf-8")
        self._f = path.open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class Progress:
    """Live bar (rich) when attached to a terminal, otherwise a log line every ``every`` steps."""

    def __init__(
        self,
        total_steps: int,
        start_step: int,
        out_dir: Path,
        enabled: bool = True,
        tensorboard: bool = True,
        every: int = 10,
    ):
        self.total = total_steps
        self.start_step = start_step
        self.every = every
        self.t0 = time.perf_counter()
        self._bar = None
        self._task: Any = None  # a rich TaskID while the bar shows
        self._tb = None
        if enabled and sys.stderr.isatty():
            self._bar = RichProgress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(
                    "loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  "
                    "{task.fields[tps]:,.0f} tok/s  peak {task.fields[mem]:.2f} GiB"
                ),
                TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._bar.add_task(
                "train", total=total_steps, completed=start_step, loss=float("nan"), lr=0.0, tps=0.0, mem=0.0
            )
            self._bar.start()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415  lazy: needs tensorboard (optional)

                self._tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                log.info("tensorboard is not installed; logging to log.jsonl only")

    def eta_s(self, step: int) -> float:
        done = step - self.start_step
        if done <= 0:
            return float("nan")
        return (time.perf_counter() - self.t0) / done * (self.total - step)

    def update(self, rec: dict) -> None:
        step = rec["step"]
        if self._bar is not None:
            self._bar.update(
                self._task,
                completed=step,
                loss=rec["loss"],
                lr=rec["lr"],
                tps=rec["tokens_per_s"],
                mem=rec["peak_mem_gib"],
            )
        elif step % self.every == 0 or step == self.total:
            log.info(
                "step %d/%d  loss %.4f  lr %.2e  %.0f tok/s  peak %.2f GiB  eta %.0f s",
                step,
                self.total,
                rec["loss"],
                rec["lr"],
                rec["tokens_per_s"],
                rec["peak_mem_gib"],
                self.eta_s(step),
            )
        if self._tb is not None:
            for k in ("loss", "lr", "tokens_per_s", "examples_per_s", "peak_mem_gib", "grad_norm"):
                if rec.get(k) is not None:
                    self._tb.add_scalar(f"train/{k}", rec[k], step)

    def scalar(self, name: str, value: float, step: int) -> None:
        if self._tb is not None:
            self._tb.add_scalar(name, value, step)

    def note(self, msg: str) -> None:
        if self._bar is not None:
            self._bar.console.print(msg)
        else:
            log.info(msg)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self._tb is not None:
            self._tb.close()
