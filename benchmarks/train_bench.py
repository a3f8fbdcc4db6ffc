"""Training throughput and peak memory: kner's loop vs. the original HF Trainer recipe.

LLaMA-2-7B architecture with random weights (no weights can be downloaded), NF4
double-quantized, LoRA r=16 on all linear layers, KMOU examples rendered with
the default prompt and tokenized with the real LLaMA-2 tokenizer. T4 emulation:
fp16 with loss scaling, no flash/cuDNN attention, allocator capped at 15 GiB.

For every layout and micro-batch token budget it runs a few optimizer steps of
``--examples-per-step`` examples and reports peak reserved memory, useful tokens/s
(each example's full prompt+answer length, no padding, prefix counted per example
as inference sees it) and examples/s, next to the memory plan's prediction.
Then the baseline: ``transformers.Trainer`` + peft + bitsandbytes 4-bit,
gradient checkpointing, batches of 4 padded to the longest, loss on the whole
sequence (the study's recipe), on the same GPU and examples.

    python benchmarks/train_bench.py --data .device/kmou_spacy19.jsonl \
        --tokenizer .device/llama-2 --out $OUT/train_bench.json
    python benchmarks/train_bench.py --tiny ...   # CPU smoke test of this script

Results are printed as they come and rewritten to ``--out`` after each run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

GiB = 2**30


def log(msg: str) -> None:
    print(msg, flush=True)


def build_model(args, tok, dtype, device):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from kner.model.loading import quantize_4bit_inplace, tiny_config

    t = time.perf_counter()
    if args.tiny:
        config = tiny_config("llama", len(tok), hidden=64, layers=2)
    else:
        config = AutoConfig.from_pretrained(args.tokenizer)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    quantize_4bit_inplace(model, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    log(
        f"model built and quantized in {time.perf_counter() - t:.1f}s "
        f"({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B stored params)"
    )
    return model


def load_examples(args):
    from kner.data.example import read_jsonl

    return read_jsonl(args.data)[: args.max_examples]


def measure(fn, device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def kner_runs(args, model, tok, examples, dtype, device, results, save):
    import torch

    from kner.data.schemes import load_scheme
    from kner.errors import KnerError
    from kner.model.oom import is_oom
    from kner.model.prompt import PromptEncoder, PromptFormat
    from kner.model.shape import ModelShape
    from kner.training.batching import Batching, as_rows, collate, epoch_steps, tokenize_examples
    from kner.training.config import TrainConfig
    from kner.training.forward import ModelParts, answer_loss_sum
    from kner.training.memory import estimate
    from kner.training.setup import make_optimizer, prepare_for_training
    from kner.training.step import StepModel, StepRunner

    cfg = TrainConfig(
        model="bench",
        optimizer="paged_adamw_8bit" if device.type == "cuda" else "adamw",
        lr=1e-4,
        examples_per_step=args.examples_per_step,
    )
    model = prepare_for_training(model, cfg, dtype)
    scheme = load_scheme("spacy19")
    enc = PromptEncoder(tok, PromptFormat(), scheme)
    toks, rep = tokenize_examples(examples, enc, 2048)
    P = len(enc.prefix_ids)
    answer_fraction = sum(e.n_answer for e in toks) / (sum(e.suffix_len for e in toks) + P)
    results["data"] = {
        "examples": len(toks),
        "prefix_tokens": P,
        "mean_tokens": sum(e.length for e in toks) / len(toks),
        "mean_answer_tokens": sum(e.n_answer for e in toks) / len(toks),
        "max_tokens": max(e.length for e in toks),
        "fallbacks": rep.fallbacks,
    }
    log(f"data: {json.dumps(results['data'])}")
    params = [p for p in model.parameters() if p.requires_grad]
    parts = ModelParts.of(model)
    shape = ModelShape.from_config(model.config)
    steps = epoch_steps([e.length for e in toks], args.examples_per_step, 0, 0)
    steps = [s for s in steps if len(s) == args.examples_per_step]

    # Same loss from every layout (eval mode: no dropout), before any update.
    model.eval()
    check = [toks[i] for i in steps[0][:8]]
    losses = {}
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        for layout in ("padded", "packed"):
            mb = collate(as_rows(check, layout), layout, tok.pad_token_id, "sdpa").to(device)
            losses[layout] = float(answer_loss_sum(parts, mb)) / mb.n_answer
    model.train()
    results["layout_loss_check"] = losses
    log(f"same loss from each layout: {losses}")

    if args.debug_layout:
        import traceback

        for n in (1, 4):
            try:
                mb = collate(
                    as_rows([toks[i] for i in steps[0][:n]], args.debug_layout),
                    args.debug_layout,
                    tok.pad_token_id,
                    "sdpa",
                ).to(device)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    loss = answer_loss_sum(parts, mb)
                torch.autograd.grad(loss, params)
                log(
                    f"debug {args.debug_layout} n={n}: ok, peak alloc {torch.cuda.max_memory_allocated() / GiB:.2f} GiB"
                )
            except Exception:
                log(traceback.format_exc()[-3000:])
                if device.type == "cuda":
                    log(torch.cuda.memory_summary(abbreviated=True)[:3000])
            del mb
            torch.cuda.empty_cache()
    if device.type == "cuda":
        torch.cuda.synchronize()
    results["static_allocated_gib"] = torch.cuda.memory_allocated() / GiB if device.type == "cuda" else None
    results["kner"] = []
    configs = [(layout, budget, args.row_tokens or None) for layout in args.layouts for budget in args.budgets]
    for extra in args.also:
        layout, budget, rows = extra.split(":")
        configs.append((layout, int(budget), int(rows)))
    for layout, budget, row_tokens in configs:
        optimizer = make_optimizer(params, cfg, device)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        runner = StepRunner(
            StepModel(parts, params, dtype, device, scaler),
            Batching(budget, layout, row_tokens, tok.pad_token_id, "sdpa"),
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        est = estimate(
            shape,
            budget,
            method="qlora",
            compute_bytes=dtype.itemsize,
            layout=layout,
            answer_fraction=answer_fraction,
            on_gpu=device.type == "cuda",
            row_tokens=row_tokens,
        )
        rec = {
            "layout": layout,
            "budget": budget,
            "row_tokens": row_tokens,
            "plan_allocator_gib": est.allocator_peak / GiB,
            "plan_device_gib": est.device_total / GiB,
            "plan_components": est.components,
        }
        try:
            times, n_ex, n_tok, n_comp, n_mb, n_split, ls = [], 0, 0, 0, 0, 0, []
            for k in range(args.warmup + args.steps):
                step = [toks[i] for i in steps[k % len(steps)]]
                box = {}

                def one():
                    box["r"] = runner.step(step)
                    runner.finish_step(optimizer, _NoSched(), 1.0)  # noqa: F821  bound above; the del is after the loop

                dt = measure(one, device)
                r = box["r"]
                if k >= args.warmup:
                    times.append(dt)
                    n_ex += r.examples
                    n_tok += r.tokens
                    n_comp += r.computed
                    n_mb += r.micro_batches
                    n_split += r.oom_splits
                    ls.append(r.loss)
            total = sum(times)
            rec.update(
                {
                    "ok": True,
                    "step_s": total / len(times),
                    "examples_per_s": n_ex / total,
                    "tokens_per_s": n_tok / total,
                    "computed_per_s": n_comp / total,
                    "computed_over_useful": n_comp / n_tok,
                    "micro_batches_per_step": n_mb / len(times),
                    "oom_splits": n_split,
                    "losses": ls,
                }
            )
        except (RuntimeError, KnerError) as err:
            if not (isinstance(err, KnerError) or is_oom(err)):
                raise
            rec.update({"ok": False, "error": str(err)[:600]})
        if device.type == "cuda":
            rec["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GiB
            rec["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GiB
            rec["plan_error"] = rec["plan_allocator_gib"] / rec["peak_reserved_gib"] - 1
        results["kner"].append(rec)
        save()
        log(
            json.dumps(
                {
                    k: (round(v, 3) if isinstance(v, float) else v)
                    for k, v in rec.items()
                    if k not in ("plan_components", "losses")
                }
            )
        )
        del optimizer
    return model


class _NoSched:
    def step(self):
        pass


def baseline_run(args, model, tok, examples, dtype, device, results, save):
    """The study's recipe: HF Trainer, padded batches of 4, loss on every token."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from kner.data.schemes import load_scheme
    from kner.model.oom import is_oom
    from kner.model.prompt import PromptFormat

    fmt, scheme = PromptFormat(), load_scheme("spacy19")
    texts = [fmt.render(e.text, e.entities, scheme) + tok.eos_token for e in examples]
    n = args.baseline_batch * args.baseline_accum * (args.warmup + args.steps)
    rows = [tok(t)["input_ids"] for t in (texts * (1 + n // len(texts)))[:n]]

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return {"input_ids": rows[i]}

    def collate(batch):
        L = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), L), tok.pad_token_id)
        att = torch.zeros(len(batch), L, dtype=torch.long)
        for i, b in enumerate(batch):
            ids[i, : len(b["input_ids"])] = torch.tensor(b["input_ids"])
            att[i, : len(b["input_ids"])] = 1
        labels = ids.masked_fill(att == 0, -100)
        return {"input_ids": ids, "attention_mask": att, "labels": labels}

    model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": True})
    model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if device.type == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    targs = TrainingArguments(
        output_dir="/tmp/bench_trainer",
        per_device_train_batch_size=args.baseline_batch,
        gradient_accumulation_steps=args.baseline_accum,
        max_steps=args.warmup + args.steps,
        learning_rate=1e-4,
        fp16=device.type == "cuda",
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": True},
        optim="paged_adamw_8bit" if device.type == "cuda" else "adamw_torch",
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        use_cpu=device.type != "cuda",
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(model=model, args=targs, train_dataset=DS(), data_collator=collate, callbacks=[Clock()])
    t0 = time.perf_counter()
    rec = {"batch": args.baseline_batch, "accum": args.baseline_accum}
    try:
        trainer.train()
        per_step = args.baseline_batch * args.baseline_accum
        timed = stamps[args.warmup :]
        total = timed[-1] - stamps[args.warmup - 1] if args.warmup else timed[-1] - t0
        toks = sum(len(r) for r in rows[per_step * args.warmup :])
        rec.update(
            {
                "ok": True,
                "step_s": total / len(timed),
                "examples_per_s": per_step * len(timed) / total,
                "tokens_per_s": toks / total,
                "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
            }
        )
    except RuntimeError as err:
        if not is_oom(err):
            raise
        rec.update({"ok": False, "error": str(err).splitlines()[0]})
    if device.type == "cuda":
        rec["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GiB
        rec["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GiB
    results["baseline"] = rec
    save()
    log(
        "baseline "
        + json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rec.items() if k != "losses"})
    )
    del trainer
    return model


def e2e_run(args, model, tok, examples, device, results, save):
    """The public API end to end: plan, budget, paged optimizer, checkpoint, output folder."""
    import shutil

    import torch

    from kner.training.config import TrainConfig
    from kner.training.recipe import train

    shutil.rmtree(args.e2e_out, ignore_errors=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    cfg = TrainConfig(
        model="bench-random-llama-2-7b",
        output=args.e2e_out,
        max_steps=args.e2e_steps,
        examples_per_step=16,
        save_every=max(1, args.e2e_steps // 2),
        progress=False,
        tensorboard=False,
        gpu_memory=f"{args.gpu_memory_gib}GiB" if device.type == "cuda" else None,
        batch_tokens=1024 if args.tiny else None,
    )
    t = time.perf_counter()
    out = train(cfg, model=model, tokenizer=tok, train_examples=examples[:400], dev_examples=examples[400:432])
    metrics = json.loads((out / "metrics.json").read_text())
    results["e2e"] = {
        "wall_s": time.perf_counter() - t,
        "metrics": metrics,
        "files": sorted(p.name for p in out.iterdir()),
        "log": [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()],
    }
    save()
    m = metrics["train"]
    log(
        f"e2e: {m['steps']} steps, budget {m['budget']}, loss {m['first_loss']:.3f} -> {m['final_loss']:.3f}, "
        f"{m['examples_per_s']:.1f} ex/s, peak {m['peak_mem_gib']:.2f} GiB, files {results['e2e']['files']}"
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="canonical JSONL (spacy19 labels)")
    ap.add_argument("--tokenizer", required=True, help="folder with the LLaMA-2 tokenizer and config.json")
    ap.add_argument("--out", default="train_bench.json")
    ap.add_argument("--tiny", action="store_true", help="tiny random llama on CPU (smoke test of this script)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--layouts", nargs="+", default=["packed", "padded"], choices=["packed", "padded"])
    ap.add_argument("--examples-per-step", type=int, default=32)
    ap.add_argument("--row-tokens", type=int, default=0, help="packed: longest row (0: the budget)")
    ap.add_argument("--also", nargs="*", default=[], help="extra runs as layout:budget:row_tokens")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--max-examples", type=int, default=1000)
    ap.add_argument("--gpu-memory-gib", type=float, default=15.0)
    ap.add_argument("--baseline-batch", type=int, default=4)
    ap.add_argument("--baseline-accum", type=int, default=8)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--debug-layout", default=None, help="run one micro-batch of this layout with a full traceback")
    ap.add_argument("--e2e-steps", type=int, default=0, help="then run kner.training.train() end to end for N steps")
    ap.add_argument("--e2e-out", default="/tmp/kner_e2e")
    args = ap.parse_args(argv)

    import torch

    from kner.model.loading import load_tokenizer

    results: dict = {"argv": sys.argv[1:], "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = Path(args.out)

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        # T4 emulation: no flash or cuDNN attention (sm75 has neither), fp16, 15 GiB for the allocator.
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_cudnn_sdp(False)
        total = torch.cuda.get_device_properties(0).total_memory
        results["gpu"] = torch.cuda.get_device_name(0)
        results["gpu_total_gib"] = total / GiB
    import bitsandbytes
    import peft
    import transformers

    results["versions"] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "bitsandbytes": bitsandbytes.__version__,
    }
    log(json.dumps(results))
    tok = load_tokenizer(args.tokenizer)
    examples = load_examples(args)
    model = build_model(args, tok, dtype, device)
    if device.type == "cuda":
        # The cap comes after building: the fp16 weights exist briefly before quantization.
        torch.cuda.set_per_process_memory_fraction(args.gpu_memory_gib * GiB / total)
        results["after_build_allocated_gib"] = torch.cuda.memory_allocated() / GiB
    model = kner_runs(args, model, tok, examples, dtype, device, results, save)
    if not args.skip_baseline:
        base = model.unload()  # drop our LoRA layers, keep the 4-bit base
        for p in base.parameters():
            p.requires_grad_(False)
        model = baseline_run(args, base, tok, examples, dtype, device, results, save)
        ok = [r for r in results["kner"] if r.get("ok")]
        if results["baseline"].get("ok") and ok:
            b = results["baseline"]["examples_per_s"]
            for r in ok:
                r["speedup_vs_baseline"] = r["examples_per_s"] / b
    if args.e2e_steps:
        base = model.unload()
        e2e_run(args, base, tok, examples, device, results, save)
    save()
    log("\nlayout     budget  rows  peak_res  plan_alloc  err%   ex/s   tok/s  speedup")
    for r in results["kner"]:
        if r.get("ok"):
            log(
                f"{r['layout']:<10} {r['budget']:6d}  {r['row_tokens'] or r['budget']:5d} "
                f"{r.get('peak_reserved_gib', float('nan')):7.2f}  "
                f"{r['plan_allocator_gib']:9.2f}  {100 * r.get('plan_error', float('nan')):5.1f}  "
                f"{r['examples_per_s']:6.1f}  {r['tokens_per_s']:7.0f}  "
                f"{r.get('speedup_vs_baseline', float('nan')):5.2f}"
            )
        else:
            log(f"{r['layout']:<10} {r['budget']:6d}  FAILED {r.get('error')}")
    b = results.get("baseline") or {}
    if b.get("ok"):
        log(
            f"baseline   b{args.baseline_batch}x{args.baseline_accum}  {b.get('peak_reserved_gib', float('nan')):7.2f}"
            f"  {'':9}  {'':5}  {b['examples_per_s']:6.1f}  {b['tokens_per_s']:7.0f}"
        )


if __name__ == "__main__":
    main()
