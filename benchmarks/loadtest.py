"""Load a running ``kner serve`` with concurrent clients and report throughput, latency and batching.

    python benchmarks/loadtest.py http://127.0.0.1:8000 --input sentences.txt --clients 16

Each client sends one request at a time (``--texts-per-request`` texts, taken in
order from ``--input``, one text per line) until every text has been sent once.
Standard library only, so it runs anywhere Python does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _post(url: str, payload: dict, timeout: float) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(payload, ensure_ascii=False).encode("utf-8"), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def run(url: str, texts: list[str], clients: int = 16, texts_per_request: int = 1, timeout: float = 600) -> dict:
    url = url.rstrip("/")
    before = _get(url + "/health")["batching"]
    requests = [texts[i : i + texts_per_request] for i in range(0, len(texts), texts_per_request)]
    lock = threading.Lock()
    next_req = [0]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    entities = [0]

    def client():
        while True:
            with lock:
                if next_req[0] >= len(requests):
                    return
                batch = requests[next_req[0]]
                next_req[0] += 1
            t0 = time.perf_counter()
            status, body = _post(url + "/extract", {"texts": batch}, timeout)
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    entities[0] += sum(len(r["entities"]) for r in body["results"])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = _get(url + "/health")["batching"]
    calls = after["extractor_calls"] - before["extractor_calls"]
    lat = sorted(latencies)
    return {
        "texts": len(texts),
        "requests": len(requests),
        "clients": clients,
        "seconds": round(wall, 2),
        "texts_per_s": round(len(texts) / wall, 2),
        "statuses": statuses,
        "entities": entities[0],
        "latency_ms": {
            "p50": round(1000 * statistics.median(lat), 1),
            "p95": round(1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))], 1),
            "max": round(1000 * lat[-1], 1),
        }
        if lat
        else None,
        "extractor_calls": calls,
        "texts_per_call": round((after["texts"] - before["texts"]) / calls, 2) if calls else None,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python benchmarks/loadtest.py", description=__doc__.splitlines()[0])
    ap.add_argument("url", help="server address, e.g. http://127.0.0.1:8000")
    ap.add_argument("--input", "-i", required=True, help="texts, one per line (blank lines skipped)")
    ap.add_argument("--clients", "-c", type=int, default=16)
    ap.add_argument("--texts-per-request", "-n", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N texts")
    args = ap.parse_args(argv)
    with open(args.input, encoding="utf-8") as f:
        texts = [ln.rstrip("\r\n") for ln in f if ln.strip()]
    if args.limit:
        texts = texts[: args.limit]
    if not texts:
        sys.exit(f"{args.input}: no texts")
    print(json.dumps(run(args.url, texts, args.clients, args.texts_per_request), ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
