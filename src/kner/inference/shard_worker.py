"""One worker of a sharded run: ``python -m kner.inference.shard_worker DIR XXofYY --run N ...``.

Started by :func:`kner.inference.sharding.predict_sharded` with ``CUDA_VISIBLE_DEVICES``
naming its one card. It loads the model as ``kner predict`` does, predicts its task
file ``--flush-every`` texts at a time, and appends each chunk's results to its
shard file, flushed and fsynced, so a crash loses at most the chunk in progress.
Its state file tells the parent how far it is and, at the end, its ``RunStats``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from kner.data.example import Example
from kner.errors import KnerError
from kner.inference import Extractor
from kner.inference.results import RunStats
from kner.inference.shard_files import DEFAULT_FLUSH_EVERY, MANIFEST_NAME, write_json_atomic
from kner.model.oom import prefer_expandable_segments
from kner.textio import json_line

# Called after each chunk is on disk with the shard file and the texts written so far (tests crash here).
AfterFlush = Callable[[TextIO, int], None]


def worker_main(
    shard_dir: Path, tag: str, run_no: int, position: int, flush_every: int, after_flush: AfterFlush | None = None
) -> int:
    prefer_expandable_segments()
    import torch  # noqa: PLC0415  lazy: after PYTORCH_CUDA_ALLOC_CONF is set

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    man = json.loads((shard_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    state_path = shard_dir / f"worker-{tag}.json"
    tasks = [json.loads(l) for l in (shard_dir / f"task-{tag}.jsonl").read_text(encoding="utf-8").splitlines() if l]
    cuda = torch.cuda.is_available()
    state: dict[str, Any] = {
        "tag": tag,
        "run": run_no,
        "position": position,
        "pid": os.getpid(),
        "state": "loading",
        "texts": len(tasks),
        "done": 0,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    write_json_atomic(state_path, state)

    t0 = time.perf_counter()
    ext = _load_extractor(man)
    state.update(state="running", load_seconds=round(time.perf_counter() - t0, 3), gen_start=time.time(), chunks=[])
    write_json_atomic(state_path, state)
    total = RunStats()
    with (shard_dir / f"shard-{tag}.jsonl").open("a", encoding="utf-8") as out:
        for c0 in range(0, len(tasks), flush_every):
            chunk = tasks[c0 : c0 + flush_every]
            tc = time.perf_counter()
            lines = _predict_chunk(ext, chunk, run_no, _progress_writer(state, state_path, c0, len(chunk)))
            total.merge(ext.last_stats)
            state["chunks"].append(
                {
                    "texts": len(chunk),
                    "seconds": round(time.perf_counter() - tc, 3),
                    "new_tokens": ext.last_stats.new_tokens,
                }
            )
            out.write("".join(lines))
            out.flush()
            os.fsync(out.fileno())
            state["done"] = c0 + len(chunk)
            write_json_atomic(state_path, state)
            if after_flush is not None:
                after_flush(out, state["done"])
    if cuda:
        torch.cuda.synchronize()
        state["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    total.seconds = 0.0  # the parent times the run across workers
    state.update(state="done", done=len(tasks), gen_end=time.time(), stats=total.to_record())
    write_json_atomic(state_path, state)
    return 0


def _load_extractor(man: dict):
    load, options = man["settings"]["load"], dict(man["settings"]["options"])
    # Batching options may change between runs (e.g. less memory after an OOM), so they are not compared.
    options.update(man.get("neutral_options", {}))
    return Extractor.load(
        load["model"],
        adapter=load["adapter"],
        scheme=load["scheme"],
        quantize_4bit=load["quantize_4bit"],
        compute_dtype=load["compute_dtype"],
        **options,
    )


def _progress_writer(state: dict, state_path: Path, c0: int, n: int) -> Callable[[int, int], None]:
    """``Extractor.predict``'s progress callback: texts done, written to the state file at most twice a second."""
    last = 0.0

    def progress(done_pieces: int, total_pieces: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if now - last < 0.5:
            return
        last = now
        state["done"] = c0 + int(n * done_pieces / max(1, total_pieces))
        write_json_atomic(state_path, state)

    return progress


def _predict_chunk(ext, chunk: list[dict], run_no: int, progress) -> list[str]:
    budgets = [t["new_tokens"] for t in chunk] if "new_tokens" in chunk[0] else None
    preds = ext.predict([t["text"] for t in chunk], progress=progress, new_tokens=budgets)
    lines = []
    for t, p in zip(chunk, preds):
        meta = dict(t.get("meta") or {})
        if p.error:
            meta["error"] = p.error
        ex = Example(t["id"], t["text"], p.entities, meta)
        lines.append(json_line({"index": t["index"], "run": run_no, "example": ex.to_dict()}) + "\n")
    return lines


def main(argv: Sequence[str] | None = None, after_flush: AfterFlush | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m kner.inference.shard_worker",
        description="(internal) compute one shard; started by `kner predict --gpus`",
    )
    ap.add_argument("shard_dir", type=Path)
    ap.add_argument("tag")
    ap.add_argument("--run", type=int, required=True)
    ap.add_argument("--position", type=int, required=True)
    ap.add_argument("--flush-every", type=int, default=DEFAULT_FLUSH_EVERY)
    args = ap.parse_args(argv)
    try:
        return worker_main(args.shard_dir, args.tag, args.run, args.position, args.flush_every, after_flush)
    except KnerError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except Exception:  # noqa: BLE001 -- the log is the only place a worker can say what went wrong
        traceback.print_exc()
        sys.stderr.flush()
        return 1


if __name__ == "__main__":
    sys.exit(main())
