"""``kner run``: the whole study from one config file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from kner.cli import app


@app.command("run")
def run_cmd(
    config: Path = typer.Argument(..., help="Run config (YAML), e.g. configs/quickstart.yaml"),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Overrides output_dir in the config"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Local dataset copies (else $KNER_DATA_DIR, cache, download)"),
    force: list[str] = typer.Option([], "--force", help="Rerun this stage even if up to date (repeatable)"),
    stop_after: Optional[str] = typer.Option(None, "--stop-after", help="prepare | train | predict"),
):
    """Prepare data, train, predict on the test split, train the spaCy baseline, evaluate and compare.

    Rerunning skips finished stages and resumes an interrupted training run.
    """
    import logging
    import os

    from kner.errors import KnerError

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Every rank would run every stage and write the same files.
        raise KnerError("kner run is one process; for several GPUs run `torchrun ... kner train` and "
                        "`kner predict --gpus N` (docs/training.md, docs/inference.md)")

    from rich.console import Console
    from rich.logging import RichHandler

    from kner.pipeline import run

    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(show_path=False)])
    summary = run(config, output_dir, data_dir, tuple(force), stop_after)
    con = Console()
    for ev in summary["stages"]:
        con.print(f"  {ev['stage']:<9} {ev['status']:<8} {ev.get('seconds', '')}")
    if "report" in summary:
        rep = Path(summary["report"])
        con.print(f"report: {rep / 'report.md'}  {rep / 'report.html'}")
        md = rep / "report.md"
        if md.is_file():
            from rich.markdown import Markdown
            con.print(Markdown(md.read_text(encoding="utf-8").split("\n## ", 2)[0][:4000]))
