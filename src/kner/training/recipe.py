"""The training recipe, top to bottom: setup builds every component from the config, then one loop.

Read ``train`` first. ``TrainingRecipe.setup`` builds, in order: the data (read,
mapped to the scheme, checked), the tokenizer and model, the tokenized examples,
the memory plan, the optimizer and schedule, the checkpoint to resume from and
with it the token budget, and the step runner. ``TrainingRecipe.train`` is the
loop; ``TrainingRecipe.save`` writes the output folder. The components are built
in ``kner.training.setup`` (the data in ``kner.training.data``); one optimizer step is
``kner.training.step``.

The loop is written by hand (no ``Trainer``) because it does three things a stock
loop does not: micro-batches cut to a token budget, an out-of-memory retry that
splits a micro-batch without changing the step's gradient, and a shared
instruction prefix computed once per packed row (``kner.training.batching``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch

from kner.data.example import Example
from kner.data.schemes import load_scheme
from kner.errors import KnerError
from kner.model import compat
from kner.model.artifacts import ModelManifest
from kner.model.loading import choose_compute_dtype, dtype_name
from kner.model.prompt import PromptEncoder, PromptFormat
from kner.training import distributed as dist
from kner.training import setup
from kner.training.batching import Batching, epoch_steps
from kner.training.checkpoint import Position, latest_checkpoint, load_checkpoint, rng_state, save_checkpoint
from kner.training.config import TrainConfig
from kner.training.data import load_examples, tokenize
from kner.training.forward import ModelParts
from kner.training.progress import JsonlLog, Progress, peak_memory_gib
from kner.training.step import StepModel, StepResult, StepRunner

log = logging.getLogger("kner.train")


def train(
    config: TrainConfig,
    model=None,
    tokenizer=None,
    *,
    train_examples: list[Example] | None = None,
    dev_examples: list[Example] | None = None,
) -> Path:
    """Fine-tune per ``config`` and return the output folder (see ``kner.model.artifacts``).

    ``model``/``tokenizer`` may be given as objects (e.g. a tiny model from
    ``kner.model.loading.build_model_from_config``); a plain model is then quantized in
    place for ``qlora`` and its base weights are saved under ``base/`` so the folder
    is self-contained. ``train_examples``/``dev_examples`` replace ``config.train``/``dev``.

    Under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE > 1``) every process runs
    this with the same arguments: data parallel, one model copy per GPU, the same
    steps and result as one GPU (``kner.training.distributed``); rank 0 alone writes
    the output folder.
    """
    recipe = TrainingRecipe(config)
    recipe.setup(model, tokenizer, train_examples, dev_examples)
    recipe.train()
    return recipe.save()


class TrainingRecipe:
    """One run: ``setup`` builds the components, ``train`` runs the loop, ``save`` writes the output folder."""

    def __init__(self, config: TrainConfig):
        self.cfg = config.validate()
        dist.init()
        self.out = Path(self.cfg.output)
        if dist.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
        setup.seed_everything(self.cfg.seed)  # the same on every rank: the same LoRA initialisation
        self.ckpt_root = self.out / "checkpoints"
        self.history: list[dict] = []  # this run's step records
        self.dev_losses: list[dict] = []

    def setup(
        self,
        model=None,
        tokenizer=None,
        train_examples: list[Example] | None = None,
        dev_examples: list[Example] | None = None,
    ) -> None:
        cfg = self.cfg
        # 1. Data: read, map to the target scheme, check labels (before any model is loaded).
        self.scheme = load_scheme(cfg.scheme)
        self.prompt_format = PromptFormat.from_dict(cfg.prompt)
        train_exs = load_examples(cfg.train, train_examples, cfg, self.scheme, "train")
        dev_exs = load_examples(cfg.dev, dev_examples, cfg, self.scheme, "dev") if (cfg.dev or dev_examples) else []

        # 2. Tokenizer and model: frozen base, LoRA (or all weights) trainable.
        self.load_spec = setup.load_spec(cfg)
        self.tokenizer = setup.tokenizer_for(cfg, tokenizer)
        self.dtype = choose_compute_dtype(cfg.compute_dtype)
        self.model, self.base_dir = setup.model_for(cfg, self.load_spec, model, self.tokenizer, self.out, self.dtype)
        self.device = next(p.device for p in self.model.parameters())

        # 3. Tokenized examples: answer-only labels, the shared instruction prefix.
        self.encoder = PromptEncoder(self.tokenizer, self.prompt_format, self.scheme)
        self.data = tokenize(train_exs, dev_exs, self.encoder, cfg, self.prompt_format.separator)

        # 4. Memory plan, before the optimizer allocates anything (it may cap the allocator).
        self.plan = setup.memory_plan(
            self.model.config,
            cfg,
            self.data.all_train,
            self.data.longest,
            len(self.encoder.prefix_ids),
            self.dtype,
            self.device,
        )

        # 5. Optimizer, schedule, loss scaling.
        params = [p for p in self.model.parameters() if p.requires_grad]
        dist.broadcast_params(params)
        # The same initialisation everywhere, but dropout masks of their own: one seed on every
        # rank would give each rank's n-th example the same masks (a resume restores these streams).
        torch.manual_seed(cfg.seed + dist.rank_info().rank)
        self.optimizer = setup.make_optimizer(params, cfg, self.device)
        self.total_steps = cfg.max_steps or math.ceil(len(self.data.train) / cfg.examples_per_step) * cfg.epochs
        self.scheduler = setup.make_scheduler(self.optimizer, cfg, self.total_steps)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=(self.dtype == torch.float16 and self.device.type == "cuda")
        )

        # 6. Checkpoint to resume from, and with it the token budget.
        resumed = self._resume()
        budget = setup.token_budget(
            cfg,
            self.plan,
            self.data.longest,
            self.device.type == "cuda",
            checkpoint_budget=resumed.budget if resumed else None,
        )
        self.pos = resumed or Position(global_step=0, epoch=0, step_in_epoch=0, budget=budget)
        self.pos.budget = budget

        # 7. The step runner.
        pad_id = self.tokenizer.pad_token_id
        batching = Batching(
            budget,
            cfg.layout,
            setup.row_tokens(cfg, self.data.longest),
            pad_id if pad_id is not None else 0,
            compat.attention_implementation(self.model.config, "sdpa"),
        )
        self.runner = StepRunner(
            StepModel(ModelParts.of(self.model), params, self.dtype, self.device, self.scaler), batching
        )

    def _resume(self) -> Position | None:
        if not self.cfg.resume:
            return None
        ck = latest_checkpoint(self.ckpt_root)
        if ck is None:
            log.warning("resume: no checkpoint in %s; starting from scratch", self.ckpt_root)
            return None
        pos = load_checkpoint(ck, self.model, self.optimizer, self.scheduler, self.scaler, rank=dist.rank_info().rank)
        log.info("resumed from %s (step %d)", ck, pos.global_step)
        return pos

    # -----------------------------------------------------------------------
    # The loop

    def train(self) -> None:
        """Optimizer steps of ``examples_per_step`` examples until ``total_steps``; checkpoints on the way."""
        cfg, pos, runner = self.cfg, self.pos, self.runner
        self._open_logs()
        self.model.train()
        t_start = time.perf_counter() - pos.elapsed_s
        bad_steps = 0
        try:
            while pos.global_step < self.total_steps:
                epoch_tok = self.data.epoch_sets[pos.epoch % len(self.data.epoch_sets)]
                steps = epoch_steps(
                    [e.length for e in epoch_tok], cfg.examples_per_step, cfg.seed, pos.epoch, cfg.uses_group_by_length
                )
                while pos.step_in_epoch < len(steps) and pos.global_step < self.total_steps:
                    step_examples = [epoch_tok[i] for i in steps[pos.step_in_epoch]]
                    t0 = time.perf_counter()
                    # Each rank computes its share over the whole step's answer tokens; the sum
                    # of the ranks' gradients is then the one-process step's gradient.
                    res = runner.step(dist.share_of_step(step_examples), denom=sum(e.n_answer for e in step_examples))
                    dist.all_reduce_grads(runner.model.params)
                    res = res.summed_over_ranks()
                    grad_norm = runner.finish_step(self.optimizer, self.scheduler, cfg.max_grad_norm)
                    dt = time.perf_counter() - t0
                    bad_steps = bad_steps + 1 if (not math.isfinite(res.loss) or runner.update_skipped) else 0
                    if bad_steps >= cfg.max_nonfinite_steps:
                        raise self._diverged(bad_steps)
                    pos.global_step += 1
                    pos.step_in_epoch += 1
                    pos.examples_seen += res.examples
                    pos.tokens_seen += res.tokens
                    pos.elapsed_s = time.perf_counter() - t_start
                    self._log_step(res, grad_norm, dt)
                    if self.data.dev and cfg.eval_every and pos.global_step % cfg.eval_every == 0:
                        self._dev_eval(self.progress)
                    if cfg.save_every and pos.global_step % cfg.save_every == 0 and pos.global_step < self.total_steps:
                        _maybe_next_epoch(pos, len(steps))
                        self._save_checkpoint()
                _maybe_next_epoch(pos, len(steps))
        finally:
            self.progress.close()

    def _open_logs(self) -> None:
        pos = self.pos
        if dist.is_main():
            self.cfg.save(self.out / "train_config.yaml")
            self.jlog: JsonlLog | _Discard = JsonlLog(
                self.out / "log.jsonl", resume_step=pos.global_step if self.cfg.resume else None
            )
            self.progress: Progress | _Discard = Progress(
                self.total_steps, pos.global_step, self.out, self.cfg.progress, self.cfg.tensorboard
            )
        else:
            self.jlog = self.progress = _Discard()
        self.jlog.write(
            {
                "event": "resume" if pos.global_step else "start",
                "step": pos.global_step,
                "budget": pos.budget,
                "layout": self.cfg.layout,
                "dtype": dtype_name(self.dtype),
                "device": str(self.device),
                "train_examples": len(self.data.train),
                "skipped_too_long": len(self.data.report.too_long),
                "planned_peak_gib": self.plan.estimate.allocator_peak / 2**30 if self.plan else None,
            }
        )
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _log_step(self, res: StepResult, grad_norm: float | None, dt: float) -> None:
        rec = {
            "step": self.pos.global_step,
            "epoch": self.pos.epoch,
            "loss": res.loss,
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": grad_norm,
            "examples": res.examples,
            "tokens": res.tokens,
            "computed_tokens": res.computed,
            "answer_tokens": res.answer_tokens,
            "micro_batches": res.micro_batches,
            "oom_splits": res.oom_splits,
            "tokens_per_s": res.tokens / dt,
            "examples_per_s": res.examples / dt,
            "peak_mem_gib": dist.all_reduce_max(peak_memory_gib()),
            "time_s": dt,
            "loss_scale": self.runner.scale(),
        }
        self.history.append(rec)
        self.jlog.write(rec)
        self.progress.update(rec)
        for note in res.split_notes:
            self.progress.note(note)

    def _diverged(self, bad_steps: int) -> KnerError:
        last = latest_checkpoint(self.ckpt_root)
        return KnerError(
            f"training diverged: loss or gradients were not finite for {bad_steps} steps in a row "
            f"(step {self.pos.global_step + 1}, lr {self.scheduler.get_last_lr()[0]:.2e}); those updates were "
            f"skipped and training stopped. Lower lr (now {self.cfg.lr}) or use compute_dtype fp32"
            + (f"; the last good checkpoint is {last}" if last else "")
        )

    def _save_checkpoint(self) -> None:
        rng_ranks = dist.gather_objects(rng_state())
        if dist.is_main():
            save_checkpoint(
                self.ckpt_root,
                self.pos,
                self.model,
                self.optimizer,
                self.scheduler,
                self.scaler if self.scaler.is_enabled() else None,
                self.cfg.keep_checkpoints,
                rng_ranks,
            )
        dist.barrier()

    def _dev_eval(self, progress) -> None:
        self.model.eval()
        try:
            loss, n = self.runner.eval_loss(dist.share_of_step(self.data.dev))
        finally:
            self.model.train()
        if dist.active():
            total, count = dist.all_reduce_sum([loss * n, n])
            loss, n = total / max(count, 1), int(count)
        step = self.pos.global_step
        rec = {"event": "dev", "step": step, "dev_loss": loss, "dev_answer_tokens": n}
        self.jlog.write(rec)
        if progress is not None:
            progress.scalar("dev/loss", loss, step)
            progress.note(f"step {step}: dev loss {loss:.4f}")
        self.dev_losses.append(rec)

    # -----------------------------------------------------------------------
    # The output folder

    def save(self) -> Path:
        """Write everything inference needs (``kner.model.artifacts``); every rank returns once it is complete."""
        if self.data.dev and (not self.dev_losses or self.dev_losses[-1]["step"] != self.pos.global_step):
            self._dev_eval(None)
        metrics = self._metrics()
        self.jlog.write(
            {
                "event": "end",
                "step": self.pos.global_step,
                **{k: v for k, v in metrics["train"].items() if not isinstance(v, (list, dict))},
            }
        )
        self.jlog.close()
        if dist.is_main():
            self._write_output(metrics)
        dist.barrier()
        return self.out

    def _metrics(self) -> dict:
        history, pos, report = self.history, self.pos, self.data.report
        time_s = sum(h["time_s"] for h in history)
        train = {
            "steps": pos.global_step,
            "steps_this_run": len(history),
            "examples_seen": pos.examples_seen,
            "tokens_seen": pos.tokens_seen,
            "layout": self.cfg.layout,
            "budget": pos.budget,
            "dtype": dtype_name(self.dtype),
            "device": str(self.device),
            "skipped_too_long": len(report.too_long),
            "skipped_too_long_ids": report.too_long[:50],
            "final_loss": history[-1]["loss"] if history else None,
            "first_loss": history[0]["loss"] if history else None,
            "oom_splits": sum(h["oom_splits"] for h in history),
            "examples_per_s": sum(h["examples"] for h in history) / time_s if time_s else None,
            "tokens_per_s": sum(h["tokens"] for h in history) / time_s if time_s else None,
            "peak_mem_gib": peak_memory_gib(),
            "elapsed_s": pos.elapsed_s,
        }
        return {
            "train": train,
            "dev": self.dev_losses[-1] if self.dev_losses else None,
            "dev_history": self.dev_losses,
            "plan": self.plan.to_dict() if self.plan else None,
        }

    def _write_output(self, metrics: dict) -> None:
        cfg, out = self.cfg, self.out
        adapter_dir: str | None
        model_dir: str | None
        if cfg.method == "full":
            self.model.save_pretrained(out / "model", safe_serialization=True)
            adapter_dir, model_dir = None, "model"
        else:
            self.model.save_pretrained(out / "adapter", safe_serialization=True)
            adapter_dir, model_dir = "adapter", ("base" if self.base_dir is not None else None)
        self.tokenizer.save_pretrained(out / "tokenizer")
        (out / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=2), encoding="utf-8")
        ModelManifest(
            load=self.load_spec,
            method=cfg.method,
            scheme=self.scheme,
            prompt=self.prompt_format,
            adapter_dir=adapter_dir,
            model_dir=model_dir,
            tokenizer_dir="tokenizer",
            extra={
                "prefix_tokens": len(self.encoder.prefix_ids),
                "eos_token_id": self.encoder.eos_id,
                "layout": cfg.layout,
                "train_steps": metrics["train"]["steps"],
                "final_loss": metrics["train"]["final_loss"],
                "dev_loss": (metrics["dev"] or {}).get("dev_loss"),
            },
        ).save(out)


class _Discard:
    """The log and progress bar of ranks other than 0: only rank 0 writes."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _maybe_next_epoch(pos: Position, n_steps: int) -> None:
    if pos.step_in_epoch >= n_steps:
        pos.epoch += 1
        pos.step_in_epoch = 0
