"""When to capture a decode step's CUDA graph, and how wide the rows buckets are: kner runs side by side.

With the paged attention kernel a graph depends on the rows bucket alone (and the block table's width),
so most buckets are met many times; the engine still runs a bucket's first step eagerly and captures on
its second visit, which paid when graphs were per (rows, keys) bucket. Same model, set and emulation as
``generate_baseline.py``; ``Extractor.predict`` on the 1,000 sentences, constrained, once per variant:

* ``second_visit_16``: the engine as it is (capture on a bucket's second visit; rows in 16s above 8);
* ``first_visit_16``: capture on the first visit;
* ``first_visit_32``: capture on the first visit, rows in 32s above 64 (fewer graphs, more padding).

    cd benchmarks && python3 graph_policy.py --out $OUT/graph_policy.json     # on the GPU machine
"""

from __future__ import annotations

import argparse

import infer_bench as ib
from infer_bench import kner_run, log, t4_emulation


def rows_bucket_32(n: int) -> int:
    return n if n <= 2 else 4 if n <= 4 else 8 if n <= 8 else -(-n // 16) * 16 if n <= 64 else -(-n // 32) * 32


def run(args) -> None:
    from kner.inference import engine

    b = ib.setup(args)
    cap = t4_emulation(b.device)
    default_bucket = engine.rows_bucket
    variants = {"second_visit_16": (2, default_bucket), "first_visit_16": (1, default_bucket)}
    variants["first_visit_32"] = (1, rows_bucket_32)
    for name in args.variants.split(","):
        visit, bucket = variants[name]
        engine._DecodeGraphs.capture_on_visit, engine.rows_bucket = visit, bucket
        try:
            b.save(name, kner_run(b.model, b.tok, b.texts, b.budgets, b.device, True, cap, 256))
        finally:
            engine._DecodeGraphs.capture_on_visit, engine.rows_bucket = 2, default_bucket
    log("done")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="graph_policy.json")
    ap.add_argument("--tiny", action="store_true", help="tiny model (CPU smoke test)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--variants", default="second_visit_16,first_visit_16,first_visit_32,second_visit_16")
    run(ap.parse_args())


if __name__ == "__main__":
    main()
