"""What many test files need alike: running ``kner`` (three ways) and tiny model folders.

Imported as ``from helpers import ...``: pytest puts tests/ on sys.path (rootdir conftest, no __init__.py).
Each test keeps its own data: texts and seeds are arguments.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from unittest import mock

import click
import torch
from click.testing import CliRunner, Result

# -- running kner ------------------------------------------------------------------------------


def kner_command(*args) -> list[str]:
    """The command line of ``kner ARGS`` with this interpreter (no installed script needed)."""
    return [sys.executable, "-c", "from kner.cli import main; main()", *map(str, args)]


def kner_process(
    *args, cwd: Path | None = None, env: Mapping[str, str] | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """``kner ARGS`` in a process of its own, as a shell runs it: stdout and stderr apart, as text.

    ``env``: the environment (default this one's). COLUMNS is 200 in it: rich wraps tables at 80 columns
    when not on a terminal, and the tests read a row as a line.
    """
    return subprocess.run(
        kner_command(*args),
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**(os.environ if env is None else env), "COLUMNS": "200"},
        timeout=timeout,
    )


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def _kner(args):
    from kner.cli import main

    with mock.patch.object(sys, "argv", ["kner", *args]):
        main()


def run_kner(*args) -> Result:
    """``kner ARGS`` in this process through ``kner.cli.main``: user errors become its one ``error:`` line
    and exit 2, as for a user (``res.stdout``, ``res.stderr`` apart, ``res.output`` both)."""
    return CliRunner().invoke(_kner, [str(a) for a in args])


def run_app(*args, catch_exceptions: bool = True) -> Result:
    """``kner ARGS`` on the typer app itself, without main's error handling: an error stays in
    ``res.exception`` (raised with ``catch_exceptions=False``)."""
    from typer.testing import CliRunner as TyperRunner

    from kner.cli import _register, app

    _register()
    return TyperRunner().invoke(app, [str(a) for a in args], catch_exceptions=catch_exceptions)


# -- tiny models -------------------------------------------------------------------------------


def char_tokenizer(texts: Iterable[str], scheme, extra_texts: Iterable[str] = ()):
    """A character tokenizer (kner.model.scratch) for ``texts``, with the prompt of ``scheme`` in a few pieces."""
    from kner.model.prompt import PromptFormat
    from kner.model.scratch import prompt_pieces, train_tokenizer

    prefix, suffix = PromptFormat().parts(scheme)
    return train_tokenizer(
        list(texts),
        extra_texts=[prefix + suffix, *extra_texts],
        kind="char",
        min_count=1,
        pieces=prompt_pieces(prefix, suffix, scheme.names),
    )


def tiny_char_model(texts: Iterable[str], seed: int = 0, scheme: str = "spacy19"):
    """(model, tokenizer): a random model (hidden 32, one layer) with a character tokenizer for ``texts``."""
    from kner.data.schemes import load_scheme
    from kner.model.scratch import build_scratch_model

    tok = char_tokenizer(texts, load_scheme(scheme))
    return build_scratch_model(tok, hidden=32, layers=1, heads=2, max_positions=1024, seed=seed), tok


def save_full_model(out: Path, model, tokenizer, scheme: str = "spacy19") -> Path:
    """``out`` as `kner export` writes a full model: kner.json, model/ (safetensors) and tokenizer/."""
    from kner.data.schemes import load_scheme
    from kner.model.artifacts import ModelManifest
    from kner.model.loading import LoadSpec

    model.save_pretrained(out / "model", safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer")
    ModelManifest(
        load=LoadSpec(model="unused", quantize_4bit=False, compute_dtype="fp32"),
        method="full",
        scheme=load_scheme(scheme),
        adapter_dir=None,
        model_dir="model",
    ).save(out)
    return out


class InjectedOOM(torch.nn.Module):
    """``inner``, raising like CUDA does for batches of more than ``limit`` rows (``limit`` may be changed)."""

    def __init__(self, inner, limit: int):
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, input_ids=None, **kw):
        if input_ids.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return self.inner(input_ids=input_ids, **kw)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


def tiny_model_folder(out: Path, texts: Iterable[str], seed: int = 0) -> Path:
    """A tiny random full model with a character tokenizer for ``texts``, in ``out`` as `kner export` writes it."""
    return save_full_model(out, *tiny_char_model(texts, seed))
