"""Where a decode step's time can go down: one engine decode forward, eager vs. two levers (issue 16).

The extraction goal (40 sentences/s, 10x constrained ``generate``) needs a faster decode step; the
profile on record says the step is bound by launching its 2,275 kernels, the GPU busy a third of the
time. This probe measures the model forward of one paged-engine decode step (the engine's own cache,
shared-prefix attention and fused LoRA; no grammar, no Python bookkeeping around it) for a few row
counts, and the same step with

* ``rmsnorm``: every RMSNorm through ``torch.nn.functional.rms_norm`` (one fused kernel on CUDA in
  recent torch, where transformers' ``LlamaRMSNorm`` launches about eight; 65 norms a step at 7B);
* ``graph``: the whole forward captured once in a CUDA graph and replayed (static inputs: the row
  count, the key length and the pool slots fixed per bucket, as an engine would do per bucket).

For each: milliseconds a step (median of ``--steps``), and the largest logit difference from eager
(the levers must not change what is decoded). Same model and emulation as ``infer_bench.py``:
random-weight LLaMA-2-7B, NF4 + LoRA r=16, fp16, flash SDPA off, 15 GiB cap.

    python3 benchmarks/decode_step_probe.py --out $OUT/decode_step_probe.json     # on the GPU machine
    python benchmarks/decode_step_probe.py --tiny --out /tmp/probe.json           # CPU: eager and rmsnorm only
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import infer_bench as ib  # noqa: E402  after the path: it is a sibling script
from infer_bench import timed  # noqa: E402  as above


def rmsnorm_modules(model):
    import torch

    for m in model.modules():
        w = getattr(m, "weight", None)
        eps = getattr(m, "variance_epsilon", getattr(m, "eps", None))
        if type(m).__name__.endswith("RMSNorm") and isinstance(w, torch.nn.Parameter) and eps is not None:
            yield m, eps


@contextlib.contextmanager
def fused_rmsnorm(model):
    """transformers' Llama RMSNorm: fp32 variance, normalise, cast back, times the weight."""
    import types

    import torch.nn.functional as F

    def forward(self, x):
        y = F.rms_norm(x.float(), (x.shape[-1],), None, self._kner_eps).to(x.dtype)
        return self.weight * y

    mods = list(rmsnorm_modules(model))
    for m, eps in mods:
        m._kner_eps = float(eps)
        m.forward = types.MethodType(forward, m)
    try:
        yield len(mods)
    finally:
        for m, _ in mods:
            m.__dict__.pop("forward", None)
            del m._kner_eps


def decode_inputs(prefix_len: int, rows: int, own: int, device, vocab: int = 32000):
    """Static decode inputs: ``rows`` rows that each hold ``own`` tokens after the prefix, decoding the next."""
    import torch

    lmax, block = own + 1, 16
    width = -(-lmax // block)
    table = torch.arange(rows * width, device=device, dtype=torch.int32).view(rows, width)  # row i: its own blocks
    keys = torch.arange(width * block, device=device)
    lens = torch.full((rows,), lmax, device=device)
    return {
        "ids": torch.randint(3, min(1000, vocab), (rows, 1), device=device),
        "mask": (keys[None] < lens[:, None])[:, None, None, :],
        "pos": torch.full((rows, 1), prefix_len + own, device=device),
        "write": (table[:, own // block].long() * block + own % block).contiguous(),
        "table": table,
        "lens": lens,
        "block": block,
        "key_pos": (keys + prefix_len)[None],
    }


def forward_fn(model, cache, inp):
    from kner.model import compat

    cache_arg = compat.cache_kwargs(model, cache)

    def step():
        cache.op = ("decode", inp["write"], inp["table"], inp["lens"], inp["block"])
        cache.positions = (inp["pos"], inp["key_pos"])
        out = model(
            input_ids=inp["ids"],
            attention_mask=inp["mask"],
            position_ids=inp["pos"],
            use_cache=True,
            logits_to_keep=1,
            **cache_arg,
        )
        return out.logits[:, -1]

    return step


def probe(args) -> dict:
    import torch

    from kner.inference import Extractor
    from kner.inference.engine import _make_cache
    from kner.inference.prefix_cache import shared_prefix_attention_active
    from kner.model.loading import load_tokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    tok = load_tokenizer(str(ib.DATA / "tokenizer"))  # `infer_bench.py prepare` writes it (LLaMA-2's)
    model = ib.build(args, tok, device, dtype)
    cap = ib.t4_emulation(device)
    ex = Extractor(model, tok, "spacy19", ignore_eos=True, max_memory=cap)  # fuses the LoRA layers, as in use
    prefix = ex._prefix(len(ex.prefix_ids))
    res: dict = {"fused_lora_layers": ex.fused_layers, "prefix_tokens": prefix.length, "buckets": {}}
    for rows in args.rows:
        inp = decode_inputs(prefix.length, rows, args.own_tokens, device, len(tok))
        cache = _make_cache(prefix, rows * -(-(args.own_tokens + 1) // 16) * 16)  # whole blocks, as decode_inputs
        for layer in cache.layers:  # the pool is uninitialised (new_empty); the engine's prefill fills it
            layer.kpool.normal_()
            layer.vpool.normal_()
        rec: dict = {}
        with torch.no_grad(), shared_prefix_attention_active(model, cache):
            step = forward_fn(model, cache, inp)
            timed(step, 3, device)  # warm-up
            rec["eager_ms"], ref = timed(step, args.steps, device)
            with fused_rmsnorm(model) as n:
                timed(step, 2, device)
                rec["rmsnorm_ms"], out = timed(step, args.steps, device)
                rec["rmsnorm_modules"] = n
                rec["rmsnorm_max_logit_diff"] = float((out.float() - ref.float()).abs().max())
            if device.type == "cuda":
                rec.update(graph(step, ref, args.steps, device))
        rec["rows"] = rows
        res["buckets"][str(rows)] = rec
        ib.log(f"rows {rows}: {json.dumps(rec)}")
        del cache
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return res


def graph(step, ref, steps: int, device) -> dict:
    """Capture ``step`` in a CUDA graph (after warm-up on a side stream, as torch asks) and replay it."""
    import torch

    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            static_out = step()
    except Exception as err:  # noqa: BLE001 -- the point is to learn whether and where capture fails
        import traceback

        return {
            "graph_ok": False,
            "graph_error": f"{type(err).__name__}: {err}"[:800],
            "graph_where": traceback.format_exc()[-2500:],
        }
    ms, _ = timed(g.replay, steps, device)
    return {
        "graph_ok": True,
        "graph_ms": ms,
        "graph_max_logit_diff": float((static_out.float() - ref.float()).abs().max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="decode_step_probe.json")
    ap.add_argument("--rows", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64, 128])
    ap.add_argument("--own-tokens", type=int, default=120, help="tokens each row holds after the prefix")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tiny", action="store_true", help="2-layer model on CPU (smoke test)")
    args = ap.parse_args()
    import torch

    out = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    out.update(probe(args))
    Path(args.out).write_text(json.dumps(out, indent=1))
    ib.log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
