"""Sharded prediction: one worker process per device, outputs merged in input order, resumable.

The parent process (``kner predict --gpus N``) reads and numbers the inputs and
keeps everything under ``OUTPUT.shards/``::

    manifest.json            input digest, result-affecting settings, this run's layout, run history
    task-XXofYY.jsonl        this run's inputs of worker XX: {"index", "id", "text", "meta"[, "new_tokens"]}
    shard-XXofYY.jsonl       results, appended per chunk: {"index", "run", "example"}
    worker-XXofYY.json       a worker's state: loading / running (texts done) / done (stats, timings)
    worker-XXofYY.log        its stdout and stderr
    lock                     pid of the parent using the folder

Workers are ``python -m kner.inference.sharding worker DIR XXofYY``, each with
``CUDA_VISIBLE_DEVICES`` naming one GPU (empty for a CPU worker), so every
worker sees its card as ``cuda:0`` and the Extractor needs no device argument.
Subprocesses, not forked ones: a crash (or the OOM killer) takes one worker
down, and its exit code says how.

Resuming: every result line carries its input index, so the parent, not a
shard's position, decides what is finished: it reads every ``shard-*.jsonl``
(cutting a half-written last line left by a crash), and splits only the
unfinished inputs among this run's workers. A rerun with a different number of
GPUs therefore reuses everything already written. A rerun with a different
input or different result-affecting settings is refused with the list of
differences (``restart=True`` / ``--restart`` discards the folder): silently
starting over could throw away hours of finished work because of a typo.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from kner.errors import ConfigError, DataError, KnerError
from kner.data.splits import balance
from kner.textio import atomic_write, json_line

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST_NAME = "manifest.json"
DEFAULT_FLUSH_EVERY = 512
# Extractor options that change how work is batched, not what a text's output is.
NEUTRAL_OPTIONS = frozenset({"batch_size", "max_memory", "max_batch_size", "cpu_batch_size", "memory_safety",
                             "prefill_chunk_tokens"})
# Tests: "POS:K" makes the worker at position POS of a run write K results, half a line, and exit with code 3.
TEST_EXIT_ENV = "KNER_SHARD_TEST_EXIT"
TEST_EXIT_CODE = 3
PER_TEXT_CHARS = 8      # balancing weight of a text: its characters plus this (prompt suffix, EOS step)


@dataclass
class ShardedResult:
    output: Path
    shard_dir: Path
    total: int                      # inputs
    resumed: int                    # finished by earlier runs, not recomputed
    computed: int                   # computed by this run
    stats: object                   # RunStats summed over this run's workers; seconds = generation wall time
    load_seconds: float             # slowest worker's model load (0 when nothing ran)
    wall_seconds: float             # this call, start to merged output
    devices: list[str] = field(default_factory=list)
    workers: list[dict] = field(default_factory=list)   # each worker's final state file
    dropped_partial_lines: int = 0


# -- devices ----------------------------------------------------------------------

def visible_gpus() -> list[str]:
    """What to put in a child's ``CUDA_VISIBLE_DEVICES`` for each GPU this process sees."""
    import torch

    n = torch.cuda.device_count()        # NVML count: does not create a CUDA context in the parent
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and env.strip():
        entries = [e.strip() for e in env.split(",") if e.strip()]
        return entries[:n]
    return [str(i) for i in range(n)]


def resolve_devices(gpus: str | int | None = None, devices: str | Sequence[str] | None = None) -> list[str]:
    """Worker devices: ``"cpu"`` or a GPU index as this process numbers them (``"0"``, ``"1"``).

    ``gpus``: a count or ``"all"`` (the first N visible GPUs). ``devices``: an
    explicit list (``"0,1"``, ``"cuda:1"``, ``"cpu,cpu"``; CPU workers are for tests
    and machines without GPUs).
    """
    if gpus is not None and devices is not None:
        raise ConfigError("give --gpus or --devices, not both")
    if devices is not None:
        items = [d.strip() for d in (devices.split(",") if isinstance(devices, str) else devices)]
        if not items or any(not d for d in items):
            raise ConfigError(f"--devices takes a comma-separated list such as 0,1 or cpu,cpu, not {devices!r}")
        out = []
        for d in items:
            d = d.lower().removeprefix("cuda:")
            if d != "cpu" and not d.isdigit():
                raise ConfigError(f"unknown device {d!r}: use GPU indices (0, 1, cuda:1) or cpu")
            out.append(d)
        gpu_ids = [d for d in out if d != "cpu"]
        if len(set(gpu_ids)) != len(gpu_ids):
            raise ConfigError("a GPU is listed twice in --devices; two workers on one card would each plan "
                              "for all of its memory")
        if gpu_ids:
            n = len(visible_gpus())
            bad = [d for d in gpu_ids if int(d) >= n]
            if bad:
                raise ConfigError(f"GPU {bad[0]} requested but {n} GPU(s) are visible")
        return out
    n_vis = len(visible_gpus())
    if gpus is None or str(gpus).lower() == "all":
        if n_vis == 0:
            raise ConfigError("--gpus all: no GPU is visible (use --devices cpu to run a worker on the CPU)")
        return [str(i) for i in range(n_vis)]
    try:
        n = int(gpus)
    except ValueError:
        raise ConfigError(f"--gpus takes a number or 'all', not {gpus!r}") from None
    if n < 1:
        raise ConfigError("--gpus must be at least 1")
    if n > n_vis:
        raise ConfigError(f"--gpus {n}: only {n_vis} GPU(s) are visible"
                          + (" (use --devices cpu,... to run workers on the CPU)" if n_vis == 0 else ""))
    return [str(i) for i in range(n)]


# -- layout -----------------------------------------------------------------------

def text_weight(text: str) -> int:
    return len(text) + PER_TEXT_CHARS if text.strip() else 0


def input_digest(examples, new_tokens: Sequence[int] | None = None) -> str:
    h = hashlib.sha256()
    for i, ex in enumerate(examples):
        rec = [ex.id, ex.text, ex.meta, None if new_tokens is None else int(new_tokens[i])]
        # surrogatepass: a lone surrogate (a text the workers will skip) must not stop the digest.
        h.update(json.dumps(rec, ensure_ascii=False, sort_keys=True).encode("utf-8", "surrogatepass") + b"\n")
    return h.hexdigest()


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".pt")


def _files_fingerprint(path: Path) -> list:
    """Names, sizes and modification times of the weight/config files of a local model folder."""
    out = []
    if path.is_file():
        st = path.stat()
        return [[path.name, st.st_size, st.st_mtime_ns]]
    for sub in ("", "adapter", "model", "tokenizer"):
        d = path / sub if sub else path
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.is_file() and f.suffix in _WEIGHT_SUFFIXES:
                st = f.stat()
                out.append([str(f.relative_to(path)), st.st_size, st.st_mtime_ns])
    return out


def model_fingerprint(model: str, adapter: str | None) -> dict:
    """Enough to notice a retrained adapter or another base in the same folder; hub ids by name only."""
    fp = {}
    for key, value in (("model", model), ("adapter", adapter)):
        if value is None:
            continue
        p = Path(value)
        fp[key] = _files_fingerprint(p) if p.exists() else value
        man = p / "kner.json"
        if man.is_file():
            base = json.loads(man.read_text(encoding="utf-8")).get("load", {}).get("model")
            if base and Path(base).is_dir():
                fp[key + "_base"] = _files_fingerprint(Path(base))
    return fp


# -- shard files --------------------------------------------------------------------

def shard_dir_for(output: Path) -> Path:
    return output.with_name(output.name + ".shards")


def _tag(k: int, n: int) -> str:
    return f"{k:02d}of{n:02d}"


def _write_json_atomic(path: Path, obj) -> None:
    with atomic_write(path) as f:
        f.write(json.dumps(obj, ensure_ascii=False, indent=1))


def scan_shards(shard_dir: Path, total: int, repair: bool = True) -> tuple[dict[int, dict], int, int]:
    """Finished results in every shard file: ``({index: example dict}, cut partial lines, duplicates)``.

    A crash can leave half a line at the end of a file; it is cut off (the file
    is truncated to its last complete line, so the next run can append;
    ``repair=False`` only skips it). Any
    other unreadable line is a ``DataError`` with its file and line.
    """
    done: dict[int, dict] = {}
    partial = dups = 0
    for path in sorted(shard_dir.glob("shard-*.jsonl")):
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            partial += 1
            if repair:
                with path.open("r+b") as f:
                    f.truncate(end)
            data = data[:end]
        for lineno, raw in enumerate(data.decode("utf-8").splitlines(), 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                i = rec["index"]
                ex = rec["example"]
            except (ValueError, KeyError, TypeError):
                raise DataError("not a shard result line (delete the folder or pass --restart)", path,
                                lineno) from None
            if not isinstance(i, int) or not 0 <= i < total or not isinstance(ex, dict):
                raise DataError(f"input index {i!r} outside 0..{total - 1} (delete the folder or pass --restart)",
                                path, lineno)
            if i in done:
                dups += 1
                continue
            done[i] = ex
    return done, partial, dups


# -- parent -------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _take_lock(shard_dir: Path) -> Path:
    lock = shard_dir / "lock"
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    if lock.exists():
        try:
            other = json.loads(lock.read_text(encoding="utf-8"))
        except ValueError:
            other = {}
        if other.get("host") == me["host"] and isinstance(other.get("pid"), int) and other["pid"] != me["pid"] \
                and _pid_alive(other["pid"]):
            raise KnerError(f"{shard_dir} is in use by another kner predict (pid {other['pid']})")
    lock.write_text(json.dumps(me), encoding="utf-8")
    return lock


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    diffs = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{k}.")
        elif prefix.endswith("fingerprint."):
            diffs.append(f"{k} files changed")
        else:
            diffs.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return diffs


def _child_env(device: str, n_cpu_workers: int) -> dict:
    env = dict(os.environ)
    # The parent may have found kner through sys.path rather than PYTHONPATH (a benchmark script). Appended,
    # not prepended: entries before it (e.g. a carried bitsandbytes in /tmp/site) must keep winning, and
    # PYTHONPATH entries still come before site-packages.
    src = str(Path(__file__).resolve().parents[2])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([src] if src not in paths else []))
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
        if "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, n_cpu_workers)))
    else:
        env["CUDA_VISIBLE_DEVICES"] = visible_gpus()[int(device)]
    return env


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    keep = [l for l in text.splitlines() if l.strip()]
    return " | ".join(keep[-lines:])


def _exit_reason(rc: int) -> str:
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = str(-rc)
        return f"was killed by signal {-rc} ({name}{'; out of host memory?' if -rc == 9 else ''})"
    return f"exited with code {rc}"


def _read_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


class Terminated(KnerError):
    pass


def _on_sigterm():
    """SIGTERM ends the parent through Python, so it stops its workers instead of orphaning them."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise Terminated("terminated (SIGTERM); finished results are kept, rerun to resume")

    return signal.signal(signal.SIGTERM, handler)


def _sum_stats(states: list[dict]):
    """One RunStats from the workers' (merged by ``_add_stats``, the rule the workers use for their chunks)."""
    from dataclasses import fields

    from kner.inference.extractor import RunStats

    acc: dict = {}
    for st in states:
        _add_stats(acc, st.get("stats") or {})
    names = {f.name for f in fields(RunStats)}
    total = RunStats(**{k: v for k, v in acc.items() if k in names and k != "labels"})
    total.labels.update(acc.get("labels") or {})
    starts = [st["gen_start"] for st in states if st.get("gen_start")]
    ends = [st["gen_end"] for st in states if st.get("gen_end")]
    total.seconds = (max(ends) - min(starts)) if starts and ends else 0.0
    return total


def predict_sharded(model: str, examples: Sequence, output: str | Path, *, devices: Sequence[str],
                    adapter: str | None = None, scheme: str | None = None, quantize_4bit: bool | None = None,
                    compute_dtype: str | None = None, options: dict | None = None,
                    new_tokens: Sequence[int] | None = None, flush_every: int = DEFAULT_FLUSH_EVERY,
                    keep_shards: bool = False, restart: bool = False, source: str | None = None,
                    progress: Callable[[int, int, str], None] | None = None,
                    poll_seconds: float = 0.5) -> ShardedResult:
    """Predict ``examples`` with one worker process per entry of ``devices``; write ``output`` in input order.

    ``options`` are :class:`~kner.inference.ExtractorConfig` options (JSON values);
    ``new_tokens`` fixes each text's budget (benchmarks, with ``ignore_eos``).
    Raises :class:`KnerError` when a worker fails: finished results stay in
    ``OUTPUT.shards`` and the same call resumes them.
    """
    t_start = time.perf_counter()
    output = Path(output)
    examples = list(examples)
    n = len(examples)
    if not devices:
        raise ConfigError("no devices to run on")
    if flush_every < 1:
        raise ConfigError("--flush-every must be at least 1")
    if new_tokens is not None and len(new_tokens) != n:
        raise ValueError("new_tokens needs one budget per input")
    options = dict(options or {})
    for k, v in options.items():
        try:
            json.dumps(v)
        except TypeError:
            raise ConfigError(f"extractor option {k!r} cannot be passed to a worker process") from None
    model = str(Path(model).resolve()) if Path(model).exists() else str(model)
    adapter = str(Path(adapter).resolve()) if adapter is not None else None
    load = {"model": model, "adapter": adapter, "scheme": scheme, "quantize_4bit": quantize_4bit,
            "compute_dtype": compute_dtype}
    settings = {"load": load, "options": {k: v for k, v in sorted(options.items()) if k not in NEUTRAL_OPTIONS},
                "fingerprint": model_fingerprint(model, adapter)}
    inp = {"source": source, "texts": n, "digest": input_digest(examples, new_tokens)}

    shard_dir = shard_dir_for(output)
    if restart and shard_dir.exists():
        _take_lock(shard_dir)                 # refuses while another run uses it
        shutil.rmtree(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    lock = _take_lock(shard_dir)
    procs: dict[int, subprocess.Popen] = {}
    old_term = _on_sigterm()
    try:
        man_path = shard_dir / MANIFEST_NAME
        if man_path.is_file():
            man = _read_state(man_path)
            if not man:
                raise KnerError(f"{man_path} is unreadable; delete {shard_dir} or pass --restart")
            diffs = []
            if man.get("input", {}).get("digest") != inp["digest"]:
                diffs.append(f"input changed ({man.get('input', {}).get('texts')} texts from "
                             f"{man.get('input', {}).get('source')}, now {n} from {source})")
            diffs += _differences({"settings": man.get("settings", {})}, {"settings": settings})
            if diffs:
                raise KnerError(f"{shard_dir} holds results of another run: {'; '.join(diffs)}. Rerun with the "
                                f"original input and settings to resume it, or pass --restart to discard it")
        else:
            if any(shard_dir.glob("shard-*.jsonl")):
                raise KnerError(f"{shard_dir} has shard files but no {MANIFEST_NAME}; delete it or pass --restart")
            man = {"format": FORMAT, "input": inp, "settings": settings, "runs": []}

        done, partial, dups = scan_shards(shard_dir, n)
        if dups:
            log.warning("%d result(s) appear twice in %s; the first is kept", dups, shard_dir)
        resumed = len(done)
        todo = [i for i in range(n) if i not in done]
        weights = [text_weight(ex.text) for ex in examples]
        if new_tokens is not None:
            # A known answer budget decides the decode steps a text needs: weigh it in
            # (a generated token costs a decode step; a prompt character a share of a prefill).
            weights = [w + 4 * int(t) for w, t in zip(weights, new_tokens)]
        split = [(devices[k], p) for k, p in enumerate(balance(weights, len(devices), todo)) if p]
        used, parts = [d for d, _ in split], [p for _, p in split]
        run_no = len(man["runs"]) + 1
        man["runs"].append({"run": run_no, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "devices": used,
                            "resumed": resumed, "texts": [len(p) for p in parts]})
        man["layout"] = {"devices": used, "indices": parts}
        man["neutral_options"] = {k: v for k, v in options.items() if k in NEUTRAL_OPTIONS}
        _write_json_atomic(man_path, man)

        tags = [_tag(k, len(parts)) for k in range(len(parts))]
        for k, part in enumerate(parts):
            with (shard_dir / f"task-{tags[k]}.jsonl").open("w", encoding="utf-8") as f:
                for i in part:
                    ex = examples[i]
                    rec = {"index": i, "id": ex.id, "text": ex.text, "meta": ex.meta}
                    if new_tokens is not None:
                        rec["new_tokens"] = int(new_tokens[i])
                    f.write(json_line(rec) + "\n")   # a lone surrogate travels as an escape
            state = shard_dir / f"worker-{tags[k]}.json"
            if state.exists():
                state.unlink()

        n_cpu = sum(1 for d in used if d == "cpu")
        for k, tag in enumerate(tags):
            logf = (shard_dir / f"worker-{tag}.log").open("w", encoding="utf-8")
            cmd = [sys.executable, "-m", "kner.inference.sharding", "worker", str(shard_dir), tag,
                   "--run", str(run_no), "--position", str(k), "--flush-every", str(flush_every)]
            procs[k] = subprocess.Popen(cmd, env=_child_env(used[k], n_cpu), stdout=logf, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
            logf.close()

        rcs: dict[int, int] = {}
        while len(rcs) < len(procs):
            time.sleep(poll_seconds)
            for k, p in procs.items():
                if k not in rcs and p.poll() is not None:
                    rcs[k] = p.returncode
            if progress is not None:
                states = [_read_state(shard_dir / f"worker-{t}.json") for t in tags]
                computed = sum(int(s.get("done", 0)) for s in states)
                starts = [s["gen_start"] for s in states if s.get("gen_start")]
                if starts:
                    rate = computed / max(time.time() - min(starts), 1e-9)
                    rate_text = f"{rate:.1f} sent/s on {len(tags)} worker(s)"
                else:
                    rate_text = f"loading the model on {len(tags)} worker(s)"
                progress(resumed + computed, n, rate_text)
        procs.clear()
        states = [_read_state(shard_dir / f"worker-{t}.json") for t in tags]
        failed = {k: rc for k, rc in rcs.items() if rc != 0}
        if failed:
            done_now, _, _ = scan_shards(shard_dir, n, repair=False)
            lines = []
            for k, rc in sorted(failed.items()):
                wrote = sum(1 for i in parts[k] if i in done_now)
                tail = _log_tail(shard_dir / f"worker-{tags[k]}.log")
                lines.append(f"shard {k} ({tags[k]}, device {used[k]}) {_exit_reason(rc)} after writing {wrote} "
                             f"of {len(parts[k])} texts" + (f"; its log ends: {tail}" if tail else ""))
            left = n - len(done_now)
            raise KnerError(f"{len(failed)} of {len(parts)} shard(s) failed: " + "; ".join(lines)
                            + f". {len(done_now)} of {n} results are kept in {shard_dir} (logs: worker-*.log); "
                            f"rerun the same command to compute only the {left} missing")

        done, _, _ = scan_shards(shard_dir, n)
        missing = [i for i in range(n) if i not in done]
        if missing:
            raise KnerError(f"workers finished but {len(missing)} result(s) are missing in {shard_dir} "
                            f"(first: input {missing[0] + 1}); rerun to compute them")
        with atomic_write(output) as f:
            for i in range(n):
                f.write(json_line(done[i]) + "\n")
        stats = _sum_stats(states)
        stats.labels = Counter(e["label"] for i in range(n) for e in done[i].get("entities", []))
        res = ShardedResult(output=output, shard_dir=shard_dir, total=n, resumed=resumed, computed=len(todo),
                            stats=stats, load_seconds=max((s.get("load_seconds", 0.0) for s in states), default=0.0),
                            wall_seconds=time.perf_counter() - t_start, devices=used, workers=states,
                            dropped_partial_lines=partial)
    except BaseException:
        for p in procs.values():            # interrupted while workers run: stop them (they keep their results)
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if lock.exists():
            lock.unlink()
    if not keep_shards:
        shutil.rmtree(shard_dir, ignore_errors=True)
    return res


# -- worker -------------------------------------------------------------------------

def _stats_dict(st) -> dict:
    from dataclasses import fields

    out = {}
    for f in fields(st):
        v = getattr(st, f.name)
        out[f.name] = dict(v) if isinstance(v, Counter) else v
    return out


def _add_stats(acc: dict, st: dict) -> dict:
    for k, v in st.items():
        if k not in acc:
            acc[k] = v if not isinstance(v, (list, dict)) else type(v)(v)
        elif k == "pool_tokens":
            acc[k] = max(acc[k], v)
        elif isinstance(v, dict):
            for kk, vv in v.items():
                acc[k][kk] = acc[k].get(kk, 0) + vv
        elif isinstance(v, list):
            acc[k].extend(v)
        elif isinstance(v, str):
            acc[k] = acc[k] or v
        elif isinstance(v, (int, float)):
            acc[k] += v
    return acc


def worker_main(shard_dir: Path, tag: str, run_no: int, position: int, flush_every: int) -> int:
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    import torch

    from kner.data.example import Example
    from kner.inference import Extractor

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    man = json.loads((shard_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    load, options = man["settings"]["load"], dict(man["settings"]["options"])
    # Batching options may change between runs (e.g. less memory after an OOM), so they are not compared.
    options.update(man.get("neutral_options", {}))
    state_path = shard_dir / f"worker-{tag}.json"
    tasks = [json.loads(l) for l in (shard_dir / f"task-{tag}.jsonl").read_text(encoding="utf-8").splitlines() if l]
    cuda = torch.cuda.is_available()
    state = {"tag": tag, "run": run_no, "pid": os.getpid(), "state": "loading", "texts": len(tasks), "done": 0,
             "device": torch.cuda.get_device_name(0) if cuda else "cpu",
             "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    _write_json_atomic(state_path, state)
    test_exit = os.environ.get(TEST_EXIT_ENV)
    exit_after = None
    if test_exit:
        pos, k = test_exit.split(":")
        exit_after = int(k) if int(pos) == position else None

    t0 = time.perf_counter()
    ext = Extractor.load(load["model"], adapter=load["adapter"], scheme=load["scheme"],
                         quantize_4bit=load["quantize_4bit"], compute_dtype=load["compute_dtype"], **options)
    state.update(state="running", load_seconds=round(time.perf_counter() - t0, 3), gen_start=time.time(),
                 chunks=[])
    _write_json_atomic(state_path, state)
    acc: dict = {}
    last = [0.0]
    written = 0
    with (shard_dir / f"shard-{tag}.jsonl").open("a", encoding="utf-8") as out:
        for c0 in range(0, len(tasks), flush_every):
            chunk = tasks[c0:c0 + flush_every]

            def progress(done_pieces: int, total_pieces: int, _c0=c0, _n=len(chunk)) -> None:
                now = time.perf_counter()
                if now - last[0] < 0.5:
                    return
                last[0] = now
                state["done"] = _c0 + int(_n * done_pieces / max(1, total_pieces))
                _write_json_atomic(state_path, state)

            budgets = [t["new_tokens"] for t in chunk] if "new_tokens" in chunk[0] else None
            tc = time.perf_counter()
            preds = ext.predict([t["text"] for t in chunk], progress=progress, new_tokens=budgets)
            st = _stats_dict(ext.last_stats)
            _add_stats(acc, {k: v for k, v in st.items() if k != "seconds"})
            state["chunks"].append({"texts": len(chunk), "seconds": round(time.perf_counter() - tc, 3),
                                    "new_tokens": st.get("new_tokens")})
            lines = []
            for t, p in zip(chunk, preds):
                meta = dict(t.get("meta") or {})
                if p.error:
                    meta["error"] = p.error
                ex = Example(t["id"], t["text"], p.entities, meta)
                lines.append(json_line({"index": t["index"], "run": run_no, "example": ex.to_dict()}) + "\n")
            out.write("".join(lines))
            out.flush()
            os.fsync(out.fileno())
            written += len(chunk)
            state["done"] = written
            _write_json_atomic(state_path, state)
            if exit_after is not None and written >= exit_after:
                out.write('{"index": ')          # a crash in the middle of a write
                out.flush()
                os._exit(TEST_EXIT_CODE)
    if cuda:
        torch.cuda.synchronize()
        state["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    state.update(state="done", done=written, gen_end=time.time(), stats=acc)
    _write_json_atomic(state_path, state)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m kner.inference.sharding")
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="(internal) compute one shard; started by `kner predict --gpus`")
    w.add_argument("shard_dir", type=Path)
    w.add_argument("tag")
    w.add_argument("--run", type=int, required=True)
    w.add_argument("--position", type=int, required=True)
    w.add_argument("--flush-every", type=int, default=DEFAULT_FLUSH_EVERY)
    args = ap.parse_args(argv)
    try:
        return worker_main(args.shard_dir, args.tag, args.run, args.position, args.flush_every)
    except KnerError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except Exception:  # noqa: BLE001 -- the log is the only place a worker can say what went wrong
        traceback.print_exc()
        sys.stderr.flush()
        return 1


if __name__ == "__main__":
    sys.exit(main())
