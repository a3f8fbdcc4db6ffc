"""Where a whole kner extraction run's time goes (issue 16): prefill, decode forwards, grammar, bookkeeping.

The decode probe (``decode_step_probe.py``) showed a CUDA graph cutting one decode forward about 4x,
yet the 1,000-sentence run only went from 50.9 to 42.1 s. This splits the run. Same model, sentences
and emulation as ``generate_baseline.py`` (random-weight LLaMA-2-7B, NF4 + LoRA, T4 emulation,
constrained, EOS ignored, each sentence its gold answer length):

1. ``plain``: ``Extractor.predict`` as users run it (the reference wall time);
2. ``split``: the same run with the device synchronised around each phase, every phase's seconds
   summed: prefill forwards, decode forwards (graph warm-up + capture on a bucket's first visit, replays;
   by rows bucket), the grammar's choice (allowed sets, mask, argmax, advance), the engine's own
   bookkeeping (the rest of a decode step, admission, room), and the extractor around the engine.
   Synchronising removes the host/device overlap, so the phases add up to a little more than ``plain``;
3. ``linears``: every linear shape of the model alone (bitsandbytes' 4-bit matmul as the model runs
   it, and the same product in plain fp16) at the row counts a run meets, milliseconds per call;
4. ``kernels``: torch.profiler over a 200-sentence run, the CUDA kernels by total time.

    python3 benchmarks/engine_split.py --out $OUT/engine_split.json      # on the GPU machine
    python benchmarks/engine_split.py --tiny --n 24 --out /tmp/split.json  # CPU smoke test
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import time
from types import SimpleNamespace

import infer_bench as ib
from infer_bench import log, sync, t4_emulation, timed


class Clock:
    """Seconds and calls per phase, the device synchronised at each boundary."""

    def __init__(self, device):
        self.device = device
        self.s = collections.defaultdict(float)
        self.n = collections.Counter()

    @contextlib.contextmanager
    def phase(self, name: str):
        sync(self.device)
        t = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.s[name] += time.perf_counter() - t
            self.n[name] += 1


@contextlib.contextmanager
def instrumented(clock: Clock):
    """Wrap the engine's phases (class attributes, restored after)."""
    from kner.inference import constrained, engine

    E, G, C = engine.PagedEngine, engine._DecodeGraphs, constrained.ConstrainedChooser
    saved = [(E, "_prefill"), (E, "_decode_step"), (E, "_admit"), (E, "_make_room"), (E, "run")]
    saved += [(E, "_decode_logits"), (G, "logits"), (C, "choose")]
    orig = {(cls, name): cls.__dict__[name] for cls, name in saved}
    inside = {"prefill": False, "graphs": False}

    def wrap(cls, name, label):
        f = orig[(cls, name)]

        def g(*a, **k):
            with clock.phase(label):
                return f(*a, **k)

        setattr(cls, name, g)

    wrap(E, "run", "engine_run")
    wrap(E, "_decode_step", "decode_step")
    wrap(E, "_admit", "admit")
    wrap(E, "_make_room", "make_room")

    def prefill(self, st, group):
        inside["prefill"] = True
        try:
            with clock.phase("prefill"):
                return orig[(E, "_prefill")](self, st, group)
        finally:
            inside["prefill"] = False

    def logits(self, st, inputs):
        nb, lb = inputs["table"].shape
        key = (nb, lb)
        label = "decode_graph_replay" if key in self.graphs and self.out is not None else "decode_capture"
        clock.n[f"rows_{nb}_{label}"] += 1
        inside["graphs"] = True
        try:
            with clock.phase(label):
                return orig[(G, "logits")](self, st, inputs)
        finally:
            inside["graphs"] = False

    def decode_logits(self, st, t):
        if inside["graphs"] or inside["prefill"]:
            return orig[(E, "_decode_logits")](self, st, t)
        with clock.phase("decode_eager_no_graphs"):
            return orig[(E, "_decode_logits")](self, st, t)

    def choose(self, logits, keys):
        with clock.phase("choose_in_prefill" if inside["prefill"] else "choose_in_decode"):
            return orig[(C, "choose")](self, logits, keys)

    E._prefill, E._decode_logits, G.logits, C.choose = prefill, decode_logits, logits, choose
    try:
        yield
    finally:
        for (cls, name), f in orig.items():
            setattr(cls, name, f)


def split_report(clock: Clock, total: float) -> dict:
    s, n = clock.s, clock.n
    decode_fw = s["decode_graph_replay"] + s["decode_capture"]
    decode_fw += s["decode_eager_no_graphs"]
    out = {
        "predict_seconds": round(total, 2),
        "prefill_seconds_incl_first_choice": round(s["prefill"], 2),
        "prefill_forwards": n["prefill"],
        "choose_in_prefill_seconds": round(s["choose_in_prefill"], 2),
        "decode_steps": n["decode_step"],
        "decode_step_seconds": round(s["decode_step"], 2),
        "decode_forward_seconds": round(decode_fw, 2),
        "graph_replay": [round(s["decode_graph_replay"], 2), n["decode_graph_replay"]],
        "warmup_and_capture": [round(s["decode_capture"], 2), n["decode_capture"]],
        "eager_no_graphs": [round(s["decode_eager_no_graphs"], 2), n["decode_eager_no_graphs"]],
        "choose_in_decode_seconds": round(s["choose_in_decode"], 2),
        "decode_bookkeeping_seconds": round(s["decode_step"] - decode_fw - s["choose_in_decode"], 2),
        "admit_seconds": round(s["admit"], 3),
        "make_room_seconds": round(s["make_room"], 3),
        "engine_other_seconds": round(
            s["engine_run"] - s["prefill"] - s["decode_step"] - s["admit"] - s["make_room"], 2
        ),
        "outside_engine_seconds": round(total - s["engine_run"], 2),
        "by_rows_bucket": {k: v for k, v in sorted(n.items()) if k.startswith("rows_")},
    }
    return out


def linears(model, device, rows_list) -> dict:
    """ms per call of each distinct 4-bit linear shape: bitsandbytes as the model runs it vs fp16."""
    import torch

    seen = {}
    for m in model.modules():
        base = getattr(m, "base_layer", None)
        if base is not None and hasattr(base, "weight") and hasattr(base.weight, "quant_state"):
            seen.setdefault((base.out_features, base.in_features), base)
    out = {}
    for (n_out, n_in), base in seen.items():
        w16 = torch.randn(n_out, n_in, device=device, dtype=torch.float16) / n_in**0.5
        for m in rows_list:
            x = torch.randn(m, n_in, device=device, dtype=torch.float16)
            row = {}
            fns = [("bnb", lambda x=x, b=base: b(x)), ("fp16", lambda x=x, w=w16: torch.nn.functional.linear(x, w))]
            for name, fn in fns:
                with torch.inference_mode():
                    timed(fn, 3, device)  # warm-up
                    row[name] = round(timed(fn, 20, device)[0], 4)
            out[f"{n_out}x{n_in}@{m}"] = row
        del w16
    return out


def attention_check(device, rows=64, heads=32, head_dim=128, prefix=280, block=16, width=32) -> dict:
    """The paged decode kernel against the gathering path on one layer's shapes: max difference, ms."""
    import torch

    from kner.inference import paged_attention as pa
    from kner.inference import prefix_cache

    if not pa.kernel_available(device):
        return {"skipped": "no CUDA or no Triton"}
    g = torch.Generator(device=device).manual_seed(0)
    dt = torch.float16
    blocks = rows * width + 1
    kpool, vpool = (torch.randn(heads, blocks * block, head_dim, device=device, dtype=dt, generator=g) for _ in "kv")
    pk, pv = (torch.randn(1, heads, prefix, head_dim, device=device, dtype=dt, generator=g) for _ in "kv")
    table = torch.randperm(blocks - 1, device=device, generator=g)[: rows * width].view(rows, width).to(torch.int32)
    lens = torch.randint(1, width * block + 1, (rows,), device=device, generator=g)
    q = torch.randn(rows, heads, 1, head_dim, device=device, dtype=dt, generator=g)
    scale = head_dim**-0.5
    keys = torch.arange(width * block, device=device)
    mask = (keys[None] < lens[:, None])[:, None, None, :]
    # The engine's cache as the attention reads it: the prefix K/V of one layer, no decode op (so the
    # general path runs on the K/V gathered here, as it does on the CPU).
    state = SimpleNamespace(layers=[SimpleNamespace(pk=pk, pv=pv)], op=None, positions=None)
    module = SimpleNamespace(layer_idx=0)

    def gathered():
        k, v = pa.gathered(kpool, vpool, table, block)
        return prefix_cache.shared_prefix_attention(module, q, k, v, mask, scaling=scale)[0]

    def kernel():
        return pa.decode_attention(q, pk, pv, kpool, vpool, table, lens, block, scale)

    prefix_cache._active.cache = state
    try:
        out = {"max_abs_diff": float((kernel().float() - gathered().float()).abs().max())}
        for name, fn in (("gathered_ms", gathered), ("kernel_ms", kernel)):
            for _ in range(3):
                fn()
            sync(device)
            t = time.perf_counter()
            for _ in range(20):
                fn()
            sync(device)
            out[name] = round((time.perf_counter() - t) / 20 * 1e3, 3)
    finally:
        prefix_cache._active.cache = None
    return out | {"rows": rows, "heads": heads, "prefix": prefix, "keys_max": width * block}


def kernels(ex, texts, budgets, device) -> str:
    prof, sort = ib.profiled(ex, texts, budgets, device)
    return prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=90)


def run(args) -> None:
    from kner.inference import Extractor

    b = ib.setup(args)
    device, save, tok, texts, budgets, model = b.device, b.save, b.tok, b.texts, b.budgets, b.model
    cap = t4_emulation(device)
    try:
        save("attention_check", attention_check(device))
    except Exception as err:  # noqa: BLE001 -- a failed check is a result; the runs go on
        save("attention_check", {"error": repr(err)})
    ex = Extractor(model, tok, "spacy19", constrained=True, ignore_eos=True, max_memory=cap, max_batch_size=256)
    ex.predict(texts[:8], new_tokens=budgets[:8])  # warm-up: kernels, token table, prefix K/V
    sync(device)
    t = time.perf_counter()
    ex.predict(texts, new_tokens=budgets)
    sync(device)
    plain = ex.last_stats.to_dict()
    plain.pop("labels", None)
    save("plain", plain | {"wall_seconds": round(time.perf_counter() - t, 2)})
    clock = Clock(device)
    with instrumented(clock):
        t = time.perf_counter()
        ex.predict(texts, new_tokens=budgets)
        total = time.perf_counter() - t
    save("split", split_report(clock, total))
    if not args.skip_linears:
        save("linears_ms", linears(model, device, [int(r) for r in args.rows.split(",")]))
    if args.profile_n:
        table = kernels(ex, texts[: args.profile_n], budgets[: args.profile_n], device)
        print(table, flush=True)
        save("kernels_table", table.splitlines())
    log("done")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="engine_split.json")
    ap.add_argument("--tiny", action="store_true", help="tiny model (CPU smoke test)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--rows", default="1,16,64,128,256,1800", help="row counts for the linear shapes")
    ap.add_argument("--profile-n", type=int, default=200, help="sentences under torch.profiler (0: skip)")
    ap.add_argument("--skip-linears", action="store_true", help="leave out the per-shape linear timings")
    run(ap.parse_args())


if __name__ == "__main__":
    main()
