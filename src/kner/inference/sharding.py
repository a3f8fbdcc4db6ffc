"""Sharded prediction: one worker process per device, outputs merged in input order, resumable.

The parent process (``kner predict --gpus N``) reads and numbers the inputs and
keeps everything under ``OUTPUT.shards/``::

    manifest.json            input digest, result-affecting settings, this run's layout, run history
    task-XXofYY.jsonl        this run's inputs of worker XX: {"index", "id", "text", "meta"[, "new_tokens"]}
    shard-XXofYY.jsonl       results, appended per chunk: {"index", "run", "example"}
    worker-XXofYY.json       a worker's state: loading / running (texts done) / done (stats, timings)
    worker-XXofYY.log        its stdout and stderr
    lock                     pid of the parent using the folder

Workers are ``python -m kner.inference.shard_worker DIR XXofYY`` (:mod:`kner.inference.shard_worker`;
the files are :mod:`kner.inference.shard_files`), each with
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

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kner.data.splits import balance
from kner.errors import ConfigError, KnerError
from kner.inference.devices import visible_gpus
from kner.inference.results import RunStats
from kner.inference.shard_files import (
    DEFAULT_FLUSH_EVERY,
    FORMAT,
    MANIFEST_NAME,
    differences,
    input_digest,
    model_fingerprint,
    read_state,
    scan_shards,
    shard_dir_for,
    shard_tag,
    write_json_atomic,
)
from kner.model.oom import prefer_expandable_segments
from kner.textio import atomic_write, json_line

log = logging.getLogger(__name__)

# Extractor options that change how work is batched, not what a text's output is.
NEUTRAL_OPTIONS = frozenset(
    {"batch_size", "max_memory", "max_batch_size", "cpu_batch_size", "memory_safety", "prefill_chunk_tokens"}
)
# How the parent starts a worker (shard folder, tag and options follow); a test may point it at a wrapper.
WORKER_COMMAND = [sys.executable, "-m", "kner.inference.shard_worker"]
PER_TEXT_CHARS = 8  # balancing weight of a text: its characters plus this (prompt suffix, EOS step)


@dataclass
class ShardedResult:
    output: Path
    shard_dir: Path
    total: int  # inputs
    resumed: int  # finished by earlier runs, not recomputed
    computed: int  # computed by this run
    stats: RunStats  # summed over this run's workers; seconds = generation wall time
    load_seconds: float  # slowest worker's model load (0 when nothing ran)
    wall_seconds: float  # this call, start to merged output
    devices: list[str] = field(default_factory=list)
    workers: list[dict] = field(default_factory=list)  # each worker's final state file
    dropped_partial_lines: int = 0


# -- layout -----------------------------------------------------------------------


def text_weight(text: str) -> int:
    return len(text) + PER_TEXT_CHARS if text.strip() else 0


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
        if (
            other.get("host") == me["host"]
            and isinstance(other.get("pid"), int)
            and other["pid"] != me["pid"]
            and _pid_alive(other["pid"])
        ):
            raise KnerError(f"{shard_dir} is in use by another kner predict (pid {other['pid']})")
    lock.write_text(json.dumps(me), encoding="utf-8")
    return lock


def _child_env(device: str, n_cpu_workers: int) -> dict:
    env = dict(os.environ)
    # The parent may have found kner through sys.path rather than PYTHONPATH (a benchmark script). Appended,
    # not prepended: entries before it (e.g. a carried bitsandbytes in /tmp/site) must keep winning, and
    # PYTHONPATH entries still come before site-packages.
    src = str(Path(__file__).resolve().parents[2])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([src] if src not in paths else []))
    prefer_expandable_segments(env)
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


class Terminated(KnerError):
    pass


def _on_sigterm():
    """SIGTERM ends the parent through Python, so it stops its workers instead of orphaning them."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise Terminated("terminated (SIGTERM); finished results are kept, rerun to resume")

    return signal.signal(signal.SIGTERM, handler)


def _sum_stats(states: list[dict]) -> RunStats:
    """The workers' RunStats summed; seconds = generation wall time, first worker's start to last one's end."""
    total = RunStats()
    for st in states:
        total.merge(RunStats.from_record(st.get("stats") or {}))
    starts = [st["gen_start"] for st in states if st.get("gen_start")]
    ends = [st["gen_end"] for st in states if st.get("gen_end")]
    total.seconds = (max(ends) - min(starts)) if starts and ends else 0.0
    return total


@dataclass
class _Run:
    """One call of :func:`predict_sharded`: what it computes, where, and its worker processes."""

    shard_dir: Path
    examples: list
    new_tokens: Sequence[int] | None
    run_no: int = 0
    resumed: int = 0
    partial: int = 0
    todo: list[int] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)  # one per worker of this run
    parts: list[list[int]] = field(default_factory=list)  # input indices per worker
    procs: dict[int, subprocess.Popen] = field(default_factory=dict)

    @property
    def tags(self) -> list[str]:
        return [shard_tag(k, len(self.parts)) for k in range(len(self.parts))]

    def states(self) -> list[dict]:
        return [read_state(self.shard_dir / f"worker-{t}.json") for t in self.tags]


def predict_sharded(
    model: str,
    examples: Sequence,
    output: str | Path,
    *,
    devices: Sequence[str],
    adapter: str | None = None,
    scheme: str | None = None,
    quantize_4bit: bool | None = None,
    compute_dtype: str | None = None,
    options: dict | None = None,
    new_tokens: Sequence[int] | None = None,
    flush_every: int = DEFAULT_FLUSH_EVERY,
    keep_shards: bool = False,
    restart: bool = False,
    source: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    poll_seconds: float = 0.5,
) -> ShardedResult:
    """Predict ``examples`` with one worker process per entry of ``devices``; write ``output`` in input order.

    ``options`` are :class:`~kner.inference.ExtractorConfig` options (JSON values);
    ``new_tokens`` fixes each text's budget (benchmarks, with ``ignore_eos``).
    Raises :class:`KnerError` when a worker fails: finished results stay in
    ``OUTPUT.shards`` and the same call resumes them.
    """
    t_start = time.perf_counter()
    output, examples = Path(output), list(examples)
    options = _check_arguments(examples, devices, flush_every, new_tokens, options)
    model = str(Path(model).resolve()) if Path(model).exists() else str(model)
    adapter = str(Path(adapter).resolve()) if adapter is not None else None
    load = {
        "model": model,
        "adapter": adapter,
        "scheme": scheme,
        "quantize_4bit": quantize_4bit,
        "compute_dtype": compute_dtype,
    }
    settings = {
        "load": load,
        "options": {k: v for k, v in sorted(options.items()) if k not in NEUTRAL_OPTIONS},
        "fingerprint": model_fingerprint(model, adapter),
    }
    inp = {"source": source, "texts": len(examples), "digest": input_digest(examples, new_tokens)}

    shard_dir = shard_dir_for(output)
    if restart and shard_dir.exists():
        _take_lock(shard_dir)  # refuses while another run uses it
        shutil.rmtree(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    lock = _take_lock(shard_dir)
    run = _Run(shard_dir, examples, new_tokens)
    old_term = _on_sigterm()
    try:
        man = _open_manifest(shard_dir, inp, settings, source)
        _plan(run, man, devices, options)
        _start_workers(run, flush_every)
        rcs = _wait_for_workers(run, poll_seconds, progress)
        states = run.states()
        _raise_on_failures(run, rcs)
        done = _merge_output(run, output)
        stats = _sum_stats(states)
        stats.labels = Counter(e["label"] for ex in done for e in ex.get("entities", []))
        res = ShardedResult(
            output=output,
            shard_dir=shard_dir,
            total=len(examples),
            resumed=run.resumed,
            computed=len(run.todo),
            stats=stats,
            load_seconds=max((s.get("load_seconds", 0.0) for s in states), default=0.0),
            wall_seconds=time.perf_counter() - t_start,
            devices=run.devices,
            workers=states,
            dropped_partial_lines=run.partial,
        )
    except BaseException:
        _stop_workers(run)  # interrupted while workers run: stop them (they keep their results)
        raise
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if lock.exists():
            lock.unlink()
    if not keep_shards:
        shutil.rmtree(shard_dir, ignore_errors=True)
    return res


def _check_arguments(examples, devices, flush_every, new_tokens, options) -> dict:
    if not devices:
        raise ConfigError("no devices to run on")
    if flush_every < 1:
        raise ConfigError("--flush-every must be at least 1")
    if new_tokens is not None and len(new_tokens) != len(examples):
        raise ValueError("new_tokens needs one budget per input")
    options = dict(options or {})
    for k, v in options.items():
        try:
            json.dumps(v)
        except TypeError:
            raise ConfigError(f"extractor option {k!r} cannot be passed to a worker process") from None
    return options


def _open_manifest(shard_dir: Path, inp: dict, settings: dict, source: str | None) -> dict:
    """The folder's manifest, refused when it records another input or other settings; a new one if none."""
    man_path = shard_dir / MANIFEST_NAME
    if not man_path.is_file():
        if any(shard_dir.glob("shard-*.jsonl")):
            raise KnerError(f"{shard_dir} has shard files but no {MANIFEST_NAME}; delete it or pass --restart")
        return {"format": FORMAT, "input": inp, "settings": settings, "runs": []}
    man = read_state(man_path)
    if not man:
        raise KnerError(f"{man_path} is unreadable; delete {shard_dir} or pass --restart")
    diffs = []
    old_inp = man.get("input", {})
    if old_inp.get("digest") != inp["digest"]:
        diffs.append(
            f"input changed ({old_inp.get('texts')} texts from {old_inp.get('source')}, "
            f"now {inp['texts']} from {source})"
        )
    diffs += differences({"settings": man.get("settings", {})}, {"settings": settings})
    if diffs:
        raise KnerError(
            f"{shard_dir} holds results of another run: {'; '.join(diffs)}. Rerun with the "
            f"original input and settings to resume it, or pass --restart to discard it"
        )
    return man


def _plan(run: _Run, man: dict, devices: Sequence[str], options: dict) -> None:
    """Split the unfinished inputs over the devices; record the run and write each worker's task file."""
    n = len(run.examples)
    done, run.partial, dups = scan_shards(run.shard_dir, n)
    if dups:
        log.warning("%d result(s) appear twice in %s; the first is kept", dups, run.shard_dir)
    run.resumed = len(done)
    run.todo = [i for i in range(n) if i not in done]
    weights = [text_weight(ex.text) for ex in run.examples]
    if run.new_tokens is not None:
        # A known answer budget decides the decode steps a text needs: weigh it in
        # (a generated token costs a decode step; a prompt character a share of a prefill).
        weights = [w + 4 * int(t) for w, t in zip(weights, run.new_tokens)]
    split = [(devices[k], p) for k, p in enumerate(balance(weights, len(devices), run.todo)) if p]
    run.devices, run.parts = [d for d, _ in split], [p for _, p in split]
    run.run_no = len(man["runs"]) + 1
    man["runs"].append(
        {
            "run": run.run_no,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "devices": run.devices,
            "resumed": run.resumed,
            "texts": [len(p) for p in run.parts],
        }
    )
    man["layout"] = {"devices": run.devices, "indices": run.parts}
    man["neutral_options"] = {k: v for k, v in options.items() if k in NEUTRAL_OPTIONS}
    write_json_atomic(run.shard_dir / MANIFEST_NAME, man)
    for tag, part in zip(run.tags, run.parts):
        with (run.shard_dir / f"task-{tag}.jsonl").open("w", encoding="utf-8") as f:
            for i in part:
                ex = run.examples[i]
                rec = {"index": i, "id": ex.id, "text": ex.text, "meta": ex.meta}
                if run.new_tokens is not None:
                    rec["new_tokens"] = int(run.new_tokens[i])
                f.write(json_line(rec) + "\n")  # a lone surrogate travels as an escape
        (run.shard_dir / f"worker-{tag}.json").unlink(missing_ok=True)


def _start_workers(run: _Run, flush_every: int) -> None:
    n_cpu = sum(1 for d in run.devices if d == "cpu")
    for k, tag in enumerate(run.tags):
        logf = (run.shard_dir / f"worker-{tag}.log").open("w", encoding="utf-8")
        cmd = [
            *WORKER_COMMAND,
            str(run.shard_dir),
            tag,
            "--run",
            str(run.run_no),
            "--position",
            str(k),
            "--flush-every",
            str(flush_every),
        ]
        run.procs[k] = subprocess.Popen(
            cmd, env=_child_env(run.devices[k], n_cpu), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        logf.close()


def _wait_for_workers(run: _Run, poll_seconds: float, progress) -> dict[int, int]:
    """Exit codes of every worker; ``progress(done, total, rate text)`` from their state files meanwhile."""
    rcs: dict[int, int] = {}
    while len(rcs) < len(run.procs):
        time.sleep(poll_seconds)
        for k, p in run.procs.items():
            if k not in rcs and p.poll() is not None:
                rcs[k] = p.returncode
        if progress is not None:
            states = run.states()
            computed = sum(int(s.get("done", 0)) for s in states)
            starts = [s["gen_start"] for s in states if s.get("gen_start")]
            if starts:
                rate = computed / max(time.time() - min(starts), 1e-9)
                rate_text = f"{rate:.1f} sent/s on {len(run.tags)} worker(s)"
            else:
                rate_text = f"loading the model on {len(run.tags)} worker(s)"
            progress(run.resumed + computed, len(run.examples), rate_text)
    run.procs.clear()
    return rcs


def _raise_on_failures(run: _Run, rcs: dict[int, int]) -> None:
    failed = {k: rc for k, rc in rcs.items() if rc != 0}
    if not failed:
        return
    n = len(run.examples)
    done_now, _, _ = scan_shards(run.shard_dir, n, repair=False)
    lines = []
    for k, rc in sorted(failed.items()):
        tag = run.tags[k]
        wrote = sum(1 for i in run.parts[k] if i in done_now)
        tail = _log_tail(run.shard_dir / f"worker-{tag}.log")
        lines.append(
            f"shard {k} ({tag}, device {run.devices[k]}) {_exit_reason(rc)} after writing {wrote} "
            f"of {len(run.parts[k])} texts" + (f"; its log ends: {tail}" if tail else "")
        )
    raise KnerError(
        f"{len(failed)} of {len(run.parts)} shard(s) failed: "
        + "; ".join(lines)
        + f". {len(done_now)} of {n} results are kept in {run.shard_dir} (logs: worker-*.log); "
        f"rerun the same command to compute only the {n - len(done_now)} missing"
    )


def _merge_output(run: _Run, output: Path) -> list[dict]:
    """Every result, in input order, written to ``output``; the results."""
    n = len(run.examples)
    done, _, _ = scan_shards(run.shard_dir, n)
    missing = [i for i in range(n) if i not in done]
    if missing:
        raise KnerError(
            f"workers finished but {len(missing)} result(s) are missing in {run.shard_dir} "
            f"(first: input {missing[0] + 1}); rerun to compute them"
        )
    with atomic_write(output) as f:
        for i in range(n):
            f.write(json_line(done[i]) + "\n")
    return [done[i] for i in range(n)]


def _stop_workers(run: _Run) -> None:
    for p in run.procs.values():
        if p.poll() is None:
            p.terminate()
    for p in run.procs.values():
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
