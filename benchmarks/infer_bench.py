"""Inference throughput: kner's batched (constrained) extraction vs. one-at-a-time ``model.generate``.

LLaMA-2-7B architecture with random weights (none can be downloaded), NF4
double-quantized in place, plus a random LoRA adapter (peft, r=16, all linear
layers, B != 0), the default prompt and the real LLaMA-2 tokenizer; 1,000
sentences of the KMOU test split (default 80/10/10 split by document).

Random weights write arbitrary text, so both sides generate the same number of
new tokens per sentence, EOS ignored: that sentence's gold tag list length in
tokens (+1 for EOS), i.e. what a perfect model would write. Sentences/s and
generated tokens/s are reported for every run.

Runs, in order (results are printed and rewritten to ``--out`` after each):

1. T4 emulation: fp16, flash attention off, allocator capped at 15 GiB.
   a. baseline: one sentence at a time, ``model.generate`` (greedy, no
      constraint) through peft on the 4-bit base; timed on ``--baseline-n``
      sentences (or ``--baseline-seconds``) and extrapolated;
   b. kner, unconstrained; c. kner, constrained (the default). With EOS
      ignored the grammar restarts when a text is used up, so every generated
      token passes through the constraint (a pessimistic measure).
2. Full card, flash attention on, no cap: kner unconstrained and constrained.

    python benchmarks/infer_bench.py prepare            # here: tokenizer + 1,000 test sentences -> .device/infer
    python benchmarks/infer_bench.py run --out $OUT/infer_bench.json      # on the GPU machine
    python benchmarks/infer_bench.py run --tiny --n 24 --baseline-n 3     # CPU smoke test of this script
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# As `kner predict` does: fewer fragmented blocks, so the planned pool fits under the cap (both sides get it).
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = ROOT / ".device" / "infer"
GiB = 2**30
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def prepare(args) -> None:
    from corpora import default_kmou_split
    from kner.data.example import write_jsonl
    from kner.data.schemes import Mapping, map_examples
    from kner.model.loading import load_tokenizer

    DATA.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(args.tokenizer_src)
    tok.save_pretrained(DATA / "tokenizer")  # tokenizer.json: fast to load there
    (DATA / "tokenizer" / "config.json").write_text((Path(args.tokenizer_src) / "config.json").read_text())
    test = default_kmou_split()["test"][: args.n]
    mapped, _ = map_examples(test, Mapping.load("kmou", "spacy19"))
    write_jsonl(DATA / "kmou_test1000.jsonl", mapped)
    log(
        f"wrote {len(mapped)} sentences of the KMOU test split (first {args.n} in split order) and the "
        f"tokenizer to {DATA}"
    )


def build(args, tok, device, dtype):
    import torch
    from peft import LoraConfig

    try:  # kner's wrapper: quiet about peft's own deprecation warnings on the newest transformers
        from kner.model.compat import get_peft_model
    except ImportError:  # an older kner tree (serve_bench.py measures commit 17a3897 too)
        from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from kner.model.loading import quantize_4bit_inplace, tiny_config

    t = time.perf_counter()
    if args.tiny:
        config = tiny_config("llama", len(tok), hidden=64, layers=2)
    else:
        config = AutoConfig.from_pretrained(DATA / "tokenizer")
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    quantize_4bit_inplace(model, dtype)
    model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)
    )
    model.eval()
    # What Extractor does anyway (fp32 LoRA weights -> fp16); done here so the baseline runs the same weights.
    from kner.inference.loader import match_adapter_dtype

    match_adapter_dtype(model)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    log(
        f"model: {config.num_hidden_layers} layers, hidden {config.hidden_size}, NF4 + LoRA r=16 "
        f"built in {time.perf_counter() - t:.1f}s; "
        f"{torch.cuda.memory_allocated() / GiB if device.type == 'cuda' else 0:.2f} GiB"
    )
    return model


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, steps: int, device) -> tuple[float, object]:
    """Median milliseconds of ``steps`` calls of ``fn``, each synchronised, and the last call's result."""
    out = None
    times = []
    for _ in range(steps):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), out


def profiled(ex, texts, budgets, device):
    """``torch.profiler`` over one ``ex.predict`` (CUDA kernels too where there is a GPU); the profile
    and the column to sort its kernels by."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=acts) as prof:
        ex.predict(texts, new_tokens=budgets)
        sync(device)
    return prof, "cuda_time_total" if device.type == "cuda" else "cpu_time_total"


def spread(items: list) -> list:
    """All of ``items`` (sorted by answer length), in an order any prefix of which spans the whole range.

    Golden-ratio steps through the sorted items, so whatever is timed before the clock runs
    out looks like the set: a plain random sample of 27 sentences came out 27 % short.
    """
    out, seen = [], set()
    for k in range(len(items)):
        j = int(((k + 0.5) * 0.6180339887498949) % 1.0 * len(items))
        if j not in seen:
            seen.add(j)
            out.append(items[j])
    return out + [x for j, x in enumerate(items) if j not in seen]  # the few steps missed: last


def baseline(model, tok, texts, budgets, device, n_max, seconds):
    """One sentence at a time through ``model.generate``: the study's way."""
    import torch

    from kner.data.schemes import load_scheme
    from kner.model.prompt import PromptEncoder, PromptFormat

    enc = PromptEncoder(tok, PromptFormat(), load_scheme("spacy19"))

    def gen(i):
        ids = torch.tensor([enc.prompt_ids(texts[i]).input_ids], device=device)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=budgets[i],
            min_new_tokens=budgets[i],
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        return out.shape[1] - ids.shape[1]

    sample = spread(sorted(range(len(texts)), key=lambda i: (budgets[i], i)))[:n_max]
    gen(sample[-1])  # warm-up
    sync(device)
    t0 = time.perf_counter()
    n = toks = 0
    for i in sample:
        toks += gen(i)
        n += 1
        if time.perf_counter() - t0 > seconds:
            break
    sync(device)
    el = time.perf_counter() - t0
    per_token = el / toks
    # Whole-set estimate: this sample's seconds per generated token times all tokens to generate
    # (prompt processing is folded in; the sample's mean answer length is reported next to the set's).
    est_all = per_token * sum(budgets)
    return {
        "sentences": n,
        "seconds": round(el, 3),
        "new_tokens": toks,
        "sample_mean_new_tokens": round(toks / n, 2),
        "sentences_per_s": n / el,
        "tokens_per_s": toks / el,
        "extrapolated_seconds_for_all": round(est_all, 1),
        "extrapolated_sentences_per_s": len(texts) / est_all,
    }


def kner_run(model, tok, texts, budgets, device, constrained, max_memory, max_batch, outputs=None):
    """``Extractor.predict`` on all texts after a warm-up; ``outputs`` (a list) gets each text's tag texts."""
    import torch

    from kner.inference import Extractor

    ex = Extractor(
        model, tok, "spacy19", constrained=constrained, ignore_eos=True, max_memory=max_memory, max_batch_size=max_batch
    )
    ex.predict(texts[:8], new_tokens=budgets[:8])  # warm-up: kernels, token table, prefix K/V
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    preds = ex.predict(texts, new_tokens=budgets)
    if outputs is not None:
        outputs.extend(p.outputs for p in preds)
    st = ex.last_stats
    out = st.to_dict()
    out.pop("labels", None)
    out.update(
        constrained=constrained,
        sentences_per_s=st.texts_per_s,
        batch_sizes=st.batch_sizes,
        peak_allocated_gib=round(torch.cuda.max_memory_allocated() / GiB, 2) if device.type == "cuda" else None,
        peak_reserved_gib=round(torch.cuda.max_memory_reserved() / GiB, 2) if device.type == "cuda" else None,
    )
    return out


def load_set(n: int, max_budget: int | None = None, path: str | Path | None = None):
    """The LLaMA-2 tokenizer, the first ``n`` sentences of the prepared test set (or of ``path``,
    canonical JSONL), and each one's new-token budget: its gold tag list in tokens + 1 (EOS),
    what a perfect model writes."""
    from kner.data.example import read_jsonl
    from kner.model.loading import load_tokenizer
    from kner.model.prompt import render_tags

    tok = load_tokenizer(str(DATA / "tokenizer"))
    exs = read_jsonl(path or DATA / "kmou_test1000.jsonl")[:n]
    budgets = [len(tok(render_tags(e.entities), add_special_tokens=False)["input_ids"]) + 1 for e in exs]
    if max_budget:
        budgets = [min(max_budget, b) for b in budgets]
    return tok, exs, budgets


def budget_summary(budgets: list[int]) -> dict:
    return {
        "sentences": len(budgets),
        "new_tokens_total": sum(budgets),
        "new_tokens_mean": round(sum(budgets) / len(budgets), 2),
        "new_tokens_max": max(budgets),
    }


def results_writer(out: Path, res: dict, say=None):
    """``save(key, value)``: record, rewrite the whole JSON (a killed run keeps what it had), print."""
    say = say or log
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(key, value):
        res[key] = value
        out.write_text(json.dumps(res, indent=2, ensure_ascii=False))
        say(f"{key}: {json.dumps(value, ensure_ascii=False)}")

    return save


def t4_emulation(device) -> float | None:
    """fp16 callers, flash attention off, allocator capped at 15 GiB; returns the cap for kner's plan."""
    import torch

    if device.type != "cuda":
        return None
    total = torch.cuda.get_device_properties(0).total_memory
    torch.backends.cuda.enable_flash_sdp(False)
    torch.cuda.set_per_process_memory_fraction(min(1.0, 15 * GiB / total))
    return 15.0


def profile(args) -> None:
    """Where a decode step's time goes: torch.profiler over kner's run on ``--n`` sentences (T4 emulation)."""
    import torch

    from kner.inference import Extractor

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    tok, exs, budgets = load_set(args.n, max_budget=40)
    texts = [e.text for e in exs]
    model = build(args, tok, device, dtype)
    cap = t4_emulation(device)
    ex = Extractor(model, tok, "spacy19", constrained=True, ignore_eos=True, max_memory=cap, max_batch_size=256)
    ex.predict(texts[:8], new_tokens=budgets[:8])
    sync(device)
    prof, sort = profiled(ex, texts, budgets, device)
    st = ex.last_stats.to_dict()
    log(json.dumps({k: v for k, v in st.items() if not isinstance(v, (list, dict))}))
    table = prof.key_averages().table(sort_by=sort, row_limit=45, max_name_column_width=70)
    print(table, flush=True)
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=70), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table)


def run_start(args):
    """(device, dtype, results header) of a run: fp16 on the GPU, fp32 on the CPU; date and versions."""
    import peft
    import torch
    import transformers

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    res = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "tiny": args.tiny,
    }
    return device, dtype, res


@dataclass
class Bench:
    """What every run of these scripts starts from."""

    device: Any
    res: dict  # the results, rewritten to --out by save()
    save: Callable[[str, Any], None]
    tok: Any
    texts: list[str]
    budgets: list[int]
    model: Any


def setup(args) -> Bench:
    """Results header (date, versions, argv) and writer, the sentence set with its budgets, the model."""
    device, dtype, res = run_start(args)
    res["argv"] = vars(args)
    save = results_writer(Path(args.out), res)
    tok, exs, budgets = load_set(args.n)
    save("data", budget_summary(budgets))
    return Bench(device, res, save, tok, [e.text for e in exs], budgets, build(args, tok, device, dtype))


def run(args) -> None:
    import torch

    b = setup(args)
    device, res, save, tok, texts, budgets, model = b.device, b.res, b.save, b.tok, b.texts, b.budgets, b.model

    # 1. T4 emulation.
    cap = t4_emulation(device)
    save("t4_baseline", baseline(model, tok, texts, budgets, device, args.baseline_n, args.baseline_seconds))
    for constrained in (False, True):
        key = "t4_kner_" + ("constrained" if constrained else "unconstrained")
        save(key, kner_run(model, tok, texts, budgets, device, constrained, cap, 256))
    base = res["t4_baseline"]
    u, c = res["t4_kner_unconstrained"], res["t4_kner_constrained"]
    save(
        "t4_summary",
        {
            "speedup_sentences_unconstrained": round(u["sentences_per_s"] / base["sentences_per_s"], 1),
            "speedup_sentences_constrained": round(c["sentences_per_s"] / base["sentences_per_s"], 1),
            "speedup_tokens_unconstrained": round(u["tokens_per_s"] / base["tokens_per_s"], 1),
            "speedup_tokens_constrained": round(c["tokens_per_s"] / base["tokens_per_s"], 1),
            "speedup_vs_extrapolated_constrained": round(
                c["sentences_per_s"] / base["extrapolated_sentences_per_s"], 1
            ),
            "constraint_overhead": round(c["seconds"] / u["seconds"] - 1, 4),
        },
    )

    # 2. Full card.
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.backends.cuda.enable_flash_sdp(True)
        torch.cuda.empty_cache()
    for constrained in (False, True):
        if time.perf_counter() - T0 > args.stop_after:
            save("skipped_full_card_" + str(constrained), "time limit")
            continue
        key = "full_kner_" + ("constrained" if constrained else "unconstrained")
        save(key, kner_run(model, tok, texts, budgets, device, constrained, None, args.full_max_batch))
    log("done")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--tokenizer-src", default=str(ROOT.parent / "shared" / "tokenizers" / "llama-2"))
    p.add_argument("--n", type=int, default=1000)
    r = sub.add_parser("run")
    r.add_argument("--out", default="infer_bench.json")
    r.add_argument("--tiny", action="store_true", help="tiny model (CPU smoke test)")
    r.add_argument("--n", type=int, default=1000)
    r.add_argument("--baseline-n", type=int, default=50)
    r.add_argument("--baseline-seconds", type=float, default=100.0)
    r.add_argument("--full-max-batch", type=int, default=512)
    r.add_argument("--stop-after", type=float, default=400.0, help="skip remaining runs after this many seconds")
    f = sub.add_parser("profile")
    f.add_argument("--out", default="infer_profile.txt")
    f.add_argument("--tiny", action="store_true")
    f.add_argument("--n", type=int, default=256)
    args = ap.parse_args()
    {"prepare": prepare, "run": run, "profile": profile}[args.cmd](args)


if __name__ == "__main__":
    main()
