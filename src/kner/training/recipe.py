"""The training recipe, top to bottom: data -> model -> memory plan -> loop -> output folder.

Read ``train`` first; every helper below it does one stage. The loop is written
by hand (no ``Trainer``) because it does three things a stock loop does not:
micro-batches cut to a token budget, an OOM retry that splits a micro-batch
without changing the step's gradient, and a shared instruction prefix computed
once per micro-batch.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from kner.model import compat
from kner.errors import ConfigError, DataError, KnerError
from kner.data.example import Example
from kner.training import distributed as dist
from kner.training.config import TrainConfig

log = logging.getLogger("kner.train")


def train(config: TrainConfig, model=None, tokenizer=None, *, train_examples: list[Example] | None = None,
          dev_examples: list[Example] | None = None) -> Path:
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
    import torch

    cfg = config.validate()
    dist.init()
    out = Path(cfg.output)
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
    _seed_everything(cfg.seed)   # the same on every rank: the same LoRA initialisation

    # 1. Data: read, map to the target scheme, check labels.
    from kner.model.prompt import PromptFormat
    from kner.data.schemes import load_scheme

    scheme = load_scheme(cfg.scheme)
    prompt_format = PromptFormat.from_dict(cfg.prompt)
    train_exs = _load_examples(cfg.train, train_examples, cfg, scheme, "train")
    dev_exs = _load_examples(cfg.dev, dev_examples, cfg, scheme, "dev") if (cfg.dev or dev_examples) else []

    # 2. Tokenizer and model.
    from kner.model.loading import LoadSpec, choose_compute_dtype, dtype_name, load_model, load_tokenizer
    from kner.model.prompt import PromptEncoder

    load_spec = LoadSpec(model=cfg.model, quantize_4bit=cfg.method == "qlora", compute_dtype=cfg.compute_dtype,
                         double_quant=cfg.double_quant, quant_type=cfg.quant_type,
                         trust_remote_code=cfg.trust_remote_code, revision=cfg.revision,
                         attn_implementation=cfg.attn_implementation)
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code, cfg.revision)
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    dtype = choose_compute_dtype(cfg.compute_dtype)
    base_dir = None
    if model is None:
        model = load_model(load_spec, device_map=_default_device_map())
    else:
        base_dir = _adopt_model(model, tokenizer, cfg, out, dtype)
    model = _prepare_for_training(model, cfg, dtype)
    device = next(p.device for p in model.parameters())

    # 3. Tokenize: answer-only labels, shared prefix.
    from kner.training.batching import batch_cost, tokenize_examples

    encoder = PromptEncoder(tokenizer, prompt_format, scheme)
    train_tok, report = tokenize_examples(train_exs, encoder, cfg.max_seq_len, prompt_format.separator)
    epoch_sets = _augmented_sets(train_exs, train_tok, encoder, cfg, prompt_format.separator)
    dev_tok, dev_report = tokenize_examples(dev_exs, encoder, cfg.max_seq_len, prompt_format.separator)
    for name, rep in (("train", report), ("dev", dev_report)):
        if rep.too_long:
            log.warning("%s: skipped %d example(s) longer than max_seq_len=%d tokens (e.g. %s)", name,
                        len(rep.too_long), cfg.max_seq_len, ", ".join(rep.too_long[:5]))
        if rep.fallbacks:
            log.info("%s: %d example(s) tokenized piecewise (no clean token boundary)", name, rep.fallbacks)
    if not train_tok:
        raise DataError("no training example left (all longer than max_seq_len?)", cfg.train)

    if cfg.layout == "prefix_kv":
        log.warning("layout prefix_kv is experimental: on the 7B benchmark it ran slower than packed and needed "
                    "up to 1.6x the planned memory (docs/training.md); out-of-memory micro-batches are split "
                    "and retried")
    # 4. Memory plan: the token budget no micro-batch will exceed.
    all_train = [e for tok in epoch_sets for e in tok]
    plan, budget = _plan(model, cfg, all_train, dtype, device, len(encoder.prefix_ids))
    longest = max(batch_cost([[e]], cfg.layout) for e in all_train + dev_tok)
    if budget < longest:
        raise ConfigError(f"batch_tokens={budget} is smaller than the longest example ({longest} tokens with the "
                          f"prefix); raise batch_tokens or lower max_seq_len")

    # 5. Optimizer, schedule, loss scaling.
    params = [p for p in model.parameters() if p.requires_grad]
    dist.broadcast_params(params)
    # The same initialisation everywhere, but dropout masks of their own: one seed on every
    # rank would give each rank's n-th example the same masks (a resume restores these streams).
    torch.manual_seed(cfg.seed + dist.rank_info().rank)
    optimizer = _make_optimizer(params, cfg, device)
    steps_per_epoch = math.ceil(len(train_tok) / cfg.examples_per_step)
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(cfg.warmup_ratio * total_steps)
    scheduler = _make_scheduler(optimizer, cfg.scheduler, warmup, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16 and device.type == "cuda"))

    # 6. Resume.
    from kner.training.checkpoint import Position, latest_checkpoint, load_checkpoint, rng_state, save_checkpoint

    ckpt_root = out / "checkpoints"
    pos = Position(global_step=0, epoch=0, step_in_epoch=0, budget=budget)
    if cfg.resume:
        ck = latest_checkpoint(ckpt_root)
        if ck is None:
            log.warning("resume: no checkpoint in %s; starting from scratch", ckpt_root)
        else:
            pos = load_checkpoint(ck, model, optimizer, scheduler, scaler, rank=dist.rank_info().rank)
            if cfg.batch_tokens is None and pos.budget != budget:
                log.info("resume: keeping the checkpoint's token budget %d (plan says %d)", pos.budget, budget)
            budget = pos.budget if cfg.batch_tokens is None else budget
            log.info("resumed from %s (step %d)", ck, pos.global_step)

    # 7. The loop.
    from kner.training.forward import ModelParts
    from kner.training.progress import JsonlLog, Progress, peak_memory_gib

    row_tokens = max(cfg.row_tokens, longest) if cfg.row_tokens else None
    runner = StepRunner(ModelParts.of(model), params, scaler, dtype, device, cfg.layout, tokenizer.pad_token_id,
                        compat.attention_implementation(model.config, "sdpa"), row_tokens)
    if dist.is_main():
        cfg.save(out / "train_config.yaml")
        jlog = JsonlLog(out / "log.jsonl", resume_step=pos.global_step if cfg.resume else None)
        progress = Progress(total_steps, pos.global_step, out, cfg.progress, cfg.tensorboard)
    else:
        jlog = progress = _Discard()
    jlog.write({"event": "resume" if pos.global_step else "start", "step": pos.global_step, "budget": budget,
                "layout": cfg.layout, "dtype": dtype_name(dtype), "device": str(device),
                "train_examples": len(train_tok), "skipped_too_long": len(report.too_long),
                "planned_peak_gib": plan.estimate.allocator_peak / 2**30 if plan else None})
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    dev_losses: list[dict] = []
    history: list[dict] = []
    model.train()
    t_start = time.perf_counter() - pos.elapsed_s
    bad_steps = 0
    try:
        while pos.global_step < total_steps:
            epoch_tok = epoch_sets[pos.epoch % len(epoch_sets)]
            steps = _epoch_steps(epoch_tok, cfg, pos.epoch)
            while pos.step_in_epoch < len(steps) and pos.global_step < total_steps:
                step_examples = [epoch_tok[i] for i in steps[pos.step_in_epoch]]
                t0 = time.perf_counter()
                # Each rank computes its share over the whole step's answer tokens; the sum
                # of the ranks' gradients is then the one-process step's gradient.
                res = runner.step(dist.share_of_step(step_examples), budget,
                                  denom=sum(e.n_answer for e in step_examples))
                dist.all_reduce_grads(params)
                res = _whole_step(res)
                grad_norm = runner.finish_step(optimizer, scheduler, cfg.max_grad_norm)
                dt = time.perf_counter() - t0
                bad_steps = bad_steps + 1 if (not math.isfinite(res.loss) or runner.update_skipped) else 0
                if bad_steps >= cfg.max_nonfinite_steps:
                    last = latest_checkpoint(ckpt_root)
                    raise KnerError(
                        f"training diverged: loss or gradients were not finite for {bad_steps} steps in a row "
                        f"(step {pos.global_step + 1}, lr {scheduler.get_last_lr()[0]:.2e}); those updates were "
                        f"skipped and training stopped. Lower lr (now {cfg.lr}) or use compute_dtype fp32"
                        + (f"; the last good checkpoint is {last}" if last else ""))
                pos.global_step += 1
                pos.step_in_epoch += 1
                pos.examples_seen += res.examples
                pos.tokens_seen += res.tokens
                pos.elapsed_s = time.perf_counter() - t_start
                rec = {"step": pos.global_step, "epoch": pos.epoch, "loss": res.loss, "lr": scheduler.get_last_lr()[0],
                       "grad_norm": grad_norm, "examples": res.examples, "tokens": res.tokens,
                       "computed_tokens": res.computed, "answer_tokens": res.answer_tokens,
                       "micro_batches": res.micro_batches, "oom_splits": res.oom_splits,
                       "tokens_per_s": res.tokens / dt, "examples_per_s": res.examples / dt,
                       "peak_mem_gib": dist.all_reduce_max(peak_memory_gib()), "time_s": dt,
                       "loss_scale": runner.scale()}
                history.append(rec)
                jlog.write(rec)
                progress.update(rec)
                for s in res.split_notes:
                    progress.note(s)
                if dev_tok and cfg.eval_every and pos.global_step % cfg.eval_every == 0:
                    dev_losses.append(_dev_eval(runner, dev_tok, budget, pos.global_step, jlog, progress, model))
                if cfg.save_every and pos.global_step % cfg.save_every == 0 and pos.global_step < total_steps:
                    _maybe_next_epoch(pos, len(steps))
                    rng_ranks = dist.gather_objects(rng_state())
                    if dist.is_main():
                        save_checkpoint(ckpt_root, pos, model, optimizer, scheduler,
                                        scaler if scaler.is_enabled() else None, cfg.keep_checkpoints, rng_ranks)
                    dist.barrier()
            _maybe_next_epoch(pos, len(steps))
    finally:
        progress.close()

    # 8. Output folder: everything inference needs.
    if dev_tok and (not dev_losses or dev_losses[-1]["step"] != pos.global_step):
        dev_losses.append(_dev_eval(runner, dev_tok, budget, pos.global_step, jlog, None, model))
    metrics = _metrics(history, pos, plan, budget, cfg, report, dev_losses, dtype, device)
    jlog.write({"event": "end", "step": pos.global_step, **{k: v for k, v in metrics["train"].items()
                                                             if not isinstance(v, (list, dict))}})
    jlog.close()
    if dist.is_main():
        _write_output(out, model, tokenizer, cfg, load_spec, scheme, prompt_format, encoder, metrics, base_dir)
    dist.barrier()   # no rank returns before the folder is complete
    return out


class _Discard:
    """The log and progress bar of ranks other than 0: only rank 0 writes."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _whole_step(res: "StepResult") -> "StepResult":
    """A rank's share of the step -> the whole step's numbers (sums over the ranks)."""
    if not dist.active():
        return res
    keys = ("loss", "examples", "tokens", "computed", "answer_tokens", "micro_batches", "oom_splits")
    total = dict(zip(keys, dist.all_reduce_sum([getattr(res, k) for k in keys])))
    if not dist.is_main():
        for note in res.split_notes:   # rank 0 prints its own through the progress bar
            log.warning("rank %d: %s", dist.rank_info().rank, note)
    return StepResult(**{k: v if k == "loss" else int(v) for k, v in total.items()},
                      split_notes=res.split_notes if dist.is_main() else [])


# ---------------------------------------------------------------------------
# The step: micro-batches, atomic gradients, OOM split.


@dataclass
class StepResult:
    loss: float = 0.0
    examples: int = 0
    tokens: int = 0
    computed: int = 0
    answer_tokens: int = 0
    micro_batches: int = 0
    oom_splits: int = 0
    split_notes: list[str] = field(default_factory=list)


class StepRunner:
    """Runs one optimizer step's micro-batches.

    The step's loss is the mean cross-entropy over *all* its answer tokens: each
    micro-batch contributes ``sum_ce / answer_tokens_of_step``, so the summed
    gradient does not depend on how the step was cut. Each micro-batch's gradient
    is computed with ``torch.autograd.grad`` and added to ``.grad`` only once it is
    complete, so an OOM in the middle of a backward pass leaves nothing half-added,
    and the retry on two halves gives the same gradient.
    """

    def __init__(self, parts, params, scaler, dtype, device, layout, pad_id, attn_impl, row_tokens=None):
        self.update_skipped = False
        import torch

        self.parts, self.params, self.scaler = parts, params, scaler
        self.dtype, self.device, self.layout = dtype, device, layout
        self.pad_id = pad_id if pad_id is not None else 0
        self.attn_impl = attn_impl
        self.row_tokens = row_tokens
        self.use_autocast = dtype != torch.float32
        self.last_oom: str | None = None

    def autocast(self):
        import torch

        if self.use_autocast:
            return torch.autocast(self.device.type, dtype=self.dtype)
        return contextlib.nullcontext()

    def scale(self) -> float | None:
        return float(self.scaler.get_scale()) if self.scaler.is_enabled() else None

    def step(self, examples, budget: int, denom: int | None = None) -> StepResult:
        """``denom``: answer tokens of the whole step when ``examples`` is one rank's share of it."""
        from kner.model.loading import release_caches
        from kner.training.batching import micro_batches

        res = StepResult()
        if not examples:   # a rank's share of a step with fewer examples than ranks
            return res
        denom = sum(e.n_answer for e in examples) if denom is None else denom
        pending = micro_batches(examples, budget, self.layout, self.row_tokens)
        prefix_caches: list = []
        prefix = self._shared_prefix(examples, prefix_caches) if self.layout == "prefix_kv" else None
        loss_sum = 0.0
        try:
            while pending:
                batch = pending.pop(0)
                done = self._try_micro_batch(batch, denom, prefix)
                if done is None:   # out of memory: retry the two halves in its place
                    from kner.training.batching import split_in_two

                    if sum(map(len, batch)) < 2:
                        raise KnerError(f"one example of {batch[0][0].length} tokens does not fit in GPU memory "
                                        f"({self.last_oom}); lower max_seq_len or the LoRA rank, or free the GPU")
                    a, b = split_in_two(batch)
                    pending[:0] = [a, b]
                    res.oom_splits += 1
                    res.split_notes.append(f"out of memory on a micro-batch of {sum(map(len, batch))} examples "
                                           f"({self.last_oom}); retrying as {sum(map(len, a))} + {sum(map(len, b))}")
                    continue
                mb_loss, mb = done
                loss_sum += mb_loss
                res.examples += mb.n_examples
                res.tokens += mb.n_tokens
                res.computed += mb.n_computed
                res.answer_tokens += mb.n_answer
                res.micro_batches += 1
            if prefix is not None:
                self._add_grads(prefix.backward(self.params))
                res.computed += examples[0].prefix_len
        finally:
            release_caches(prefix_caches)
        res.loss = loss_sum / max(denom, 1)
        return res

    def _shared_prefix(self, examples, keep: list):
        """The step's prefix pass (layout prefix_kv); see ``kner.training.forward.SharedPrefix``."""
        import torch

        from kner.training.forward import SharedPrefix

        e = examples[0]
        ids = torch.tensor(e.input_ids[:e.prefix_len], device=self.device)
        with self.autocast():
            return SharedPrefix(self.parts, ids, keep, grad=torch.is_grad_enabled())

    def _add_grads(self, grads) -> None:
        for p, g in zip(self.params, grads):
            if g is not None:
                p.grad = g if p.grad is None else p.grad.add_(g)

    def _try_micro_batch(self, batch, denom: int, prefix=None):
        import torch

        from kner.model.loading import release_caches
        from kner.training.batching import collate
        from kner.training.forward import answer_loss_sum

        oom = None
        caches: list = []
        try:
            mb = collate(batch, self.layout, self.pad_id, self.attn_impl, self.dtype).to(self.device)
            with self.autocast():
                loss_sum = answer_loss_sum(self.parts, mb, caches, prefix)
            loss = loss_sum / max(denom, 1)
            leaves = prefix.flat_leaves() if prefix is not None else []
            grads = torch.autograd.grad(self.scaler.scale(loss), self.params + leaves, allow_unused=True)
            # Nothing is added before the whole backward succeeded: an OOM above leaves no trace.
            self._add_grads(grads[:len(self.params)])
            if prefix is not None:
                prefix.accumulate(grads[len(self.params):])
            return float(loss_sum.detach()), mb
        except torch.OutOfMemoryError as err:
            oom = str(err).splitlines()[0] if str(err) else "out of memory"
            # leave the except block first, so the traceback frees its tensors
        finally:
            release_caches(caches)
        self.last_oom = oom
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None

    def finish_step(self, optimizer, scheduler, max_grad_norm: float) -> float | None:
        import torch

        self.scaler.unscale_(optimizer)
        # The norm is always computed (inf = no clipping): it is how a NaN gradient is seen.
        clip = max_grad_norm if max_grad_norm and max_grad_norm > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        self.update_skipped = False
        if self.scaler.is_enabled():
            self.scaler.step(optimizer)  # skips the update itself on inf/NaN and lowers the scale
            self.scaler.update()
        elif math.isfinite(norm):
            optimizer.step()
        else:
            # bf16/fp32 have no loss scaler: without this one NaN step would poison every weight.
            self.update_skipped = True
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return norm if math.isfinite(norm) else None

    def eval_loss(self, examples, budget: int) -> tuple[float, int]:
        import torch

        from kner.model.loading import release_caches
        from kner.training.batching import collate, micro_batches
        from kner.training.forward import answer_loss_sum

        total, n = 0.0, 0
        with torch.no_grad(), self.autocast():
            for i in range(0, len(examples), 64):
                chunk = examples[i:i + 64]
                prefix_caches: list = []
                prefix = self._shared_prefix(chunk, prefix_caches) if self.layout == "prefix_kv" else None
                for batch in micro_batches(chunk, budget, self.layout, self.row_tokens):
                    mb = collate(batch, self.layout, self.pad_id, self.attn_impl, self.dtype).to(self.device)
                    caches: list = []
                    total += float(answer_loss_sum(self.parts, mb, caches, prefix))
                    release_caches(caches)
                    n += mb.n_answer
                release_caches(prefix_caches)
        return total / max(n, 1), n


# ---------------------------------------------------------------------------
# Stages.


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed)
    except ImportError:
        pass


def _default_device_map():
    import torch

    # Under data parallelism the current device is this rank's GPU (set by dist.init).
    return {"": torch.cuda.current_device()} if torch.cuda.is_available() else None


def _load_examples(path, given, cfg: TrainConfig, scheme, what: str) -> list[Example]:
    from kner.data.example import read_jsonl
    from kner.data.schemes import Mapping, map_examples

    if given is not None:
        exs = list(given)
        where = f"<{what} examples>"
    else:
        if not path:
            raise ConfigError(f"no {what} data: pass --{what} FILE.jsonl")
        exs = read_jsonl(path)
        where = str(path)
    if not exs:
        raise DataError(f"no examples in the {what} data", where)
    if cfg.map:
        exs, rep = map_examples(exs, Mapping.load(cfg.map, scheme.name), cfg.map_fallback)
        if rep.dropped:
            log.info("%s: dropped entities by mapping: %s", what, dict(rep.dropped))
        if rep.fallback:
            log.info("%s: entities mapped by the fallback label: %s", what, dict(rep.fallback))
    unknown: dict[str, int] = {}
    fixed = []
    for ex in exs:
        ents = []
        for e in ex.entities:
            lab = scheme.canonical(e.label)
            if lab is None:
                unknown[e.label] = unknown.get(e.label, 0) + 1
            else:
                ents.append(e if lab == e.label else type(e)(e.start, e.end, lab, e.text))
        fixed.append(Example(ex.id, ex.text, ents, ex.meta) if ents != ex.entities else ex)
    if unknown:
        raise DataError(f"labels not in scheme {scheme.name!r}: "
                        + ", ".join(f"{k} x{v}" for k, v in sorted(unknown.items()))
                        + "; pass --map SOURCE_SCHEME to map them, or choose --scheme", where)
    return fixed


def _adopt_model(model, tokenizer, cfg: TrainConfig, out: Path, dtype) -> Path | None:
    """A model given as an object: save its base weights if no folder holds them, quantize for qlora."""
    from kner.model.loading import quantize_4bit_inplace

    base_dir = None
    if cfg.method != "full" and not Path(cfg.model).is_dir():
        base_dir = out / "base"
        if not getattr(model, "is_loaded_in_4bit", False):
            if dist.is_main():
                model.save_pretrained(base_dir, safe_serialization=True)
                tokenizer.save_pretrained(base_dir)
        else:
            log.warning("the given model is already quantized and config.model is not a folder: "
                        "the output folder will not hold the base weights")
            base_dir = None
    import torch

    if torch.cuda.is_available() and next(model.parameters()).device.type == "cpu":
        model.to("cuda")
    if cfg.method == "qlora" and not getattr(model, "is_loaded_in_4bit", False):
        quantize_4bit_inplace(model, dtype, cfg.double_quant, cfg.quant_type)
    elif cfg.method == "lora":
        model.to(dtype)
    if cfg.attn_implementation and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation(cfg.attn_implementation)
        except (ValueError, ImportError) as err:
            log.warning("cannot switch attention to %s: %s", cfg.attn_implementation, err)
    return base_dir


def _prepare_for_training(model, cfg: TrainConfig, dtype):
    """Freeze, gradient checkpointing, LoRA (or everything trainable for ``full``)."""
    import torch

    ckpt_kwargs = {"use_reentrant": False}   # needed for autograd.grad and for the prefix KV to carry gradients
    if cfg.method == "full":
        model.float()   # fp32 master weights; compute runs under autocast
        for p in model.parameters():
            p.requires_grad_(True)
        if cfg.gradient_checkpointing:
            compat.enable_checkpointing(model, **ckpt_kwargs)
        model.config.use_cache = False
        return model

    from peft import LoraConfig

    if getattr(model, "is_loaded_in_4bit", False):
        model = compat.prepare_kbit_model(model, cfg.gradient_checkpointing, **ckpt_kwargs)
        # prepare_model_for_kbit_training upcasts every non-4-bit weight to fp32. For the
        # embeddings and LM head (0.5 GB at 7B) that doubles their memory and turns the
        # whole residual stream fp32; they are frozen, so keep them in the compute dtype.
        for mod in (model.get_input_embeddings(), model.get_output_embeddings()):
            if mod is not None:
                mod.to(dtype)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        if cfg.gradient_checkpointing:
            compat.enable_checkpointing(model, **ckpt_kwargs)
    model.config.use_cache = False
    torch.manual_seed(cfg.seed)   # LoRA initialisation
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.target_modules, bias="none", task_type="CAUSAL_LM")
    try:
        model = compat.get_peft_model(model, lora)
    except ValueError as err:
        raise ConfigError(f"LoRA: {err}") from None
    for p in model.parameters():   # trainable weights in fp32 (GradScaler and AdamW need it)
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def _plan(model, cfg: TrainConfig, train_tok, dtype, device, prefix_len: int):
    from kner.training.batching import batch_cost
    from kner.training.memory import ModelShape, device_capacity, plan_memory

    longest = max(batch_cost([[e]], cfg.layout) for e in train_tok)
    # Share of computed tokens that reach the LM head; prefix_kv rows hold no prefix.
    own = sum(e.suffix_len for e in train_tok) + (0 if cfg.layout == "prefix_kv" else prefix_len)
    answer_fraction = sum(e.n_answer for e in train_tok) / max(1, own)
    on_gpu = device.type == "cuda"
    cap = device_capacity(cfg.gpu_memory)
    if on_gpu and cfg.gpu_memory:
        import torch
        total = torch.cuda.get_device_properties(device).total_memory
        # Enforce the cap on the allocator too, so a 16 GB card can be emulated on a bigger one.
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
    try:
        plan = plan_memory(ModelShape.from_config(model.config), cap, budget=cfg.batch_tokens, min_tokens=longest,
                           max_budget=max(cfg.max_batch_tokens, longest), method=cfg.method,
                           compute_bytes=dtype.itemsize, lora_r=cfg.lora_r, target_modules=cfg.target_modules,
                           optimizer=cfg.optimizer, layout=cfg.layout, prefix_len=prefix_len,
                           answer_fraction=answer_fraction, double_quant=cfg.double_quant,
                           gradient_checkpointing=cfg.gradient_checkpointing, on_gpu=on_gpu,
                           row_tokens=max(cfg.row_tokens, longest) if cfg.row_tokens else None)
    except KnerError:
        if cfg.batch_tokens is None and on_gpu:
            raise
        plan = None
    budget = cfg.batch_tokens or (plan.budget if plan else max(cfg.max_batch_tokens, longest))
    if not on_gpu and not cfg.batch_tokens:
        # Nothing to protect on CPU, but long packed rows cost attention over masked pairs
        # (quadratic) and the CPU has no fused kernel for it: keep rows short.
        budget = max(min(budget, 1024), longest)
    if plan is not None:
        e = plan.estimate
        log.info("memory plan: budget %d tokens, predicted peak %.2f GiB allocator / %.2f GiB device (cap %.2f GiB)",
                 budget, e.allocator_peak / 2**30, e.device_total / 2**30, cap / 2**30)
        if on_gpu and not plan.fits:
            log.warning("batch_tokens=%d is predicted to need %.2f GiB of %.2f GiB; OOMs will be split and retried",
                        budget, e.device_total / 2**30, cap / 2**30)
    return plan, budget


def _make_optimizer(params, cfg: TrainConfig, device):
    import torch

    if cfg.optimizer in ("paged_adamw_8bit", "adamw_8bit"):
        try:
            bnb = compat.bitsandbytes()
            cls = bnb.optim.PagedAdamW8bit if cfg.optimizer == "paged_adamw_8bit" else bnb.optim.AdamW8bit
            if device.type != "cuda" and cfg.optimizer == "paged_adamw_8bit":
                log.info("paged optimizers need CUDA; on %s the 8-bit AdamW runs unpaged", device.type)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Paged optimizers are not supported")
                return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        except (ImportError, RuntimeError) as err:
            log.warning("bitsandbytes %s unavailable (%s); falling back to torch AdamW", cfg.optimizer, err)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _make_scheduler(optimizer, kind: str, warmup: int, total: int):
    from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                              get_linear_schedule_with_warmup)

    if kind == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, total)
    if kind == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total)
    return get_constant_schedule_with_warmup(optimizer, warmup)


def _augmented_sets(train_exs, train_tok, encoder, cfg: TrainConfig, separator: str) -> list:
    """The tokenized training sets epochs cycle through (``augment``); ``[train_tok]`` without it."""
    from kner.data.augment import AugmentConfig, training_variants
    from kner.training.batching import tokenize_examples

    aug = AugmentConfig.from_dict(cfg.augment)
    if not aug.active:
        return [train_tok]
    t0 = time.perf_counter()
    sets, changed, copy = [], 0, 0
    for exs in training_variants(train_exs, aug, cfg.seed):
        if exs is train_exs:   # the original, already tokenized
            sets.append(train_tok)
            continue
        copy += 1
        changed += sum(1 for a, b in zip(train_exs, exs) if a is not b)
        tok, rep = tokenize_examples(exs, encoder, cfg.max_seq_len, separator)
        if rep.too_long:
            log.warning("augmented copy %d: skipped %d example(s) longer than max_seq_len=%d tokens", copy,
                        len(rep.too_long), cfg.max_seq_len)
        sets.append(tok)
    log.info("augment: %d copies of the training set with mentions replaced (p=%.2f), %d of %d sentences "
             "changed, tokenized in %.1f s", aug.variants, aug.mention_replace, changed,
             len(train_exs) * aug.variants, time.perf_counter() - t0)
    return sets


def _epoch_steps(train_tok, cfg: TrainConfig, epoch: int) -> list[list[int]]:
    from kner.training.batching import epoch_steps

    return epoch_steps([e.length for e in train_tok], cfg.examples_per_step, cfg.seed, epoch, cfg.uses_group_by_length)


def _maybe_next_epoch(pos, n_steps: int) -> None:
    if pos.step_in_epoch >= n_steps:
        pos.epoch += 1
        pos.step_in_epoch = 0


def _dev_eval(runner: StepRunner, dev_tok, budget: int, step: int, jlog, progress, model) -> dict:
    model.eval()
    try:
        loss, n = runner.eval_loss(dist.share_of_step(dev_tok), budget)
    finally:
        model.train()
    if dist.active():
        total, n = dist.all_reduce_sum([loss * n, n])
        loss, n = total / max(n, 1), int(n)
    rec = {"event": "dev", "step": step, "dev_loss": loss, "dev_answer_tokens": n}
    jlog.write(rec)
    if progress is not None:
        progress.scalar("dev/loss", loss, step)
        progress.note(f"step {step}: dev loss {loss:.4f}")
    return rec


def _metrics(history, pos, plan, budget, cfg, report, dev_losses, dtype, device) -> dict:
    from kner.model.loading import dtype_name
    from kner.training.progress import peak_memory_gib

    time_s = sum(h["time_s"] for h in history)
    train = {"steps": pos.global_step, "steps_this_run": len(history), "examples_seen": pos.examples_seen,
             "tokens_seen": pos.tokens_seen, "layout": cfg.layout, "budget": budget, "dtype": dtype_name(dtype),
             "device": str(device), "skipped_too_long": len(report.too_long),
             "skipped_too_long_ids": report.too_long[:50],
             "final_loss": history[-1]["loss"] if history else None,
             "first_loss": history[0]["loss"] if history else None,
             "oom_splits": sum(h["oom_splits"] for h in history),
             "examples_per_s": sum(h["examples"] for h in history) / time_s if time_s else None,
             "tokens_per_s": sum(h["tokens"] for h in history) / time_s if time_s else None,
             "peak_mem_gib": peak_memory_gib(), "elapsed_s": pos.elapsed_s}
    return {"train": train, "dev": dev_losses[-1] if dev_losses else None, "dev_history": dev_losses,
            "plan": plan.to_dict() if plan else None}


def _write_output(out: Path, model, tokenizer, cfg, load_spec, scheme, prompt_format, encoder, metrics, base_dir):
    import json

    from kner.model.artifacts import ModelManifest

    if cfg.method == "full":
        model.save_pretrained(out / "model", safe_serialization=True)
        adapter_dir, model_dir = None, "model"
    else:
        model.save_pretrained(out / "adapter", safe_serialization=True)
        adapter_dir, model_dir = "adapter", ("base" if base_dir is not None else None)
    tokenizer.save_pretrained(out / "tokenizer")
    (out / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=2), encoding="utf-8")
    ModelManifest(load=load_spec, method=cfg.method, scheme=scheme, prompt=prompt_format, adapter_dir=adapter_dir,
                  model_dir=model_dir, tokenizer_dir="tokenizer",
                  extra={"prefix_tokens": len(encoder.prefix_ids), "eos_token_id": encoder.eos_id,
                         "layout": cfg.layout, "train_steps": metrics["train"]["steps"],
                         "final_loss": metrics["train"]["final_loss"],
                         "dev_loss": (metrics["dev"] or {}).get("dev_loss")}).save(out)
