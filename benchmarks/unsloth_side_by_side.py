"""Training side by side: kner's defaults, Unsloth, and TRL's ``SFTTrainer`` (issue 16).

The same random-weight LLaMA-2-7B checkpoint (saved once, fp16 safetensors; each side loads it
with its own loader and NF4 double quantization), the same KMOU examples tokenized once by kner's
``PromptEncoder`` (default prompt; TRL and Unsloth get them as ``input_ids`` + ``completion_mask``,
so every side trains on the same tokens with loss on the answer only), LoRA r=16, alpha 32 on all
linear layers, ``paged_adamw_8bit``, lr 2e-4, gradient checkpointing, one epoch.

* ``kner``: ``kner.training.train`` with its defaults (planned micro-batch budget, packed rows with
  a block-diagonal mask, 16 examples a step, LoRA dropout 0.05) and ``gpu_memory`` = the cap;
* ``unsloth``: ``FastLanguageModel.from_pretrained(load_in_4bit=True)``, ``get_peft_model`` with
  its fastest settings (dropout 0, ``use_gradient_checkpointing="unsloth"``), its patched
  ``SFTTrainer`` with ``packing=True`` (best-fit-decreasing packing, padding-free);
* ``trl``: ``from_pretrained`` + ``BitsAndBytesConfig``, ``SFTTrainer(peft_config=...)`` with
  ``packing=True`` (``bfd``: padding-free) and completion-only loss, what LLaMA-Factory does.

TRL and Unsloth run 2 packed rows of up to 2,048 tokens a micro-batch and 4 micro-batches a step
(Unsloth's notebook defaults; about 38 examples a step here). Each side runs in its own process
(clean peak-memory counters, one side's failure is recorded and the others still run). Reported per
side: examples/s and answer tokens/s over the steps after the first two (compilation, allocator
warm-up), peak reserved GiB during training (loading excluded: counters reset before training), and
the loss of the same 8 examples before any update (answer tokens only, one example at a time,
through the side's own forward: equal losses mean equal weights and objective). Modes: ``t4``
(fp16, flash and cuDNN SDPA off, allocator capped at 15 GiB) and ``full`` (bf16, no cap, all SDPA
back ends), where model FLOPs utilisation = 6 x parameters x tokens/s over the H200's 989 dense
bf16 TFLOP/s.

    python3 benchmarks/unsloth_side_by_side.py --data .device/kmou_spacy19.jsonl \\
        --tokenizer .device/infer/tokenizer --site /tmp/sbs --out $OUT/unsloth_side_by_side.json
    python benchmarks/unsloth_side_by_side.py --tiny --n 48 --out /tmp/sbs.json   # CPU smoke test

The wheels (``.whl/sbs``, 30 MB; the device has torch, transformers, peft, accelerate, pyarrow, triton)::

    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        --abi cp312 --abi abi3 --abi none -d .whl/sbs "unsloth_zoo==2026.10.9" "trl==1.15.0" \
        "datasets==4.8.5" dill multiprocess xxhash aiohttp multidict yarl propcache frozenlist aiosignal \
        aiohappyeyeballs attrs pandas python-dateutil pytz tzdata six sentencepiece psutil protobuf torchao \
        hf_transfer tyro docstring_parser shtab typeguard json5 nest_asyncio structlog cut_cross_entropy fsspec
    pip download --no-deps "unsloth==2026.10.9" -d /tmp/u && unzip -q /tmp/u/unsloth-*.whl -d /tmp/u/x
    tar -C /tmp/u/x -czf .whl/sbs/unsloth-2026.10.9-trimmed.tar.gz unsloth unsloth-2026.10.9.dist-info
    # on the device machine: unpack both into --site
    pip install -q --no-index --no-deps --target /tmp/sbs .whl/sbs/*.whl
    tar -xzf .whl/sbs/unsloth-2026.10.9-trimmed.tar.gz -C /tmp/sbs

(The Unsloth wheel is 28.6 MB, nearly all of it ``studio/``, a web UI it does not import for
training.) ``--site``: a folder with Unsloth, unsloth_zoo, TRL and their dependencies, appended to
``sys.path`` of the TRL and Unsloth processes only (what the machine has wins; kner's process
never sees TRL's ``datasets`` pin).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
GiB = 2**30
T0 = time.perf_counter()
H200_BF16_DENSE_FLOPS = 989e12
WARMUP_STEPS = 2
LOSS_CHECK = 8


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# -- shared by every side ---------------------------------------------------------------------------


def emulate(mode: str):
    """The device settings of ``mode``; returns (device, dtype, cap GiB or None)."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu"), torch.float32, None
    if mode == "t4":
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_cudnn_sdp(False)
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, 15 * GiB / total))
        return torch.device("cuda", 0), torch.float16, 15.0
    return torch.device("cuda", 0), torch.bfloat16, None


def tokenized(args, tok):
    """kner's tokenization of the first ``--n`` examples: the same token ids for every side."""
    sys.path.insert(0, str(ROOT / "src"))
    from kner.data.example import read_jsonl
    from kner.data.schemes import load_scheme
    from kner.model.prompt import PromptEncoder, PromptFormat
    from kner.training.batching import tokenize_examples

    examples = read_jsonl(args.data)[: args.n]
    toks, _ = tokenize_examples(examples, PromptEncoder(tok, PromptFormat(), load_scheme("spacy19")), 1024)
    return examples, toks


def loss_check(model, toks, device, dtype) -> float:
    """Mean answer-token loss of the first examples, one at a time, no update, no dropout."""
    import torch

    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        for t in toks[:LOSS_CHECK]:
            ids = torch.tensor([t.input_ids], device=device)
            labels = ids.clone()
            labels[:, : t.prompt_len] = -100
            out = model(input_ids=ids, labels=labels)
            total += float(out.loss) * t.n_answer
            n += t.n_answer
    model.train(was_training)
    return total / n


def hf_dataset(toks):
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "input_ids": [list(t.input_ids) for t in toks],
            "completion_mask": [[0] * t.prompt_len + [1] * t.n_answer for t in toks],
        }
    )


def sft_args(args, out_dir, dtype, on_gpu):
    """TRL's config for both TRL and Unsloth: packed, padding-free, completion-only loss."""
    import torch
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        num_train_epochs=1,
        learning_rate=2e-4,
        lr_scheduler_type="linear",
        warmup_steps=0,
        optim="paged_adamw_8bit" if on_gpu else "adamw_torch",
        fp16=dtype == torch.float16,
        bf16=dtype == torch.bfloat16,
        max_length=2048,
        packing=True,
        packing_strategy="bfd",
        completion_only_loss=True,
        gradient_checkpointing=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        dataloader_num_workers=0,
        dataset_num_proc=1,
    )


class StepClock:
    """A ``TrainerCallback`` timing optimizer steps (synchronised) and a collator wrapper counting
    the examples it batches (packed rows: starts of ``position_ids``)."""

    def __init__(self, device):
        self.device = device
        self.times: list[float] = []
        self.examples_at_end: list[int] = []
        self.examples = 0
        self._t = 0.0

    def _sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def wrap(self, collator):
        def counted(features):
            batch = collator(features)
            pos = batch.get("position_ids")
            self.examples += int((pos == 0).sum()) if pos is not None else int(batch["input_ids"].shape[0])
            return batch

        return counted

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                clock._sync()
                clock._t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                clock._sync()
                clock.times.append(time.perf_counter() - clock._t)
                clock.examples_at_end.append(clock.examples)

        return _CB()

    def rates(self, toks) -> dict:
        """Steps after the warm-up ones. The data loader fetches one batch ahead, so a step's count
        is shifted by one micro-batch; over the timed steps that is at most one micro-batch."""
        k = min(WARMUP_STEPS, len(self.times) - 1)
        secs = sum(self.times[k:])
        ex = self.examples_at_end[-1] - self.examples_at_end[k - 1] if k else self.examples_at_end[-1]
        ex = min(ex, len(toks))
        return _rates(ex, secs, toks, len(self.times) - k)


def _rates(examples: int, seconds: float, toks, steps: int) -> dict:
    mean_tok = sum(t.length for t in toks) / len(toks)
    mean_ans = sum(t.n_answer for t in toks) / len(toks)
    return {
        "timed_steps": steps,
        "timed_examples": examples,
        "timed_seconds": round(seconds, 3),
        "examples_per_s": examples / seconds,
        "tokens_per_s": examples * mean_tok / seconds,
        "answer_tokens_per_s": examples * mean_ans / seconds,
    }


def peak(device) -> dict:
    import torch

    if device.type != "cuda":
        return {}
    return {
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GiB, 3),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GiB, 3),
    }


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# -- the sides (each in its own process) ------------------------------------------------------------


def side_kner(args, device, dtype, cap) -> dict:
    import torch

    from kner.model.loading import load_tokenizer
    from kner.training.config import TrainConfig
    from kner.training.recipe import train

    tok = load_tokenizer(args.ckpt)
    examples, toks = tokenized(args, tok)
    tag = "".join(c if c.isalnum() else "_" for c in "_".join(f"{k}{v}" for k, v in args.overrides.items()))
    out = Path(args.work) / f"kner_{args.mode}{'_' + tag if tag else ''}"  # one fresh folder per variant
    cfg = TrainConfig(
        model=args.ckpt,
        output=str(out),
        method="qlora" if device.type == "cuda" else "lora",
        compute_dtype={torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32"),
        gpu_memory=f"{cap}GiB" if cap else None,
        optimizer="paged_adamw_8bit" if device.type == "cuda" else "adamw",
        save_every=0,
        progress=False,
        tensorboard=False,
        **args.overrides,
    )
    # kner's own loader (what train() calls for a folder), done here so the objective check sees the
    # model kner trains; train() then adopts it as is (a folder holds it, it is 4-bit already).
    from kner.model.loading import load_model
    from kner.training import setup

    model = load_model(setup.load_spec(cfg), device_map={"": 0} if device.type == "cuda" else None)
    first = loss_check(model, toks, device, dtype)
    reset_peak(device)
    t = time.perf_counter()
    run = train(cfg, model=model, tokenizer=tok, train_examples=examples)
    wall = time.perf_counter() - t
    hist = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    start = next((h for h in hist if h.get("event") == "start"), {})
    hist = [h for h in hist if "event" not in h and "examples" in h]  # the optimizer steps
    timed = hist[WARMUP_STEPS:] or hist
    secs = sum(h["time_s"] for h in timed)
    res = _rates(sum(h["examples"] for h in timed), secs, toks, len(timed))
    # kner's log counts the tokens of the very examples of each step: use them, not the set's means.
    res["tokens_per_s"] = sum(h["tokens"] for h in timed) / secs
    res["answer_tokens_per_s"] = sum(h["answer_tokens"] for h in timed) / secs
    metrics = json.loads((run / "metrics.json").read_text())["train"]
    res.update(
        first_batch_loss=first,
        steps=len(hist),
        first_logged_loss=hist[0]["loss"] if hist else None,
        train_wall_s=round(wall, 1),
        budget=metrics.get("budget"),
        # Where the peak is reached: kner's log keeps the running peak after each step, next to the plan.
        planned_peak_gib=start.get("planned_peak_gib"),
        peak_gib_after_steps=[round(h["peak_mem_gib"], 3) for h in hist[:4]],
        micro_batches_per_step=[h["micro_batches"] for h in hist[:4]],
        examples_per_step=cfg.examples_per_step,
        **peak(device),
    )
    return res


def side_unsloth(args, device, dtype, cap) -> dict:
    import unsloth  # noqa: F401  first: it patches transformers and TRL on import
    from trl import SFTTrainer
    from unsloth import FastLanguageModel

    model, tok = FastLanguageModel.from_pretrained(
        model_name=args.ckpt,
        max_seq_length=2048,
        dtype=dtype,
        load_in_4bit=device.type == "cuda",
        local_files_only=True,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        bias="none",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        use_gradient_checkpointing="unsloth",
        random_state=0,
    )
    _, toks = tokenized(args, tok)
    first = loss_check(model, toks, device, dtype)
    clock = StepClock(device)
    trainer = sft_trainer(SFTTrainer, args, model, tok, toks, device, dtype, clock)
    return _train_sft(trainer, clock, toks, device, first)


def side_trl(args, device, dtype, cap) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTTrainer

    tok = AutoTokenizer.from_pretrained(args.ckpt)
    quant = (
        BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        if device.type == "cuda"
        else None
    )
    model = AutoModelForCausalLM.from_pretrained(
        args.ckpt,
        quantization_config=quant,
        dtype=dtype if device.type == "cuda" else torch.float32,
        attn_implementation="sdpa",
        device_map={"": 0} if device.type == "cuda" else None,
    )
    _, toks = tokenized(args, tok)
    clock = StepClock(device)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = sft_trainer(SFTTrainer, args, model, tok, toks, device, dtype, clock, peft_config=lora)
    # These LoRA weights come out in bf16 whatever `dtype` says (peft or TRL's preparation: not traced),
    # and fp16 loss scaling then fails
    # ("_amp_foreach_non_finite_check_and_unscale_cuda" not implemented for 'BFloat16'); LLaMA-Factory
    # upcasts trainable parameters to fp32 for the same reason, and so does kner (training/setup.py).
    for prm in trainer.model.parameters():
        if prm.requires_grad:
            prm.data = prm.data.float()
    first = loss_check(trainer.model, toks, device, dtype)
    return _train_sft(trainer, clock, toks, device, first)


def sft_trainer(cls, args, model, tok, toks, device, dtype, clock: StepClock, **extra):
    """TRL's (or Unsloth's patched) ``SFTTrainer`` on the shared tokens, timed by ``clock``."""
    return cls(
        model=model,
        processing_class=tok,
        train_dataset=hf_dataset(toks),
        args=sft_args(args, Path(args.work) / f"{args.side}_{args.mode}", dtype, device.type == "cuda"),
        callbacks=[clock.callback()],
        **extra,
    )


def _train_sft(trainer, clock: StepClock, toks, device, first: float) -> dict:
    trainer.data_collator = clock.wrap(trainer.data_collator)  # read when train() builds its loader
    reset_peak(device)
    t = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    res = clock.rates(toks)
    res.update(
        first_batch_loss=first,
        steps=len(clock.times),
        first_logged_loss=losses[0] if losses else None,
        train_wall_s=round(wall, 1),
        examples_seen=clock.examples,
        **peak(device),
    )
    return res


SIDES = {"kner": side_kner, "unsloth": side_unsloth, "trl": side_trl}


def run_side(args) -> None:
    if args.side != "kner" and args.site:
        sys.path.append(args.site)  # after the machine's own packages: only what it lacks comes from here
    sys.path.insert(0, str(ROOT / "src"))
    if args.side == "kner":  # what the kner command line does before torch touches CUDA
        from kner.model.oom import prefer_expandable_segments

        prefer_expandable_segments()
    device, dtype, cap = emulate(args.mode)
    import torch

    log(f"{args.side} ({args.mode}): {device}, {dtype}")
    res = {"side": args.side, "mode": args.mode, "dtype": str(dtype).replace("torch.", ""), "cap_gib": cap}
    res.update(SIDES[args.side](args, device, dtype, cap))
    if device.type == "cuda":
        params = args.params or 6.74e9
        res["model_tflops"] = 6 * params * res["tokens_per_s"] / 1e12
        res["mfu_h200_bf16"] = 6 * params * res["tokens_per_s"] / H200_BF16_DENSE_FLOPS
    res["versions"] = {"torch": torch.__version__}
    for mod in ("transformers", "peft", "trl", "unsloth", "bitsandbytes"):
        if mod in sys.modules:
            res["versions"][mod] = getattr(sys.modules[mod], "__version__", "?")
    Path(args.result).write_text(json.dumps(res, indent=1))


# -- the checkpoint and the driver ------------------------------------------------------------------


def save_checkpoint(args) -> None:
    """Random LLaMA-2-7B (or tiny) weights, fp16 safetensors, plus the tokenizer: what every side loads."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from kner.model.loading import load_tokenizer, tiny_config

    tok = load_tokenizer(args.tokenizer)
    on_gpu = torch.cuda.is_available()
    config = (
        tiny_config("llama", len(tok), hidden=64, layers=2) if args.tiny else AutoConfig.from_pretrained(args.tokenizer)
    )
    torch.manual_seed(0)
    with torch.device("cuda" if on_gpu else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16 if on_gpu else torch.float32)
    model.save_pretrained(args.ckpt, max_shard_size="20GB")
    tok.save_pretrained(args.ckpt)
    params = sum(p.numel() for p in model.parameters())
    (Path(args.ckpt) / "params.txt").write_text(str(params))
    log(f"checkpoint: {params / 1e9:.2f}B parameters in {args.ckpt}")


def drive(args) -> None:
    results = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "n_examples": args.n,
        "runs": {},
    }

    def save():
        results["summary"] = summary(results["runs"])
        Path(args.out).write_text(json.dumps(results, indent=1))

    ckpt = Path(args.ckpt)
    if not (ckpt / "config.json").is_file():
        t = time.perf_counter()
        subprocess.run([sys.executable, str(HERE), "_save", *_common(args)], check=True)
        results["checkpoint_s"] = round(time.perf_counter() - t, 1)
    params = float((ckpt / "params.txt").read_text())
    for mode in args.modes:
        for side in args.sides:
            key = f"{mode}_{side}"
            left = args.deadline - (time.perf_counter() - T0)
            if left < args.side_seconds_min:
                results["runs"][key] = {"ok": False, "error": f"skipped: {left:.0f}s left of the deadline"}
                save()
                continue
            out = Path(args.work) / f"{key}.json"
            out.unlink(missing_ok=True)
            cmd = [sys.executable, str(HERE), "_side", side, mode, str(out), str(params), *_common(args)]
            t = time.perf_counter()
            try:
                # One stream: libraries print their banners and warnings on either.
                proc = subprocess.run(cmd, timeout=left, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                err = proc.stdout
            except subprocess.TimeoutExpired as e:
                proc, err = None, _text(e.stdout)
            rec = json.loads(out.read_text()) if out.is_file() else {}
            rec.update(ok=out.is_file(), process_s=round(time.perf_counter() - t, 1))
            if not out.is_file():
                rec["error"] = "timed out" if proc is None else f"exit {proc.returncode}"
                rec["stderr_tail"] = err[-4000:]
            else:  # what the library says it runs with (Unsloth's banner: xformers, flash attention, ...)
                rec["banner"] = [ln.strip()[:200] for ln in err.splitlines() if "unsloth" in ln.lower()][:12]
            results["runs"][key] = rec
            log(f"{key}: " + json.dumps({k: v for k, v in rec.items() if k != "stderr_tail"})[:900])
            if not rec["ok"]:
                log(rec["stderr_tail"][-2500:])
            save()
    save()
    log("summary: " + json.dumps(results["summary"]))


def _text(b) -> str:
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else (b or "")


def summary(runs: dict) -> dict:
    s: dict = {}
    for side in SIDES:
        r = runs.get(f"t4_{side}", {})
        s[f"{side}_examples_per_s"] = round(r["examples_per_s"], 2) if r.get("ok") else None
        s[f"{side}_peak_gib"] = r.get("peak_reserved_gib") if r.get("ok") else None
        s[f"{side}_first_batch_loss"] = round(r["first_batch_loss"], 4) if r.get("ok") else None
        f = runs.get(f"full_{side}", {})
        s[f"{side}_full_card_mfu"] = round(f["mfu_h200_bf16"], 4) if f.get("ok") and "mfu_h200_bf16" in f else None
    k, u = s["kner_examples_per_s"], s["unsloth_examples_per_s"]
    if k and u:
        s["kner_over_unsloth"] = round(k / u, 3)
        s["goal_1_3x_unsloth"] = k >= 1.3 * u and (s["kner_peak_gib"] or 0) <= (s["unsloth_peak_gib"] or 0)
    if k and s["trl_examples_per_s"]:
        s["kner_over_trl"] = round(k / s["trl_examples_per_s"], 3)
    return s


def _overrides(spec: str) -> dict:
    """``kner:batch_tokens=4096;lora_dropout=0`` -> TrainConfig overrides (pydantic reads the strings)."""
    _, _, rest = spec.partition(":")
    return dict(kv.split("=", 1) for kv in rest.split(";") if kv)


def _common(args) -> list[str]:
    out = ["--data", args.data, "--tokenizer", args.tokenizer, "--n", str(args.n), "--work", args.work]
    out += ["--ckpt", args.ckpt] + (["--site", args.site] if args.site else []) + (["--tiny"] if args.tiny else [])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / ".device" / "kmou_spacy19.jsonl"))
    ap.add_argument(
        "--tokenizer", default=str(ROOT / ".device" / "infer" / "tokenizer"), help="tokenizer + 7B config.json"
    )
    ap.add_argument("--n", type=int, default=480, help="examples (one epoch)")
    ap.add_argument("--out", default="unsloth_side_by_side.json")
    ap.add_argument("--work", default="/tmp/sbs_work")
    ap.add_argument("--ckpt", default=None, help="default: <work>/ckpt")
    ap.add_argument("--site", default=None, help="folder with Unsloth, TRL and what they need")
    ap.add_argument(
        "--sides",
        type=lambda s: s.split(","),
        default=["kner", "unsloth", "trl"],
        help="comma-separated; kner:KEY=V;KEY=V runs kner with TrainConfig overrides",
    )
    ap.add_argument("--modes", type=lambda s: s.split(","), default=["t4", "full"])
    ap.add_argument(
        "--deadline", type=float, default=540.0, help="seconds; sides that cannot start in time are skipped"
    )
    ap.add_argument("--side-seconds-min", type=float, default=45.0)
    ap.add_argument("--tiny", action="store_true", help="2-layer model on CPU, no 4-bit (smoke test)")
    argv = sys.argv[1:]
    if argv[:1] == ["_side"]:
        ap.add_argument("--params", type=float, default=None)
        side, mode, result, params = argv[1:5]
        args = ap.parse_args(argv[5:])
        args.side, args.mode, args.result, args.params = side.split(":")[0], mode, result, float(params)
        args.overrides = _overrides(side)
    elif argv[:1] == ["_save"]:
        args = ap.parse_args(argv[1:])
    else:
        args = ap.parse_args(argv)
    args.ckpt = args.ckpt or str(Path(args.work) / "ckpt")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if argv[:1] == ["_side"]:
        run_side(args)
    elif argv[:1] == ["_save"]:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        save_checkpoint(args)
    else:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        drive(args)


if __name__ == "__main__":
    main()
