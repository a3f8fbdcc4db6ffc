"""``kner export`` (adapter -> merged 16-bit weights, or a Hugging Face Hub folder) and ``kner push``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from kner.cli import app, configure_logging
from kner.errors import ConfigError, DataError
from kner.textio import reads_text


def _check_texts(check_input: Path | None) -> list[str] | None:
    if check_input is None:
        return None
    from kner.textio import numbered_lines

    texts = [line for _, line in numbered_lines(check_input) if line.strip()]
    if not texts:
        raise DataError("no non-empty lines to check the merge on", check_input)
    return texts


def _print_merge_check(rep: dict, into: str) -> None:
    c = rep["check"]
    typer.echo(
        f"check on {c['positions']} prompt positions vs {c['reference']}: greedy next token differs at "
        f"{c['differing']} ({100 * c['differ_share']:.2f}%), max |logit difference| {c['max_logit_diff']:.4g}"
    )
    if c["differing"]:
        hint = "; `--into dequantized` merges into the weights the adapter was trained on" if into == "16bit" else ""
        typer.echo(
            f"warning: the merged model's greedy choices differ from the trained model at "
            f"{100 * c['differ_share']:.2f}% of sampled positions{hint}",
            err=True,
        )


@app.command()
@reads_text
def export(
    model: Path | None = typer.Argument(None, help="With --hub: output folder of `kner train` to publish."),
    merge: Path | None = typer.Option(
        None, "--merge", help="Output folder of `kner train` whose adapter is merged into 16-bit weights."
    ),
    output: Path | None = typer.Option(None, "--output", "-o", help="Folder for the merged model (without --hub)."),
    hub: Path | None = typer.Option(
        None, "--hub", help="Write a Hugging Face Hub folder here (card, kner.json, safetensors, tokenizer)."
    ),
    metrics: Path | None = typer.Option(
        None,
        help="Scores for the card: metrics.json of `kner evaluate` or report.json of `kner run` "
        "(default: found when MODEL is a `kner run` folder's train/).",
    ),
    system: str | None = typer.Option(None, help="The system of a report.json to publish (default: the run's)."),
    base_model: str | None = typer.Option(
        None, help="Hub id of the base model, when kner.json names it by a local path."
    ),
    license: str = typer.Option("other", help="Licence id for the card, e.g. apache-2.0, cc-by-sa-4.0, llama2."),
    language: list[str] = typer.Option(["ko"], help="Language code(s) for the card."),
    dataset: list[str] = typer.Option([], help="Hub dataset id(s) the model was trained on (repeat the option)."),
    dataset_name: str | None = typer.Option(None, help="Name of the evaluation set in the card."),
    split: str = typer.Option("test", help="The split the scores are on."),
    tag: list[str] = typer.Option([], help="More card tags (repeat the option)."),
    repo: str | None = typer.Option(None, help="The repo id it will have (user/name), for the card's examples."),
    into: str = typer.Option(
        "16bit",
        help="16bit: merge into the original 16-bit base (default); dequantized: "
        "into the dequantized 4-bit base the adapter was trained on (exact).",
    ),
    dtype: str = typer.Option("auto", help="Saved dtype: auto (bf16 where supported, else fp16), fp16, bf16, fp32."),
    check_input: Path | None = typer.Option(
        None, help="Texts (one per line) to measure the merge on (default: 8 built-in sentences)."
    ),
    overwrite: bool = typer.Option(False, help="Replace a non-empty output folder."),
    encoding: str | None = typer.Option(None, "--encoding", help="Encoding of --check-input (default utf-8)."),
) -> None:
    """Merge a LoRA adapter into 16-bit weights (--merge OUT -o DIR), or write a Hub folder
    (--hub DIR MODEL: the adapter; --hub DIR --merge MODEL: merged weights) with a model card."""
    configure_logging(logging.WARNING, sys.stderr)
    if hub is None:
        if model is not None or output is None or merge is None:
            raise ConfigError("kner export needs --merge OUT -o DIR, or --hub DIR MODEL (or --hub DIR --merge MODEL)")
        from kner.inference.export import export_merged

        rep = export_merged(
            merge, output, into=into, dtype=dtype, check_texts=_check_texts(check_input), overwrite=overwrite
        )
        typer.echo(f"merged model written to {output} ({rep['dtype']}, merged into the {into} base)")
        _print_merge_check(rep, into)
        return
    if output is not None:
        raise ConfigError("--hub DIR is the output folder; leave out --output")
    if (model is None) == (merge is None):
        raise ConfigError("--hub needs one model folder: MODEL (its adapter or weights) or --merge MODEL")
    from kner.inference.export import export_hub

    rep = export_hub(
        model or merge,  # type: ignore[arg-type]
        hub,
        merge=merge is not None,
        metrics=metrics,
        system=system,
        base_model=base_model,
        license=license,
        language=language,
        datasets=dataset,
        dataset_name=dataset_name,
        split=split,
        tags=tag,
        repo_id=repo,
        overwrite=overwrite,
        into=into,
        dtype=dtype,
        check_texts=_check_texts(check_input),
    )
    s = rep["scores"]
    score = f"; card scores from {s['source']}: micro F1 {100 * s['f1']:.2f}" if s else ""
    typer.echo(f"Hub folder written to {hub} ({rep['weights']}, {len(rep['files'])} files){score}")
    if rep["merge"] is not None:
        _print_merge_check(rep["merge"], into)
    if license == "other":
        rep["warnings"].append("the card's licence is 'other': pass --license (the base model's and the data's)")
    for w in rep["warnings"]:
        typer.echo(f"warning: {w}", err=True)
    typer.echo(f"upload with: kner push {hub} --repo {repo or 'USER/NAME'}")


@app.command()
def push(
    folder: Path = typer.Argument(..., help="A folder written by `kner export --hub`."),
    repo: str = typer.Option(..., "--repo", help="Hub model repo id, user/name (created if missing)."),
    private: bool = typer.Option(False, help="Create the repo as private."),
    message: str | None = typer.Option(None, help="Commit message."),
) -> None:
    """Upload a Hub folder to the Hugging Face Hub (log in first: `hf auth login`, or set HF_TOKEN)."""
    from kner.model.hub import push as push_folder

    url = push_folder(folder, repo, private=private, message=message)
    typer.echo(f"pushed {folder} to {repo}: {url}")
