"""The ``kner`` command line. Each sub-module registers the commands of one stage.

User errors (``KnerError``) are printed as one line and exit with status 2;
no traceback reaches the user for bad input. Colour and styles only go to a
terminal: not when output is redirected, nor with ``NO_COLOR`` set or
``TERM=dumb``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler

from kner.errors import KnerError

# Imports inside functions are deliberate in kner.cli (PLC0415 is off for it in pyproject.toml): each
# command module imports the stage it runs, and through it torch, transformers, peft or spaCy (seconds
# each), inside the command body, so `kner --help` and a command's --help stay fast.

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Korean NER with instruction-tuned LLMs: data, QLoRA training, extraction, evaluation.",
)
data_app = typer.Typer(no_args_is_help=True, help="Convert, inspect and split datasets.")
app.add_typer(data_app, name="data")
baseline_app = typer.Typer(no_args_is_help=True, help="Conventional NER baselines.")
app.add_typer(baseline_app, name="baseline")


def _register() -> None:
    # Imported for their side effect of adding commands.
    for name in ("data", "evaluate", "train", "predict", "hub", "baseline", "run", "serve"):
        try:
            importlib.import_module(f"kner.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"kner.cli.{name}":
                raise


def color_allowed(stream=None) -> bool:
    """Whether ``stream`` (stdout by default) may get colour codes: a terminal, no ``NO_COLOR``, no ``TERM=dumb``."""
    stream = stream if stream is not None else sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def _no_color_for_libraries() -> None:
    # rich decides by itself; spaCy prints through wasabi, which colours whenever the platform could and
    # reads these switches when spaCy is imported (later, inside the command bodies). Its headings are
    # bold unless "not pretty", and log-friendly drops the spinner frames.
    if not color_allowed():
        for var in ("ANSI_COLORS_DISABLED", "WASABI_NO_PRETTY", "WASABI_LOG_FRIENDLY"):
            os.environ.setdefault(var, "1")


LOG_HANDLER = "kner"


def configure_logging(level: int = logging.INFO, stream=None) -> logging.Handler:
    """The one handler on the root logger, for every command: rich's on a terminal, else plain
    one-line records (no colour codes, no wrapping at 80 columns). ``stream``: stdout for ``kner run``
    (its whole output is a log, kept with ``> log.txt``), stderr for the commands whose stdout may be
    read by a program. Calling it again replaces this handler instead of adding a second one, so no
    record prints twice."""
    stream = stream if stream is not None else sys.stdout
    root = logging.getLogger()
    for h in [h for h in root.handlers if h.get_name() == LOG_HANDLER]:
        root.removeHandler(h)
    if color_allowed(stream):
        handler: logging.Handler = RichHandler(show_path=False, console=Console(file=stream))
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.set_name(LOG_HANDLER)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def main() -> None:
    from kner.model.oom import prefer_expandable_segments

    prefer_expandable_segments()  # before any command imports torch
    _no_color_for_libraries()
    _register()
    try:
        app()
    except KnerError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
