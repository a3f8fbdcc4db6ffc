"""Data-parallel training throughput: ``kner.training.train`` on 1 GPU vs N GPUs (torchrun), same global batch.

LLaMA-2-7B architecture with random weights (no weights can be downloaded), NF4
double-quantized on each GPU (``train_bench.build_model``), LoRA r=16 on all
linear layers, KMOU examples rendered with the default spacy19 prompt and the real
LLaMA-2 tokenizer. Compute in **bf16** (an H100 has it; no T4 emulation and no
memory cap here: the plan picks the budget for the whole card). No LoRA dropout,
constant learning rate, so the N-process losses can be compared with the
1-process ones (they differ only by bf16 rounding of differently packed rows).

One command runs both: the script starts the 1-process run as a child, then the
N-process run under ``python -m torch.distributed.run`` (torchrun), and merges
their results. Each run does ``--warmup`` + ``--steps`` optimizer steps of
``--examples-per-step`` examples through the public ``train()`` (memory plan,
share of each step per rank, gradient all-reduce, paged 8-bit AdamW, output
folder); throughput is measured on the timed steps from the run's ``log.jsonl``.

    PYTHONPATH=/tmp/site:src python benchmarks/ddp_train_bench.py --data .device/kmou_spacy19.jsonl \
        --tokenizer .device/llama-2 --out $OUT/ddp_train_bench.json
    python benchmarks/ddp_train_bench.py --tiny --data ... --tokenizer ...   # CPU + gloo smoke test

Children inherit the environment (PYTHONPATH included) with NCCL_NVLS_ENABLE=0
and TORCH_SYMM_MEM_DISABLE_MULTICAST=1 set explicitly (NVLink multicast stays off).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(HERE.parent))

GiB = 2**30


def log(msg: str) -> None:
    print(msg, flush=True)


def child_env() -> dict:
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    src = str(REPO / "src")
    if src not in paths:
        paths.append(src)  # after the caller's entries (e.g. /tmp/site with the carried bitsandbytes)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["NCCL_NVLS_ENABLE"] = "0"
    env["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# ---------------------------------------------------------------------------
# One process of a run (rank r of N).


def worker(args) -> None:
    import torch

    import train_bench
    from kner.model.loading import load_tokenizer
    from kner.training import distributed as dist
    from kner.training.config import TrainConfig
    from kner.training.recipe import train

    t_start = time.perf_counter()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    on_gpu = torch.cuda.is_available() and not args.tiny
    if on_gpu:
        torch.cuda.set_device(local)
    device = torch.device("cuda", local) if on_gpu else torch.device("cpu")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    tok = load_tokenizer(args.tokenizer)
    examples = train_bench.load_examples(args)
    # Same seed on every rank and the same GPU type: every rank builds the same random weights.
    model = train_bench.build_model(args, tok, dtype, device)
    t_built = time.perf_counter()
    out = Path(args.work) / f"p{world}"
    cfg = TrainConfig(
        model="bench-random-llama-2-7b",
        scheme="spacy19",
        output=str(out),
        compute_dtype="bf16" if on_gpu else "fp32",
        max_steps=args.warmup + args.steps,
        examples_per_step=args.examples_per_step,
        lr=1e-4,
        scheduler="constant",
        warmup_steps=0,
        lora_dropout=0.0,
        save_every=0,
        progress=False,
        tensorboard=False,
        layout=args.layout,
        batch_tokens=args.batch_tokens or (1024 if args.tiny else None),
        optimizer="paged_adamw_8bit" if on_gpu else "adamw",
    )
    t0 = time.perf_counter()
    train(cfg, model=model, tokenizer=tok, train_examples=examples)
    t_train = time.perf_counter() - t0
    if dist.rank_info().rank != 0:
        return
    steps = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]
    timed = steps[args.warmup :]
    total = sum(r["time_s"] for r in timed)
    rec = {
        "processes": world,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "gpu": torch.cuda.get_device_name(local) if on_gpu else None,
        "examples_per_step": args.examples_per_step,
        "timed_steps": len(timed),
        "budget": json.loads((out / "metrics.json").read_text())["train"]["budget"],
        "examples_per_s": sum(r["examples"] for r in timed) / total,
        "tokens_per_s": sum(r["tokens"] for r in timed) / total,
        "computed_tokens_per_s": sum(r["computed_tokens"] for r in timed) / total,
        "step_s": total / len(timed),
        "micro_batches_per_step": sum(r["micro_batches"] for r in timed) / len(timed),
        "oom_splits": sum(r["oom_splits"] for r in steps),
        "peak_mem_gib_max_over_ranks": max(r["peak_mem_gib"] for r in steps),
        "losses": [r["loss"] for r in steps],
        "grad_norms": [r["grad_norm"] for r in steps],
        "step_times_s": [r["time_s"] for r in steps],
        "build_s": t_built - t_start,
        "train_call_s": t_train,
    }
    Path(args.result).write_text(json.dumps(rec, indent=1))
    log(
        f"[{world} process(es)] "
        + json.dumps(
            {k: (round(v, 3) if isinstance(v, float) else v) for k, v in rec.items() if not isinstance(v, list)}
        )
    )


# ---------------------------------------------------------------------------
# The launcher: 1 process, then N under torchrun; merge.


def launch(args, n: int, passthrough: list[str]) -> dict:
    result = Path(args.work) / f"result-p{n}.json"
    result.unlink(missing_ok=True)
    mine = [str(HERE), "--worker", "--result", str(result), *passthrough]
    if n == 1:
        cmd = [sys.executable, *mine]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), *mine]
    log(f"$ {' '.join(cmd)}")
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=child_env(), timeout=args.child_timeout, cwd=REPO)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = time.perf_counter() - t
    if rc != 0 or not result.is_file():
        return {"processes": n, "ok": False, "returncode": rc, "wall_s": wall}
    return {"ok": True, "wall_s": wall, **json.loads(result.read_text())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="canonical JSONL (spacy19 labels)")
    ap.add_argument("--tokenizer", required=True, help="folder with the LLaMA-2 tokenizer and config.json")
    ap.add_argument("--out", default="ddp_train_bench.json")
    ap.add_argument("--gpus", type=int, default=2, help="processes of the data-parallel run")
    ap.add_argument("--examples-per-step", type=int, default=64, help="global: the same for both runs")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--max-examples", type=int, default=1000)
    ap.add_argument("--layout", default="packed", choices=["packed", "padded"])
    ap.add_argument("--batch-tokens", type=int, default=0, help="0: the memory plan's budget")
    ap.add_argument("--child-timeout", type=int, default=210, help="seconds per run (two runs)")
    ap.add_argument("--work", default="/tmp/kner_ddp_bench", help="output folders of the runs")
    ap.add_argument("--tiny", action="store_true", help="tiny random llama on CPU over gloo (smoke test)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    Path(args.work).mkdir(parents=True)
    passthrough = [
        "--data",
        args.data,
        "--tokenizer",
        args.tokenizer,
        "--examples-per-step",
        str(args.examples_per_step),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--max-examples",
        str(args.max_examples),
        "--layout",
        args.layout,
        "--batch-tokens",
        str(args.batch_tokens),
        "--work",
        args.work,
    ] + (["--tiny"] if args.tiny else [])
    results: dict = {
        "argv": sys.argv[1:],
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "env": {k: child_env()[k] for k in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST")},
        "runs": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for n in (1, args.gpus):
        results["runs"].append(launch(args, n, passthrough))
        out.write_text(json.dumps(results, indent=1))
    one, many = results["runs"]
    if one.get("ok") and many.get("ok"):
        speedup = many["examples_per_s"] / one["examples_per_s"]
        k = min(len(one["losses"]), len(many["losses"]))
        results["summary"] = {
            "speedup": speedup,
            "scaling_efficiency": speedup / args.gpus,
            "examples_per_s": [one["examples_per_s"], many["examples_per_s"]],
            "tokens_per_s": [one["tokens_per_s"], many["tokens_per_s"]],
            "max_abs_loss_diff": max(abs(a - b) for a, b in zip(one["losses"][:k], many["losses"][:k])),
            "first_step_loss_diff": abs(one["losses"][0] - many["losses"][0]),
        }
    results["wall_s"] = time.perf_counter() - t
    out.write_text(json.dumps(results, indent=1))
    log("\nprocs  ex/s     tok/s    step_s  mb/step  peak_GiB  wall_s")
    for r in results["runs"]:
        if r.get("ok"):
            log(
                f"{r['processes']:5d}  {r['examples_per_s']:6.1f}  {r['tokens_per_s']:8.0f}  {r['step_s']:6.2f}"
                f"  {r['micro_batches_per_step']:7.1f}  {r['peak_mem_gib_max_over_ranks']:8.2f}  {r['wall_s']:6.1f}"
            )
        else:
            log(f"{r['processes']:5d}  FAILED (returncode {r.get('returncode')})")
    if "summary" in results:
        s = results["summary"]
        log(
            f"speedup {s['speedup']:.2f}x on {args.gpus} processes (efficiency {s['scaling_efficiency']:.2f}); "
            f"max |loss diff| {s['max_abs_loss_diff']:.2e}"
        )
    log(f"total {results['wall_s']:.0f} s; results in {out}")
    if not all(r.get("ok") for r in results["runs"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
