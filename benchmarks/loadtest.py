"""Load a running ``kner serve`` with concurrent clients and report throughput, latency and batching.

    python benchmarks/loadtest.py http://127.0.0.1:8000 --input sentences.txt --clients 16

Each client sends one request at a time (``--texts-per-request`` texts, taken in
order from ``--input``, one text per line) until every text has been sent once,
or until ``--seconds`` have passed (then no new request starts). Standard
library only, so it runs anywhere Python does.
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


def _batching(url: str) -> dict:
    """The server's batching counters (``/health``), whichever server version answers."""
    return _get(url + "/health").get("batching", {})


def run(
    url: str,
    texts: list[str],
    clients: int = 16,
    texts_per_request: int = 1,
    timeout: float = 600,
    max_seconds: float | None = None,
) -> dict:
    url = url.rstrip("/")
    before = _batching(url)
    requests = [texts[i : i + texts_per_request] for i in range(0, len(texts), texts_per_request)]
    lock = threading.Lock()
    next_req = [0]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    entities = [0]
    sent_texts = [0]
    t0 = time.perf_counter()
    stop_at = t0 + max_seconds if max_seconds else None

    def client():
        while True:
            with lock:
                if next_req[0] >= len(requests) or (stop_at is not None and time.perf_counter() > stop_at):
                    return
                batch = requests[next_req[0]]
                next_req[0] += 1
            t = time.perf_counter()
            status, body = _post(url + "/extract", {"texts": batch}, timeout)
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt)
                statuses[status] = statuses.get(status, 0) + 1
                sent_texts[0] += len(batch)
                if status == 200:
                    entities[0] += sum(len(r["entities"]) for r in body["results"])

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = _batching(url)
    lat = sorted(latencies)
    out = {
        "texts": sent_texts[0],
        "requests": len(latencies),
        "clients": clients,
        "seconds": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 2),
        "texts_per_s": round(sent_texts[0] / wall, 2),
        "statuses": statuses,
        "entities": entities[0],
        "latency_ms": {
            "p50": round(1000 * statistics.median(lat), 1),
            "p95": round(1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))], 1),
            "max": round(1000 * lat[-1], 1),
        }
        if lat
        else None,
    }
    # Stop-and-go servers count extractor calls; continuous ones count decode steps and their rows.
    if "extractor_calls" in after:
        calls = after["extractor_calls"] - before.get("extractor_calls", 0)
        out["extractor_calls"] = calls
        out["texts_per_call"] = round((after["texts"] - before.get("texts", 0)) / calls, 2) if calls else None
    if "decode_steps" in after:
        steps = after["decode_steps"] - before.get("decode_steps", 0)
        out["decode_steps"] = steps
        rows = after["decode_row_steps"] - before.get("decode_row_steps", 0)
        out["rows_per_decode_step"] = round(rows / steps, 2) if steps else None
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python benchmarks/loadtest.py", description=__doc__.splitlines()[0])
    ap.add_argument("url", help="server address, e.g. http://127.0.0.1:8000")
    ap.add_argument("--input", "-i", required=True, help="texts, one per line (blank lines skipped)")
    ap.add_argument("--clients", "-c", type=int, default=16)
    ap.add_argument("--texts-per-request", "-n", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N texts")
    ap.add_argument("--seconds", type=float, default=None, help="start no request after this many seconds")
    args = ap.parse_args(argv)
    with open(args.input, encoding="utf-8") as f:
        texts = [ln.rstrip("\r\n") for ln in f if ln.strip()]
    if args.limit:
        texts = texts[: args.limit]
    if not texts:
        sys.exit(f"{args.input}: no texts")
    rep = run(args.url, texts, args.clients, args.texts_per_request, max_seconds=args.seconds)
    print(json.dumps(rep, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
