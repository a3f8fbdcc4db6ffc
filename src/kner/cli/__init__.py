"""The ``kner`` command line. Each sub-module registers the commands of one stage.

User errors (``KnerError``) are printed as one line and exit with status 2;
no traceback reaches the user for bad input.
"""

from __future__ import annotations

import sys

import typer

from kner.errors import KnerError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Korean NER with instruction-tuned LLMs: data, QLoRA training, extraction, evaluation.")
data_app = typer.Typer(no_args_is_help=True, help="Convert, inspect and split datasets.")
app.add_typer(data_app, name="data")
baseline_app = typer.Typer(no_args_is_help=True, help="Conventional NER baselines.")
app.add_typer(baseline_app, name="baseline")


def _register() -> None:
    # Imported for their side effect of adding commands; each module imports heavy
    # libraries (torch, spacy) inside its command bodies so `kner --help` stays fast.
    import importlib
    for name in ("data", "evaluate", "train", "predict", "baseline", "run", "serve"):
        try:
            importlib.import_module(f"kner.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"kner.cli.{name}":
                raise


def main() -> None:
    _register()
    try:
        app()
    except KnerError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
