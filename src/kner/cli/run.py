"""``kner run``: the whole study from one config file."""

from __future__ import annotations

from pathlib import Path

import typer

from kner.cli import app


@app.command("run")
def run_cmd(
    config: Path = typer.Argument(..., help="Run config (YAML), e.g. configs/quickstart.yaml"),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="Overrides output_dir in the config"),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Local dataset copies (else $KNER_DATA_DIR, cache, download)"
    ),
    force: list[str] = typer.Option([], "--force", help="Rerun this stage even if up to date (repeatable)"),
    stop_after: str | None = typer.Option(None, "--stop-after", help="prepare | train | predict | baseline"),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Check the config, print it resolved and which stages "
        "would run; run nothing (exit 2 if the config is invalid)",
    ),
):
    """Prepare data, train, predict on the test split, train the spaCy baseline, evaluate and compare.

    Rerunning skips finished stages and resumes an interrupted training run.
    """
    import os

    from kner.errors import KnerError

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Every rank would run every stage and write the same files.
        raise KnerError(
            "kner run is one process; for several GPUs run `torchrun ... kner train` and "
            "`kner predict --gpus N` (docs/training.md, docs/inference.md)"
        )

    from kner.cli import configure_logging
    from kner.pipeline import run

    if dry_run:
        import yaml

        plan = run(config, output_dir, data_dir, tuple(force), stop_after, dry_run=True)
        typer.echo(f"# {config}: valid; resolved (defaults filled in):")
        typer.echo(yaml.safe_dump(plan["config"].model_dump(mode="json"), allow_unicode=True, sort_keys=False))
        typer.echo(f"stages ({plan['output_dir']}):")
        for ev in plan["stages"]:
            typer.echo(f"  {ev['stage']:<9} {ev['status']}")
        return
    configure_logging()
    summary = run(config, output_dir, data_dir, tuple(force), stop_after)
    print_summary(summary)


def print_summary(summary: dict, console=None) -> None:
    """What the user reads at the end of a run: the stages, the headline scores per system (from
    report.json) and where the report files are."""
    import json

    from rich.console import Console

    from kner.evaluation.headline import print_headline

    con = console if console is not None else Console()
    # Plain lines (soft_wrap): a path must not be broken at 80 columns in a log file.
    for ev in summary["stages"]:
        con.print(
            f"  {ev['stage']:<9} {ev['status']:<8} {ev.get('seconds', '')}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if "report" not in summary:
        con.print(
            f"stopped before the report; outputs in {summary['output_dir']}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return
    rep = Path(summary["report"])
    print_headline(json.loads((rep / "report.json").read_text(encoding="utf-8")), con)
    con.print(f"report: {rep / 'report.md'}  {rep / 'report.html'}", markup=False, highlight=False, soft_wrap=True)
