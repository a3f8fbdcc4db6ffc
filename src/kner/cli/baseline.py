"""``kner baseline spacy train|predict``: the spaCy tok2vec + NER baseline."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from kner.cli import baseline_app
from kner.errors import ConfigError
from kner.textio import ENCODING_HELP, check_output, reads_text

spacy_app = typer.Typer(
    no_args_is_help=True, help="spaCy tok2vec + NER: train on canonical JSONL, predict with it or any spaCy pipeline."
)
baseline_app.add_typer(spacy_app, name="spacy")


@spacy_app.command("train")
@reads_text
def train(
    train: Path = typer.Option(..., "--train", help="Training data, canonical JSONL."),
    dev: Path = typer.Option(..., "--dev", help="Dev data (model selection), canonical JSONL."),
    out: Path = typer.Option(..., "--out", help="Output directory (model-best/, model-last/, kner-spacy.json)."),
    config: Path | None = typer.Option(None, "--config", help="spaCy training config; default: kner's ner.cfg."),
    tokenizer: str = typer.Option("kiwi", "--tokenizer", help="char, kiwi (morphemes) or whitespace."),
    handling: str = typer.Option(
        "expand", "--unaligned", help="Gold spans not on token boundaries: expand, contract or split (counted)."
    ),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after this many updates."),
    max_epochs: int | None = typer.Option(None, "--max-epochs", help="Stop after this many epochs."),
    seed: int = typer.Option(0, "--seed"),
    quiet: bool = typer.Option(False, "--quiet", help="Hide spaCy's training table."),
    encoding: str | None = typer.Option(None, "--encoding", help=ENCODING_HELP),
) -> None:
    """Train a spaCy NER pipeline with spaCy's own training loop."""
    from kner.baselines.spacy_ner import REPORT_NAME, train_spacy
    from kner.data.example import read_jsonl

    check_output(out, folder=True, what="--out folder")
    train_ex = read_jsonl(train)
    dev_ex = read_jsonl(dev)
    overrides = {}
    if max_epochs is not None:
        if max_epochs < 1:
            raise ConfigError("--max-epochs must be at least 1")
        overrides["training.max_epochs"] = max_epochs
    if max_steps is not None and max_steps < 1:
        raise ConfigError("--max-steps must be at least 1")
    best = train_spacy(
        train_ex,
        dev_ex,
        out,
        tokenizer=tokenizer,
        config=config,
        max_steps=max_steps,
        seed=seed,
        handling=handling,
        overrides=overrides,
        verbose=not quiet,
    )
    report = json.loads((out / REPORT_NAME).read_text(encoding="utf-8"))
    scores = report.get("dev_scores", {})
    f = scores.get("ents_f")
    typer.echo(
        f"best pipeline: {best}  (dev ents_f {f:.4f} on spaCy's tokens; training {report['train_seconds']:.0f} s)"
        if f is not None
        else f"best pipeline: {best}"
    )


@spacy_app.command("predict")
@reads_text
def predict(
    model: str = typer.Option(..., "--model", help="Training output dir, pipeline dir or installed package name."),
    input: Path = typer.Option(..., "--input", help="Canonical JSONL; gold entities, if any, are ignored."),
    output: Path = typer.Option(..., "--output", help="Predictions, canonical JSONL."),
    map_file: str | None = typer.Option(
        None, "--map-file", help="Label mapping TSV, or a built-in name such as klue-to-spacy19."
    ),
    label_map: str | None = typer.Option(None, "--label-map", help="Inline mapping, e.g. PS=PER,LC=LOC,QT=-"),
    fallback: str | None = typer.Option(
        None, "--fallback", help="Target for labels the mapping lacks ('-' drops them); default: error."
    ),
    batch_size: int = typer.Option(256, "--batch-size"),
    encoding: str | None = typer.Option(None, "--encoding", help=ENCODING_HELP),
) -> None:
    """Predict entities with a spaCy pipeline and write them as canonical JSONL."""
    from kner.baselines.spacy_ner import load_mapping, parse_label_map, predict_spacy_with_report
    from kner.data.example import read_jsonl, write_jsonl

    if map_file and label_map:
        raise ConfigError("give either --map-file or --label-map, not both")
    if fallback is not None and not (map_file or label_map):
        raise ConfigError("--fallback only makes sense with --map-file or --label-map")
    check_output(output)
    mapping = load_mapping(map_file) if map_file else parse_label_map(label_map) if label_map else None
    examples = read_jsonl(input, validate_examples=False)
    preds, report = predict_spacy_with_report(model, examples, mapping, fallback, batch_size=batch_size)
    n = write_jsonl(output, preds)
    ents = sum(len(p.entities) for p in preds)
    line = f"wrote {n} examples, {ents} entities to {output} ({report['seconds']:.1f} s)"
    if report.get("dropped"):
        line += f"; dropped by the mapping: {report['dropped']}"
    if report.get("fallback"):
        line += f"; mapped by fallback: {report['fallback']}"
    typer.echo(line)
