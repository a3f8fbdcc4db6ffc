"""``kner predict``: texts -> entity spans (``kner export`` is in kner.cli.hub)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import typer

from kner.cli import app, configure_logging
from kner.errors import ConfigError, DataError
from kner.model.shape import parse_gib
from kner.textio import ENCODING_HELP, check_output, reads_text

log = logging.getLogger(__name__)


def read_inputs(path: Path, fmt: str = "auto"):
    """Examples to predict on, a note about anything the reader skipped, and each example's input
    place (``file:line``, for messages).

    ``text``: one text per line, every line kept (an empty line gives an empty
    prediction, so output line N is input line N). ``jsonl``: canonical JSONL
    (gold entities, if any, are ignored). Any other name: a dataset format read
    by :func:`kner.data.readers.read_dataset`. All are read in the current ``--encoding``.
    """
    from kner.data.example import Example, numbered_jsonl
    from kner.textio import numbered_lines

    if not path.exists():
        raise DataError("file not found", path)
    if fmt == "auto":
        fmt = "jsonl" if path.suffix.lower() in (".jsonl", ".json") else "text"
    if fmt == "text":
        if path.is_dir():
            raise DataError("a plain-text input must be a file (one text per line)", path)
        out = [Example(str(lineno), line) for lineno, line in numbered_lines(path)]
        return out, None, [f"{path}:{ex.id}" for ex in out]
    if fmt == "jsonl" and path.is_file():
        rows = list(numbered_jsonl(path, validate_examples=False))
        return [ex for _, ex in rows], None, [f"{path}:{lineno}" for lineno, _ in rows]
    from kner.data.readers import read_dataset

    res = read_dataset(fmt, path)
    note = None
    skipped = res.skipped
    if res.problems or skipped:
        note = (
            f"{path}: the {fmt} reader reported {len(res.problems)} problem(s)"
            + (f" and skipped {skipped} sentence(s)" if skipped else "")
            + "; run `kner data convert --problems FILE` to list them"
        )
    examples = list(res.examples)
    return examples, note, [str(ex.meta.get("source") or f"{path} [{ex.id}]") for ex in examples]


def check_inputs(examples, where: list[str]) -> list[tuple[int, str]]:
    """Warn about duplicate ids; return (index, "file:line: reason") for each text no model can take."""
    from collections import defaultdict

    from kner.textio import text_problem

    seen: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        seen[ex.id].append(i)
    dups = [(k, v) for k, v in seen.items() if len(v) > 1]
    if dups:
        shown = "; ".join(
            f"id {k!r} at {', '.join(where[i] for i in v[:3])}" + (" ..." if len(v) > 3 else "") for k, v in dups[:3]
        )
        typer.echo(
            f"warning: {len(dups)} id(s) appear more than once ({shown}"
            f"{'; ...' if len(dups) > 3 else ''}); `kner evaluate` pairs predictions with gold by id "
            f"and will refuse them",
            err=True,
        )
    failed = [(i, f"{where[i]}: {why}") for i, ex in enumerate(examples) if (why := text_problem(ex.text)) is not None]
    for _, msg in failed[:10]:
        typer.echo(f"warning: skipped (no entities, meta.error in the output): {msg}", err=True)
    if len(failed) > 10:
        typer.echo(f"warning: ... and {len(failed) - 10} more text(s) skipped", err=True)
    return failed


class _Bar:
    """A rich live bar with sentences/s, or nothing when disabled."""

    def __init__(self, enabled: bool, total_texts: int):
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self._p: Any = None  # a rich Progress when enabled
        self._task: Any = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._p = Progress(
                TextColumn("[bold]predict"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                transient=False,
            )

    def __enter__(self):
        if self._p is not None:
            self._p.__enter__()
        return self

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)
        return False

    def __call__(self, done: int, total: int, rate: str | None = None) -> None:
        if self._p is None:
            return
        if self._task is None:
            self._task = self._p.add_task("predict", total=total, rate="")
        if rate is None:
            rate = f"{done / max(time.perf_counter() - self.t0, 1e-9):.1f} sent/s"
        self._p.update(self._task, completed=done, rate=rate)


def print_summary(stats, out: Path | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    t = Table(title="kner predict", title_justify="left", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("texts", f"{stats.texts:,}" + (f" ({stats.empty} empty)" if stats.empty else ""))
    if getattr(stats, "failed", 0):
        t.add_row("failed (no entities, meta.error)", f"{stats.failed:,}")
    if stats.split_texts:
        t.add_row("long texts split", f"{stats.split_texts:,} into {stats.pieces:,} pieces")
    t.add_row("time", f"{stats.seconds:.1f} s")
    t.add_row("speed", f"{stats.texts_per_s:.2f} texts/s, {stats.tokens_per_s:.0f} new tokens/s")
    t.add_row("batches", f"{stats.batches} (largest {max(stats.batch_sizes, default=0)} rows)")
    if stats.oom_retries:
        t.add_row("out-of-memory retries", str(stats.oom_retries))
    if stats.truncated:
        t.add_row("cut off by the token budget", f"{stats.truncated} (their unfinished last tag was dropped)")
    if stats.unparsed:
        t.add_row("outputs with parse problems", str(stats.unparsed))
    t.add_row("entities", f"{sum(stats.labels.values()):,}")
    for lab, n in stats.labels.most_common():
        t.add_row(f"  {lab}", f"{n:,}")
    if out is not None:
        t.add_row("written to", str(out))
    console.print(t)


def print_sharded_summary(res) -> None:
    where = ", ".join(d if d == "cpu" else f"cuda:{d}" for d in res.devices) or "none (all finished before)"
    lines = [
        f"workers: {len(res.devices)} on {where}; model load {res.load_seconds:.1f} s (slowest), "
        f"whole run {res.wall_seconds:.1f} s"
    ]
    if res.resumed:
        lines.append(
            f"resumed: {res.resumed:,} of {res.total:,} texts were finished by an earlier run and not recomputed"
        )
    if res.dropped_partial_lines:
        lines.append(f"cut {res.dropped_partial_lines} half-written line(s) left by the interrupted run")
    for line in lines:
        typer.echo(line, err=True)
    print_summary(res.stats, res.output)


@app.command()
@reads_text
def predict(
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="Output folder of `kner train`/`kner export`, a Hub repo id written by `kner export --hub`, "
        "or a base model (hub id or folder) with --adapter.",
    ),
    input: Path = typer.Option(
        ..., "--input", "-i", help="Texts: plain text (one per line), canonical JSONL, or a dataset in --format."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Predictions, canonical JSONL (same ids and order)."),
    fmt: str = typer.Option(
        "auto",
        "--format",
        "-f",
        help="auto (by extension: .jsonl -> jsonl, else text), text, "
        "jsonl, or a dataset format: kmou, klp2016, klue, naver, "
        "multiconer, conll.",
    ),
    adapter: Path | None = typer.Option(None, help="LoRA adapter folder, when --model is a base model."),
    scheme: str | None = typer.Option(None, help="Label scheme of the adapter (with --adapter; default spacy19)."),
    constrain: bool = typer.Option(
        True,
        "--constrain/--no-constrain",
        help="Grammar-constrained decoding (default): every output parses and every entity is a span of its text.",
    ),
    batch_size: int | None = typer.Option(
        None, help="Most texts decoded at once (default: planned from free GPU memory, up to 256)."
    ),
    max_memory: str | None = typer.Option(None, help="GPU memory this run may use, e.g. 15GiB (default: all free)."),
    max_chunk_tokens: int = typer.Option(384, help="Split texts longer than this many tokens."),
    max_new_tokens: int | None = typer.Option(
        None, help="Cap on generated tokens per text (default: from its length)."
    ),
    quantize: bool | None = typer.Option(
        None, "--quantize/--no-quantize", help="Override the 4-bit loading recorded in the model folder."
    ),
    dtype: str | None = typer.Option(None, help="Compute dtype override: auto, bf16, fp16, fp32."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Also load pickled .bin weights (they can run code: only from sources you trust)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Live progress bar."),
    gpus: str | None = typer.Option(
        None,
        help="Shard the input over N GPUs (a number or 'all'), one worker "
        "process each; resumable after a crash (docs/inference.md). "
        "Default: one GPU, in this process.",
    ),
    devices: str | None = typer.Option(None, help="Worker devices instead of --gpus, e.g. 0,2 or cpu,cpu."),
    flush_every: int = typer.Option(
        512, help="With --gpus/--devices: texts per write to a shard file (the most a crash can lose per worker)."
    ),
    keep_shards: bool = typer.Option(False, help="With --gpus/--devices: keep OUTPUT.shards/ after merging."),
    restart: bool = typer.Option(
        False,
        help="With --gpus/--devices: discard the partial results of an earlier "
        "run in OUTPUT.shards/ instead of resuming them.",
    ),
    encoding: str | None = typer.Option(None, "--encoding", help=ENCODING_HELP),
) -> None:
    """Extract entities from texts with a trained model; write canonical JSONL and print a summary.

    A text no model can take (e.g. a lone surrogate in JSONL) is reported with its input line and
    written with no entities and ``meta.error``; the others are predicted, and the exit status is 1.
    """
    from kner.data.example import write_jsonl
    from kner.inference import Extractor

    configure_logging(logging.WARNING, sys.stderr)
    check_output(output)  # before any GPU work: a bad -o must not cost a whole run
    examples, note, where = read_inputs(input, fmt)
    if note:
        typer.echo(f"warning: {note}", err=True)
    if not examples:
        raise DataError("no texts to predict: the input is empty", input)
    failed = check_inputs(examples, where)
    if gpus is not None or devices is not None:
        if allow_pickle:
            raise ConfigError("--allow-pickle is for one process: leave out --gpus/--devices")
        from kner.inference.devices import resolve_devices
        from kner.inference.sharding import predict_sharded

        devs = resolve_devices(gpus, devices)
        opts = dict(
            constrained=constrain,
            batch_size=batch_size,
            max_memory=parse_gib(max_memory),
            max_chunk_tokens=max_chunk_tokens,
            max_new_tokens=max_new_tokens,
        )
        with _Bar(progress, len(examples)) as bar:
            res = predict_sharded(
                model,
                examples,
                output,
                devices=devs,
                adapter=str(adapter) if adapter else None,
                scheme=scheme,
                quantize_4bit=quantize,
                compute_dtype=dtype,
                options=opts,
                flush_every=flush_every,
                keep_shards=keep_shards,
                restart=restart,
                source=str(input),
                progress=bar,
            )
        print_sharded_summary(res)
        _exit_on_failures(failed, len(examples), output)
        return
    ext = Extractor.load(
        model,
        adapter=adapter,
        scheme=scheme,
        quantize_4bit=quantize,
        compute_dtype=dtype,
        constrained=constrain,
        batch_size=batch_size,
        max_memory=parse_gib(max_memory),
        max_chunk_tokens=max_chunk_tokens,
        max_new_tokens=max_new_tokens,
        allow_pickle=allow_pickle,
    )
    with _Bar(progress, len(examples)) as bar:
        preds = ext.predict_examples(examples, progress=bar)
    write_jsonl(output, preds)
    print_summary(ext.last_stats, output)
    _exit_on_failures(failed, len(examples), output)


def _exit_on_failures(failed: list[tuple[int, str]], total: int, output: Path) -> None:
    if failed:
        more = f" (and {len(failed) - 1} more, listed above)" if len(failed) > 1 else ""
        typer.echo(
            f"error: {len(failed)} of {total} texts failed: {failed[0][1]}{more}; the others are "
            f"predicted in {output}, the failed ones have no entities and meta.error",
            err=True,
        )
        raise typer.Exit(1)
