"""Serving throughput and latency at 1, 8, 32 and 200 concurrent clients (``kner serve`` on 127.0.0.1).

The server runs in a child process (this script with ``serve``): the load
generator's 200 client threads would otherwise compete with the server for
the GIL. The parent runs ``benchmarks/loadtest.py``'s ``run`` once per client
count over the same texts (closed loop: each client sends its next request when
its answer comes), each level bounded in requests and seconds, and writes the
results to ``--out`` after each level.

Models:

* ``--model DIR``: a ``kner train``/``kner export`` folder, e.g. the quickstart's
  ``runs/quickstart/train`` (``kner run configs/quickstart.yaml --stop-after train``);
* ``--random-7b``: LLaMA-2-7B architecture with random weights, NF4 + LoRA as in
  ``benchmarks/infer_bench.py`` (its ``build``), T4 emulation (fp16, flash SDPA off,
  15 GiB cap); ``--tokenizer`` is the folder ``infer_bench.py prepare`` writes
  (``.device/infer/tokenizer``, holding the model's ``config.json``). Random weights
  write arbitrary tags, so EOS is ignored and every text generates its whole budget
  (``--max-new-tokens``, default 32 there). ``--tiny`` shrinks it for a CPU smoke test.

Only APIs that also exist in the stop-and-go server of commit 17a3897 are used
(``Extractor``, ``create_app``, ``ServeSettings``, ``BackgroundServer``), so the same
script measures old and new code: put the old checkout's ``src`` on ``PYTHONPATH``.

    python benchmarks/serve_bench.py --model runs/quickstart/train --input runs/quickstart/prepare/test.jsonl \\
        --out serve_bench.json
    PYTHONPATH=/tmp/old/src python benchmarks/serve_bench.py --random-7b --tokenizer .device/infer/tokenizer \\
        --input .device/infer/kmou_test1000.jsonl --out $OUT/serve_bench.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
T0 = time.perf_counter()
WARM_TEXT = "이순신은 조선 중기의 무신이다."


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# -- the server (child process) --------------------------------------------------------------------


def import_kner():
    """kner from ``PYTHONPATH`` if it is there (an old checkout's ``src``), else this checkout's; under
    17a3897's flat module names (``kner.modeling``, ``kner.prompt``, ...) today's names are aliased, so
    infer_bench's helpers import on both."""
    import importlib
    import types

    try:
        import kner
    except ImportError:
        sys.path.insert(0, str(ROOT / "src"))
        import kner
    try:
        importlib.import_module("kner.model.loading")
    except ImportError:
        for new, old in {
            "kner.model.loading": "kner.modeling",
            "kner.model.prompt": "kner.prompt",
            "kner.data.example": "kner.example",
            "kner.data.schemes": "kner.schemes",
            "kner.inference.loader": "kner.inference.extractor",  # match_adapter_dtype
        }.items():
            parent = new.rsplit(".", 1)[0]
            try:
                importlib.import_module(parent)  # a real package in both trees (kner.inference)
            except ImportError:
                sys.modules.setdefault(parent, types.ModuleType(parent))  # kner.model, kner.data: not in 17a3897
            sys.modules[new] = importlib.import_module(old)
    return kner


def build_extractor(args):
    """The extractor and a description of the device."""
    import torch

    kner = import_kner()
    from kner.inference import Extractor

    opts = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
    if args.batch_size:
        opts["batch_size"] = args.batch_size
    if args.model:
        ext = Extractor.load(args.model, **opts)
        dev = ext.model.get_input_embeddings().weight.device
    else:
        import infer_bench  # after import_kner: its sys.path entry must not replace PYTHONPATH's kner
        from kner.model.loading import load_tokenizer

        tok_dir = Path(args.tokenizer).resolve()
        if not (tok_dir / "config.json").is_file():
            sys.exit(f"{tok_dir}: no config.json (use the folder `infer_bench.py prepare` writes)")
        infer_bench.DATA = tok_dir.parent  # build() reads the model config from DATA / "tokenizer"
        if tok_dir.name != "tokenizer":
            sys.exit(f"{tok_dir}: infer_bench.build reads <folder>/tokenizer; name the folder 'tokenizer'")
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        tok = load_tokenizer(str(tok_dir))
        model = infer_bench.build(args, tok, dev, torch.float16 if dev.type == "cuda" else torch.float32)
        cap = infer_bench.t4_emulation(dev)
        opts.setdefault("max_new_tokens", 32)
        ext = Extractor(model, tok, "spacy19", ignore_eos=True, max_memory=cap, max_batch_size=256, **opts)
    device = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    return ext, {"kner": str(Path(kner.__file__).parent), "device": device, "torch": torch.__version__}


def serve(args) -> None:
    import_kner()  # this checkout's src when PYTHONPATH has none
    from kner.serve import BackgroundServer, ServeSettings, create_app

    ext, info = build_extractor(args)
    t = time.perf_counter()
    ext([WARM_TEXT])  # token table, grammar, prefix K/V, kernels: as `kner serve` does before it listens
    info["warm_up_s"] = round(time.perf_counter() - t, 2)
    settings = ServeSettings(max_queue_texts=100_000, timeout_s=args.seconds * 2)
    with BackgroundServer(create_app(ext, settings, model_name="bench")) as srv:
        print("SERVING " + json.dumps({"url": srv.url, **info}), flush=True)
        sys.stdin.read()  # until the parent closes our stdin (or dies)


# -- the load (parent process) ---------------------------------------------------------------------


def read_texts(path: str) -> list[str]:
    """Texts of canonical JSONL (``"text"`` of each line) or of a text file (one per line)."""
    lines = [ln.rstrip("\r\n") for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    if path.endswith(".jsonl"):
        return [json.loads(ln)["text"] for ln in lines]
    return lines


def start_server(args) -> tuple[subprocess.Popen, dict]:
    argv = [sys.executable, str(Path(__file__).resolve()), "serve", *args.server_argv]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + args.start_timeout
    assert proc.stdout is not None
    for line in proc.stdout:  # ends when the child exits
        if line.startswith("SERVING "):
            return proc, json.loads(line[len("SERVING ") :])
        print(line, end="", file=sys.stderr)
        if time.monotonic() > deadline:
            break
    proc.kill()
    sys.exit(f"the server did not start (exit code {proc.wait()})")


def bench(args) -> None:
    from loadtest import _get
    from loadtest import run as loadtest

    texts = read_texts(args.input)
    if args.limit:
        texts = texts[: args.limit]
    if not texts:
        sys.exit(f"{args.input}: no texts")
    res: dict = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "pythonpath": os.environ.get("PYTHONPATH"),
        "input": args.input,
        "texts_available": len(texts),
        "texts_per_request": args.texts_per_request,
        "levels": {},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    proc, info = start_server(args)
    res["server"] = info
    log(f"server up: {json.dumps(info)}")
    try:
        url = info["url"]
        loadtest(url, texts[:8], clients=4, texts_per_request=args.texts_per_request, max_seconds=args.seconds)
        for clients in args.clients:
            n = max(args.requests, args.per_client * clients) * args.texts_per_request
            batch = [texts[i % len(texts)] for i in range(n)]
            rep = loadtest(
                url, batch, clients=clients, texts_per_request=args.texts_per_request, max_seconds=args.seconds
            )
            res["levels"][str(clients)] = rep
            out.write_text(json.dumps(res, indent=2, ensure_ascii=False))
            lat = rep["latency_ms"] or {}
            log(
                f"{clients:>4} clients: {rep['requests']} requests in {rep['seconds']} s = "
                f"{rep['requests_per_s']} requests/s, p50 {lat.get('p50')} ms, p95 {lat.get('p95')} ms, "
                f"statuses {rep['statuses']}"
            )
        res["health_after"] = _get(url + "/health")
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    res["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    out.write_text(json.dumps(res, indent=2, ensure_ascii=False))
    print(json.dumps(res["levels"], indent=2, ensure_ascii=False))


def server_options(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("model (passed to the server process)")
    g.add_argument("--model", help="kner train/export output folder")
    g.add_argument("--random-7b", action="store_true", help="LLaMA-2-7B shape, random NF4 + LoRA weights")
    g.add_argument("--tokenizer", default=str(ROOT / ".device" / "infer" / "tokenizer"), help="with --random-7b")
    g.add_argument("--tiny", action="store_true", help="with --random-7b: a 2-layer model (CPU smoke test)")
    g.add_argument("--max-new-tokens", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None, help="rows decoded at once (default: planned)")
    g.add_argument("--seconds", type=float, default=120.0, help="longest a client-count level may start requests")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        ap = argparse.ArgumentParser(prog="serve_bench.py serve")
        server_options(ap)
        args = ap.parse_args(argv[1:])
        serve(args)
        return
    ap = argparse.ArgumentParser(prog="python benchmarks/serve_bench.py", description=__doc__.splitlines()[0])
    server_options(ap)
    ap.add_argument("--input", "-i", required=True, help="texts: canonical JSONL or one text per line")
    ap.add_argument("--out", default="serve_bench.json")
    ap.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32, 200])
    ap.add_argument("--requests", type=int, default=200, help="requests per level at least ...")
    ap.add_argument("--per-client", type=int, default=3, help="... and at least this many per client")
    ap.add_argument("--texts-per-request", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N texts of --input")
    ap.add_argument("--start-timeout", type=float, default=900.0, help="seconds to wait for the server")
    args = ap.parse_args(argv)
    if bool(args.model) == bool(args.random_7b):
        ap.error("give --model DIR or --random-7b")
    args.server_argv = _server_argv(args)
    bench(args)


def _server_argv(args) -> list[str]:
    out = ["--model", args.model] if args.model else ["--random-7b", "--tokenizer", args.tokenizer]
    if args.tiny:
        out.append("--tiny")
    for flag, value in (("--max-new-tokens", args.max_new_tokens), ("--batch-size", args.batch_size)):
        if value:
            out += [flag, str(value)]
    return [*out, "--seconds", str(args.seconds)]


if __name__ == "__main__":
    main()
