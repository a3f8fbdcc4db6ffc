"""``kner evaluate`` (one prediction file) and ``kner compare`` (several systems, one report)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from kner.cli import app
from kner.errors import KnerError
from kner.textio import ENCODING_HELP, check_output, reads_text


def _labels(values: list[str] | None) -> list[str] | None:
    # Accept both `--labels PS --labels LC` and `--labels PS,LC`.
    if not values:
        return None
    out = [x.strip() for v in values for x in v.split(",") if x.strip()]
    return out or None


def print_result(result, title: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from kner.evaluation.scoring import FN_CAUSES, FP_CAUSES, pct

    console = Console()
    t = Table(title=title, title_justify="left")
    t.add_column("label")
    for c in ("P", "R", "F1", "TP", "FP", "FN", "support"):
        t.add_column(c, justify="right")
    for lab in result.labels:
        s = result.per_label[lab]
        t.add_row(lab, pct(s.precision), pct(s.recall), pct(s.f1), str(s.tp), str(s.fp), str(s.fn), str(s.support))
    mi, ma = result.micro, result.macro
    t.add_section()
    t.add_row(
        "micro",
        pct(mi["precision"]),
        pct(mi["recall"]),
        pct(mi["f1"]),
        str(mi["tp"]),
        str(mi["fp"]),
        str(mi["fn"]),
        str(mi["support"]),
        style="bold",
    )
    t.add_row(
        f"macro ({len(ma['labels'])})",
        pct(ma["precision"]),
        pct(ma["recall"]),
        pct(ma["f1"]),
        "",
        "",
        "",
        "",
        style="bold",
    )
    console.print(t)
    o = Table(title=f"Character and sentence level ({result.n_sentences} sentences)", title_justify="left")
    for c in ("character accuracy", "sentence exact match", "KLUE character macro F1"):
        o.add_column(c, justify="right")
    o.add_row(pct(result.char_accuracy), pct(result.exact_match), pct(result.klue_char_macro_f1))
    console.print(o)
    short = {
        "wrong_boundary": "bound",
        "wrong_type": "type",
        "wrong_boundary_type": "b+t",
        "spurious": "spur",
        "missed": "miss",
    }
    e = Table(
        title="Error causes: each FP and each FN has one",
        title_justify="left",
        caption="bound = wrong boundary, type = wrong type, b+t = wrong boundary and type, "
        "spur = spurious, miss = missed",
        caption_justify="left",
    )
    e.add_column("label")
    for c in FP_CAUSES:
        e.add_column(f"FP {short[c]}", justify="right")
    for c in FN_CAUSES:
        e.add_column(f"FN {short[c]}", justify="right")
    for lab in result.labels:
        s = result.per_label[lab]
        if s.fp or s.fn:
            e.add_row(lab, *[str(s.fp_causes[c]) for c in FP_CAUSES], *[str(s.fn_causes[c]) for c in FN_CAUSES])
    tot = result.error_totals
    e.add_section()
    e.add_row("total", *[str(tot["fp"][c]) for c in FP_CAUSES], *[str(tot["fn"][c]) for c in FN_CAUSES], style="bold")
    console.print(e)
    for note in result.notes():
        console.print(f"[yellow]note:[/yellow] {escape(note)}")


@app.command()
@reads_text
def evaluate(
    gold: Path = typer.Option(..., "--gold", help="Gold examples (JSONL)."),
    pred: Path = typer.Option(..., "--pred", help="Predicted examples (JSONL), paired with gold by id."),
    out: Path | None = typer.Option(
        None, "--out", help="Directory for metrics.json and metrics.md (default: the prediction file's directory)."
    ),
    labels: list[str] | None = typer.Option(
        None,
        "--labels",
        help="Labels to evaluate, in display order (repeat or comma-separate); others are ignored and counted.",
    ),
    encoding: str | None = typer.Option(None, "--encoding", help=ENCODING_HELP),
) -> None:
    """Entity-level P/R/F1 per label, micro/macro averages, character metrics and error causes."""
    from kner.evaluation.scoring import evaluate as run_evaluation
    from kner.evaluation.scoring import read_for_scoring
    from kner.textio import write_text

    out_dir = out if out is not None else pred.parent
    check_output(out_dir, folder=True, what="--out folder")
    result = run_evaluation(read_for_scoring(gold), read_for_scoring(pred), _labels(labels))
    write_text(out_dir / "metrics.json", json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n")
    write_text(out_dir / "metrics.md", result.to_markdown(f"Evaluation of {pred.name}"))
    print_result(result, f"{pred} vs {gold}")
    typer.echo(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'metrics.md'}")


def _systems(values: list[str]) -> dict[str, Path]:
    systems: dict[str, Path] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep:
            name, path = Path(v).stem, v
        name = name.strip()
        if not name or not path:
            raise KnerError(f"--pred {v!r}: expected NAME=PATH")
        if name in systems:
            raise KnerError(f"--pred: system name {name!r} given twice")
        systems[name] = Path(path)
    return systems


@app.command()
@reads_text
def compare(
    gold: Path = typer.Option(..., "--gold", help="Gold examples (JSONL)."),
    pred: list[str] = typer.Option(..., "--pred", help="NAME=PATH of one system's predictions (JSONL); repeat."),
    out: Path = typer.Option(..., "--out", help="Directory for report.{md,json,html} and f1_by_label.png."),
    sample: int = typer.Option(20, "--sample", help="Disagreement sentences to show."),
    seed: int = typer.Option(0, "--seed", help="Seed for drawing the disagreement sample."),
    labels: list[str] | None = typer.Option(None, "--labels", help="Labels to evaluate, in display order."),
    title: str = typer.Option("NER comparison", "--title", help="Report title."),
    encoding: str | None = typer.Option(None, "--encoding", help=ENCODING_HELP),
) -> None:
    """Compare systems side by side: per-label scores, averages, error causes and disagreements."""
    from rich.console import Console
    from rich.markup import escape

    from kner.evaluation.headline import print_headline
    from kner.evaluation.report import compare as run_compare
    from kner.evaluation.scoring import read_for_scoring

    systems = _systems(pred)
    check_output(out, folder=True, what="--out folder")
    gold_ex = read_for_scoring(gold)
    report = run_compare(
        gold_ex,
        {n: read_for_scoring(p) for n, p in systems.items()},
        out,
        sample=sample,
        seed=seed,
        labels=_labels(labels),
        title=title,
    )
    console = Console()
    print_headline(report, console)
    for name, r in report["systems"].items():
        for note in r["notes"]:
            console.print(f"[yellow]note:[/yellow] {escape(name)}: {escape(note)}")
    d = report["disagreements"]
    console.print(f"{d['total']} disagreement sentences, {d['shown']} in the report")
    for f in report["files"].values():
        typer.echo(f"wrote {f}")
