"""Sharded inference throughput: ``kner predict`` on 1 GPU vs 2 GPUs (one worker process per GPU).

What ``benchmarks/infer_bench.py`` measures in one process, here through the
sharded path users run (``kner.inference.sharding.predict_sharded``, what
``kner predict --gpus N`` calls): the parent numbers the inputs, balances them
over the workers, each worker loads the model folder with ``Extractor.load``,
writes its results to its shard file chunk by chunk, and the parent merges them
in input order.

The model folder is what ``kner train`` writes for QLoRA: a base model (here the
LLaMA-2-7B architecture with random weights, saved once in fp16 safetensors and
quantized to NF4 by bitsandbytes when each worker loads it, as a hub base would
be) plus a random LoRA adapter (r=16, all linear layers, B != 0), the real
LLaMA-2 tokenizer and ``kner.json``. So worker start-up is the real one: Python
imports, tokenizer, 4-bit load of the base, adapter. It is reported apart from
generation.

Data as in infer_bench: the first 1,000 sentences of the KMOU test split (from
``.device/infer``, written by ``python benchmarks/infer_bench.py prepare``), EOS
ignored, each sentence generating its gold tag list's length in tokens + 1, so
both runs generate the same tokens. Constrained decoding (the default), fp16,
full card, default batching (at most 256 rows).

Timings per run: ``wall`` (the call, model load included), ``load`` (slowest
worker's ``Extractor.load``), ``generation`` (first worker starting to generate
to last worker done) and sentences/s and new tokens/s over the generation window
and over the wall time.

    python benchmarks/multi_gpu_infer_bench.py --out $OUT/multi_gpu_infer_bench.json       # 2 GPUs
    python benchmarks/multi_gpu_infer_bench.py --tiny --n 24 --out /tmp/mg.json             # CPU smoke test
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

# Never NVLink multicast on the shared machines; the workers inherit these.
os.environ["NCCL_NVLS_ENABLE"] = "0"
os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = ROOT / ".device" / "infer"
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def build(args) -> None:
    """(subprocess) Save the random base (fp16 safetensors) and a random adapter as a `kner train` folder."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from kner.data.schemes import load_scheme
    from kner.model.artifacts import ModelManifest
    from kner.model.loading import LoadSpec, load_tokenizer, tiny_config

    work = Path(args.work)
    tok = load_tokenizer(str(DATA / "tokenizer"))
    if args.tiny:
        config, dtype, device, dname = tiny_config("llama", len(tok), hidden=64, layers=2), torch.float32, "cpu", "fp32"
    else:
        config, dtype, device, dname = AutoConfig.from_pretrained(DATA / "tokenizer"), torch.float16, "cuda", "fp16"
    t = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    t_init = time.perf_counter() - t
    model.save_pretrained(work / "base", safe_serialization=True)
    tok.save_pretrained(work / "base")
    t_save = time.perf_counter() - t - t_init
    torch.manual_seed(1)
    lora = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)
    )
    lora.save_pretrained(work / "out" / "adapter")
    tok.save_pretrained(work / "out" / "tokenizer")
    ModelManifest(
        load=LoadSpec(model=str(work / "base"), quantize_4bit=True, compute_dtype=dname),
        method="qlora",
        scheme=load_scheme("spacy19"),
        extra={"benchmark": "random weights", "tiny": args.tiny},
    ).save(work / "out")
    size = sum(f.stat().st_size for f in (work / "base").glob("*.safetensors"))
    print(
        json.dumps(
            {
                "init_seconds": round(t_init, 2),
                "save_seconds": round(t_save, 2),
                "base_gib": round(size / 2**30, 2),
                "parameters": sum(p.numel() for p in model.parameters()),
                "build_seconds": round(time.perf_counter() - t, 2),
            }
        ),
        flush=True,
    )


def ensure_model(args) -> dict:
    work = Path(args.work)
    man = work / "out" / "kner.json"
    if man.is_file() and json.loads(man.read_text(encoding="utf-8")).get("extra", {}).get("tiny") == args.tiny:
        log(f"reusing the model folder {work / 'out'}")
        return {"reused": True}
    t = time.perf_counter()
    cmd = [sys.executable, __file__, "--build", "--work", str(work)] + (["--tiny"] if args.tiny else [])
    # A child process, so this one never holds a CUDA context (or GPU 0 memory) while the workers run.
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"building the model folder failed (exit code {proc.returncode})")
    rep = json.loads(proc.stdout.strip().splitlines()[-1])
    rep["seconds"] = round(time.perf_counter() - t, 2)
    log(f"model folder built in {rep['seconds']}s: {rep}")
    return rep


def one_run(args, examples, budgets, devices, name) -> dict:
    from kner.inference.sharding import predict_sharded

    out = Path(args.work) / f"preds-{name}.jsonl"
    last = [0.0, -1]

    def progress(done, total, rate):
        now = time.perf_counter()
        if (now - last[0] > 15 or done == total) and done != last[1]:
            last[0], last[1] = now, done
            log(f"  {name}: {done}/{total} ({rate})")

    log(f"{name}: {len(devices)} worker(s) on {devices}")
    t = time.perf_counter()
    res = predict_sharded(
        str(Path(args.work) / "out"),
        examples,
        out,
        devices=devices,
        options={"ignore_eos": True},
        new_tokens=budgets,
        restart=True,
        keep_shards=False,
        source=str(DATA / "kmou_test1000.jsonl"),
        progress=progress,
        flush_every=args.flush_every,
    )
    wall = time.perf_counter() - t
    st = res.stats
    gen = st.seconds
    workers = []
    for w in res.workers:
        workers.append(
            {
                k: w.get(k)
                for k in (
                    "tag",
                    "device",
                    "cuda_visible_devices",
                    "texts",
                    "load_seconds",
                    "peak_allocated_gib",
                    "chunks",
                )
            }
            | {
                "generation_seconds": round(w["gen_end"] - w["gen_start"], 3),
                "new_tokens": w["stats"]["new_tokens"],
                "max_batch": max(w["stats"]["batch_sizes"] or [0]),
                "oom_retries": w["stats"]["oom_retries"],
                "preemptions": w["stats"].get("preemptions"),
            }
        )
    return {
        "devices": devices,
        "sentences": res.total,
        "wall_seconds": round(wall, 2),
        "load_seconds_slowest": round(res.load_seconds, 2),
        "generation_seconds": round(gen, 2),
        "new_tokens": st.new_tokens,
        "sentences_per_s": round(res.total / gen, 2),
        "tokens_per_s": round(st.new_tokens / gen, 1),
        "sentences_per_s_wall": round(res.total / wall, 2),
        "tokens_per_s_wall": round(st.new_tokens / wall, 1),
        "oom_retries": st.oom_retries,
        "flush_every": args.flush_every,
        "workers": workers,
        "output": str(out),
    }


def gpu_names() -> list[str]:
    # nvidia-smi, not torch: this process must not create a CUDA context (memory on GPU 0) next to a worker.
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
        return [l.strip() for l in out.stdout.splitlines() if l.strip()]
    except (OSError, subprocess.SubprocessError):
        return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="multi_gpu_infer_bench.json")
    ap.add_argument("--work", default="/tmp/kner_multi_gpu_bench", help="model folder and outputs (~13 GiB)")
    ap.add_argument("--tiny", action="store_true", help="tiny model, CPU workers (smoke test of this script)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument(
        "--data",
        help="canonical JSONL to take the first --n sentences from (default: the 1,000-sentence "
        "test set); a larger input spreads one long answer's decode time over more work",
    )
    ap.add_argument("--flush-every", type=int, default=512)
    ap.add_argument("--stop-after", type=float, default=300.0, help="skip the 2-worker run after this many seconds")
    ap.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        return build(args)
    if args.tiny:
        # Tiny models gain nothing from intra-op threads, and CPU workers must not fight over shared cores.
        os.environ.setdefault("OMP_NUM_THREADS", "1")

    import peft
    import torch
    import transformers

    from infer_bench import budget_summary, load_set, results_writer

    n_gpus = torch.cuda.device_count()
    res = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "tiny": args.tiny,
        "gpus_visible": n_gpus,
        "gpu_names": gpu_names(),
        "env": {
            k: os.environ.get(k)
            for k in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "PYTHONPATH", "CUDA_VISIBLE_DEVICES")
        },
    }
    try:
        import bitsandbytes

        res["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        res["bitsandbytes"] = None
    save = results_writer(Path(args.out), res, log)

    if not args.tiny and n_gpus == 0:
        raise SystemExit("no GPU visible; use --tiny for the CPU smoke test")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    _, exs, budgets = load_set(args.n, path=args.data)
    save("data", budget_summary(budgets))
    save("build", ensure_model(args))

    one, two = (["cpu"], ["cpu", "cpu"]) if args.tiny else (["0"], ["0", "1"])
    save("gpus_1", one_run(args, exs, budgets, one, "gpus_1"))
    if not args.tiny and n_gpus < 2:
        save("gpus_2", "skipped: fewer than 2 GPUs visible")
    elif time.perf_counter() - T0 > args.stop_after:
        save("gpus_2", "skipped: time limit")
    else:
        save("gpus_2", one_run(args, exs, budgets, two, "gpus_2"))
        a, b = res["gpus_1"], res["gpus_2"]
        la = Path(a["output"]).read_text(encoding="utf-8").splitlines()
        lb = Path(b["output"]).read_text(encoding="utf-8").splitlines()
        same = sum(x == y for x, y in zip(la, lb))
        ids_in_order = [json.loads(l)["id"] for l in lb] == [e.id for e in exs]
        save(
            "summary",
            {
                "speedup_generation": round(b["sentences_per_s"] / a["sentences_per_s"], 2),
                "speedup_wall": round(b["sentences_per_s_wall"] / a["sentences_per_s_wall"], 2),
                "same_new_tokens": a["new_tokens"] == b["new_tokens"],
                "identical_output_lines": f"{same}/{len(la)}",
                "merged_in_input_order": ids_in_order,
            },
        )
    log("done")


if __name__ == "__main__":
    main()
