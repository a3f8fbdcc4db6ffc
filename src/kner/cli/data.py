"""``kner data convert|stats|split``: datasets in, canonical JSONL out."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import cast

import typer

from kner.cli import data_app
from kner.errors import ConfigError, DataError, KnerError
from kner.textio import ENCODING_HELP, check_output, reads_text


def _parse_options(items: list[str] | None) -> dict:
    opts: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option takes KEY=VALUE, not {item!r}")
        v: object = value.strip()
        if str(v).lower() in ("true", "yes"):
            v = True
        elif str(v).lower() in ("false", "no"):
            v = False
        opts[key.strip().replace("-", "_")] = v
    return opts


@data_app.command("convert")
@reads_text
def convert(
    fmt: str = typer.Argument(
        ...,
        metavar="FORMAT",
        help="kmou, klp2016, klue, naver, multiconer, conll, jsonl; annotation tools: "
        "doccano, labelstudio, prodigy, spacy (DocBin), hf (datasets folder or Hub id).",
    ),
    path: Path = typer.Argument(..., help="A file, or a folder (all its files of that format, sorted by name)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output: canonical JSONL."),
    scheme_map: str | None = typer.Option(
        None, "--scheme-map", help="Relabel into this scheme with the built-in mapping (e.g. spacy19)."
    ),
    map_file: Path | None = typer.Option(
        None, "--map-file", help="Relabel with this TSV (source<TAB>target<TAB>reason)."
    ),
    fallback: str | None = typer.Option(
        None, "--fallback", help="Target for labels with no mapping row ('-' drops them); default: error."
    ),
    trim_particles: bool = typer.Option(
        False, "--trim-particles", help="NAVER: strip trailing particles (조사) from entity ends."
    ),
    trim_punct: bool = typer.Option(
        False, "--trim-punct", help="NAVER: strip punctuation at entity edges (quotes, commas, unpaired brackets)."
    ),
    problems: Path | None = typer.Option(None, "--problems", help="Write every problem found to this TSV."),
    option: list[str] | None = typer.Option(
        None, "--option", "-O", help="Reader option KEY=VALUE, e.g. version=1 (multiconer), level=char (conll)."
    ),
    encoding: str | None = typer.Option(None, "--encoding", help=ENCODING_HELP),
) -> None:
    """Read a dataset, report every problem and skipped sentence, write canonical JSONL."""
    from kner.data.example import write_jsonl
    from kner.data.readers import native_scheme, read_dataset
    from kner.data.schemes import Mapping, map_examples

    if scheme_map and map_file:
        raise ConfigError("use either --scheme-map or --map-file, not both")
    if fallback is not None and not (scheme_map or map_file):
        raise ConfigError("--fallback only applies with --scheme-map or --map-file")
    check_output(out)
    if problems:
        check_output(problems, what="problems file")
    opts = _parse_options(option)
    if trim_particles:
        if fmt != "naver":
            raise ConfigError("--trim-particles applies to the naver format only")
        opts["trim_particles"] = True
    if trim_punct:
        if fmt != "naver":
            raise ConfigError("--trim-punct applies to the naver format only")
        opts["trim_punct"] = True
    res = read_dataset(fmt, path, **opts)
    examples = res.examples
    n_ents = sum(len(e.entities) for e in examples)
    typer.echo(
        f"read {len(examples)} sentences, {n_ents} entities from {res.files} file(s) "
        f"(scheme {res.scheme or 'as in the file'}); {len(res.problems)} problems, {res.skipped} skipped"
    )
    for kind, c in sorted(res.problem_counts().items(), key=lambda kv: -kv[1]):
        typer.echo(f"  {kind}: {c}")
    for note, c in sorted(res.notes.items()):
        typer.echo(f"  {note}" + (f": {c}" if c else ""))
    if res.problems:
        if problems:
            res.write_problems(problems)
            typer.echo(f"problems written to {problems}")
        else:
            for p in res.problems[:5]:
                typer.echo(f"  {p.path}:{p.line}: [{p.sentence_id}] {p.reason}")
            typer.echo("  (write them all with --problems FILE.tsv)")
    if scheme_map or map_file:
        source = res.scheme or native_scheme(fmt, **opts)
        if source is None and not map_file:
            raise ConfigError(f"format {fmt!r} has no fixed label scheme; relabel with --map-file")
        target = scheme_map if scheme_map else cast(Path, map_file).stem  # one of the two is given
        mapping = Mapping.load(source or "input", target, map_file)
        examples, rep = map_examples(examples, mapping, fallback)
        typer.echo(
            f"mapped {sum(rep.mapped.values())} entities to {mapping.target}, dropped {sum(rep.dropped.values())}"
            + (f", fallback {sum(rep.fallback.values())}" if rep.fallback else "")
        )
        for (a, b), c in sorted(rep.mapped.items()):
            typer.echo(f"  {a} -> {b}: {c}")
        for a, c in sorted(rep.dropped.items()):
            typer.echo(f"  {a} -> (dropped): {c}")
        for a, c in sorted(rep.fallback.items()):
            typer.echo(f"  {a} -> {fallback} (fallback): {c}")
    if not res.examples:
        raise DataError(
            f"no sentences read from {res.files} file(s)"
            + (
                f" ({res.skipped} skipped, see above)" if res.skipped else f"; is it empty, or not in the {fmt} format?"
            ),
            path,
        )
    n = write_jsonl(out, examples)
    typer.echo(f"wrote {n} examples to {out}")


def _summary(values: list[int]) -> tuple[str, str, str, str]:
    if not values:
        return ("-", "-", "-", "-")
    v = sorted(values)

    def q(p: float) -> int:  # nearest-rank percentile
        return v[min(len(v) - 1, max(0, int(round(p * len(v) + 0.5)) - 1))]

    return (f"{sum(v) / len(v):.1f}", str(q(0.5)), str(q(0.95)), str(v[-1]))


@data_app.command("stats")
@reads_text
def stats(
    file: Path = typer.Argument(..., help="Canonical JSONL."),
    tokenizer: Path | None = typer.Option(
        None, "--tokenizer", help="A Hugging Face tokenizer folder: also count tokens per sentence and prompt."
    ),
    scheme: str = typer.Option("spacy19", "--scheme", help="Scheme whose labels the rendered prompt lists."),
    encoding: str | None = typer.Option(None, "--encoding", help=ENCODING_HELP),
) -> None:
    """Sentences, characters and entities per label; with --tokenizer, token lengths of texts and prompts."""
    from rich.console import Console
    from rich.table import Table

    from kner.data.example import read_jsonl
    from kner.data.schemes import load_scheme
    from kner.model.prompt import PromptFormat, render_tags

    examples = read_jsonl(file)
    console = Console()
    labels = Counter(e.label for ex in examples for e in ex.entities)
    chars = [len(ex.text) for ex in examples]
    docs = {str(ex.meta.get("doc", ex.id)) for ex in examples}
    t = Table(title=f"{file}", title_justify="left")
    t.add_column("")
    t.add_column("value", justify="right")
    t.add_row("sentences", str(len(examples)))
    t.add_row("documents", str(len(docs)))
    t.add_row("characters", str(sum(chars)))
    t.add_row("characters / sentence (mean, p50, p95, max)", ", ".join(_summary(chars)))
    t.add_row("sentences without entities", str(sum(1 for ex in examples if not ex.entities)))
    t.add_row("entities", str(sum(labels.values())))
    console.print(t)
    lt = Table(title="entities per label", title_justify="left")
    lt.add_column("label")
    lt.add_column("count", justify="right")
    lt.add_column("%", justify="right")
    total = sum(labels.values()) or 1
    for lab, c in labels.most_common():
        lt.add_row(lab, str(c), f"{100 * c / total:.1f}")
    console.print(lt)
    if tokenizer is None:
        return
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tokenizer))
    except (OSError, ValueError) as err:
        raise KnerError(f"cannot load a tokenizer from {tokenizer}: {str(err).splitlines()[0]}") from None
    sch = load_scheme(scheme)
    fmt = PromptFormat()
    texts = [ex.text for ex in examples]
    prompts = [fmt.prompt(ex.text, sch) for ex in examples]
    full = [p + render_tags(ex.entities, fmt.separator) for p, ex in zip(prompts, examples)]
    answers = [render_tags(ex.entities, fmt.separator) for ex in examples]

    def lengths(batch: list[str], special: bool) -> list[int]:
        out: list[int] = []
        for i in range(0, len(batch), 1024):
            out += [len(ids) for ids in tok(batch[i : i + 1024], add_special_tokens=special)["input_ids"]]
        return out

    tt = Table(
        title=f"tokens ({tokenizer.name}; prompt = {scheme} instruction + text + answer, with special tokens)",
        title_justify="left",
    )
    for col in ("", "mean", "p50", "p95", "max"):
        tt.add_column(col, justify="right" if col else "left")
    tt.add_row("sentence text", *_summary(lengths(texts, False)))
    tt.add_row("answer (tags)", *_summary(lengths(answers, False)))
    tt.add_row("prompt without answer", *_summary(lengths(prompts, True)))
    tt.add_row("prompt with answer", *_summary(lengths(full, True)))
    console.print(tt)


@data_app.command("split")
@reads_text
def split(
    file: Path = typer.Argument(..., help="Canonical JSONL with meta.doc (else each sentence is its own document)."),
    out: Path = typer.Option(..., "-o", "--out", help="Folder for train.jsonl, dev.jsonl, test.jsonl."),
    ratios: str = typer.Option("0.8,0.1,0.1", "--ratios", help="train,dev,test fractions of the sentences."),
    seed: int = typer.Option(13, "--seed"),
    encoding: str | None = typer.Option(None, "--encoding", help=ENCODING_HELP),
) -> None:
    """Split by document (no document in two splits), deterministically for a seed."""
    from kner.data.example import read_jsonl, write_jsonl
    from kner.data.splits import doc_of, parse_ratios, split_by_document

    r = parse_ratios(ratios)
    check_output(out, folder=True)
    examples = read_jsonl(file)
    parts = split_by_document(examples, r, seed)
    for name, exs in parts.items():
        n = write_jsonl(Path(out) / f"{name}.jsonl", exs)
        typer.echo(
            f"{name}: {len({doc_of(e) for e in exs})} documents, {n} sentences, "
            f"{sum(len(e.entities) for e in exs)} entities -> {Path(out) / (name + '.jsonl')}"
        )


@data_app.command("check")
@reads_text
def check(
    paths: list[str] = typer.Argument(
        ...,
        metavar="FOLDER | FILE... | NAME=FILE...",
        help="A split folder (its train.jsonl, dev.jsonl, test.jsonl), or JSONL files, "
        "each a split named by its stem or by NAME=; 'train' is the reference.",
    ),
    tokenizer: Path | None = typer.Option(
        None, "--tokenizer", help="A Hugging Face tokenizer folder: also find examples over --max-seq-len."
    ),
    max_seq_len: int = typer.Option(1024, "--max-seq-len", help="Token limit of training (train.max_seq_len)."),
    scheme: str = typer.Option("spacy19", "--scheme", help="Scheme whose labels the prompt lists."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the findings to this JSON file."),
    encoding: str | None = typer.Option(None, "--encoding", help=ENCODING_HELP),
) -> None:
    """Per split: sentences, entities per label, and problems (errors exit 1, warnings alone 0)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from kner.data.check import ERROR, check_files, check_folder

    if json_out is not None:
        check_output(json_out, what="--json file")
    tok = None
    if tokenizer is not None:
        from kner.model.loading import load_tokenizer

        tok = load_tokenizer(str(tokenizer))
    kw = dict(scheme=scheme, max_seq_len=max_seq_len)
    if len(paths) == 1 and "=" not in paths[0] and Path(paths[0]).is_dir():
        report = check_folder(paths[0], tok, **kw)
    else:
        files: dict[str, str | Path] = {}
        for item in paths:
            name, sep, p = item.partition("=")
            name, p = (name, p) if sep else (Path(item).stem, item)
            if Path(p).is_dir():
                raise ConfigError(f"{p} is a folder: give one split folder alone, or JSONL files")
            if not Path(p).exists():  # a named file; a folder's missing split file is a finding instead
                raise DataError("file not found", p)
            if name in files:
                raise ConfigError(f"two files for split {name!r}: {files[name]} and {p} (name them NAME=FILE)")
            files[name] = Path(p)
        report = check_files(files, tok, **kw)

    console = Console()
    per_split = {n: [f for f in report.findings if f.split == n] for n in report.splits}
    t = Table(title="splits", title_justify="left")
    for c in ("split", "sentences", "documents", "entities", "errors", "warnings"):
        t.add_column(c, justify="left" if c == "split" else "right")
    for n, s in report.splits.items():
        fs = per_split[n]
        t.add_row(
            n,
            str(s.sentences),
            str(s.documents),
            str(sum(s.entities.values())),
            str(sum(f.severity == ERROR for f in fs)),
            str(sum(f.severity != ERROR for f in fs)),
        )
    console.print(t)
    labels: Counter[str] = Counter()
    for s in report.splits.values():
        labels.update(s.entities)
    if labels:
        lt = Table(title="entities per label", title_justify="left")
        lt.add_column("label")
        for n in report.splits:
            lt.add_column(n, justify="right")
        for lab, _ in labels.most_common():
            lt.add_row(lab, *(str(s.entities.get(lab, 0)) for s in report.splits.values()))
        console.print(lt)
    for f in report.findings:
        tag = "[bold red]error[/]  " if f.severity == ERROR else "[yellow]warning[/]"
        console.print(f"{tag} {f.line()}", markup=True, highlight=False, soft_wrap=True)
    for note in report.notes:
        console.print(f"note    {note}", highlight=False, soft_wrap=True)
    if json_out is not None:
        from kner.textio import write_text

        write_text(json_out, json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n", what="--json file")
    console.print(("[bold red]" if report.errors else "[bold green]") + report.verdict() + "[/]", highlight=False)
    if report.errors:
        raise typer.Exit(1)


@data_app.command("export")
@reads_text
def export(
    fmt: str = typer.Argument(..., metavar="FORMAT", help="doccano, labelstudio, prodigy, spacy (DocBin) or conll."),
    file: Path = typer.Argument(..., help="Canonical JSONL (e.g. predictions after correction, or convert output)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output file in FORMAT."),
    option: list[str] | None = typer.Option(
        None,
        "--option",
        "-O",
        help="Writer option KEY=VALUE: form=entities, offsets=chars (doccano); predictions=true (labelstudio); "
        "level=word, space_token=_ (conll).",
    ),
    encoding: str | None = typer.Option(None, "--encoding", help=ENCODING_HELP),
) -> None:
    """Write canonical JSONL in an annotation tool's import format; say what the format could not hold."""
    from kner.data.example import read_jsonl
    from kner.data.readers.writers import write

    check_output(out)
    examples = read_jsonl(file)
    notes = write(fmt, examples, out, **_parse_options(option))
    typer.echo(f"wrote {len(examples)} examples, {sum(len(e.entities) for e in examples)} entities to {out} ({fmt})")
    for note, c in sorted(notes.items()):
        typer.echo(f"  {note}: {c}")
