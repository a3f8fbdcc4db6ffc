"""Hugging Face ``datasets`` token classification data: ``tokens`` + ``ner_tags``.

``path`` is a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
(read with ``datasets.load_from_disk``), or, when no such folder exists and
the machine is online, a Hub id read with ``datasets.load_dataset(path,
name)`` (``-O name=ner`` for a config such as KLUE's). A dataset with several
splits needs ``split=NAME``.

Tag names come from the ``ClassLabel`` feature of the tag column (``ner_tags``
by default; string tags are read as they are). BIO, BIOES and BILOU are read
with the conlleval repair (``I-X`` with no open ``X`` starts one; reported).
``level``: ``char`` joins the tokens with nothing (KLUE's ``ner`` config: one
character a token, spaces included as ``" "`` tokens), ``word`` with single
spaces; ``auto`` (default) takes ``char`` when every token of the dataset is
one character long, else ``word``, and says which it took. The example id is
the ``id``/``guid`` column if there is one, else ``SPLIT:ROW`` (``ds[ROW]``);
problems give the row index as their line. Every row is its own document.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kner.data.example import Example, strip_span
from kner.data.readers.base import Problem, ReadResult, build_entities
from kner.data.readers.bio import decode, split_tag
from kner.errors import ConfigError, DataError

_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
LEVELS = ("auto", "word", "char")


def load(path: Path, split: str | None = None, name: str | None = None) -> tuple[Any, str]:
    """The ``datasets.Dataset`` at ``path`` (folder or Hub id) and the split name it came from."""
    try:
        import datasets  # noqa: PLC0415  lazy: datasets takes a second to import; only this format needs it
    except ImportError:  # pragma: no cover - a declared dependency
        raise ConfigError("the hf format needs the datasets library: pip install datasets") from None
    if path.exists():
        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError as err:
            raise DataError(f"not a folder written by save_to_disk ({err})", path) from None
    elif _HUB_ID.match(str(path)):
        try:
            ds = datasets.load_dataset(str(path), name)
        except Exception as err:  # network, unknown id, missing config: all are the user's to fix
            raise DataError(
                f"no such folder, and loading it from the Hugging Face Hub failed: "
                f"{type(err).__name__}: {str(err).splitlines()[0][:200]}",
                path,
            ) from None
    else:
        raise DataError("no such folder (nor a Hub id)", path)
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        if split is None:
            if len(names) != 1:
                raise ConfigError(f"{path} has splits {', '.join(names)}; choose one with -O split=NAME")
            split = names[0]
        if split not in ds:
            raise ConfigError(f"{path} has no split {split!r}; its splits: {', '.join(names)}")
        return ds[split], split
    if split is not None and str(ds.split) != split:
        raise ConfigError(f"{path} is a single dataset (split {ds.split}); drop -O split={split}")
    return ds, str(ds.split) if ds.split is not None else path.name


def _tag_names(ds: Any, column: str, path: Path) -> list[str] | None:
    from datasets import ClassLabel  # noqa: PLC0415  lazy: as in load()

    feat = ds.features[column]
    inner = getattr(feat, "feature", None)
    if isinstance(inner, ClassLabel):
        return list(inner.names)
    if getattr(inner, "dtype", None) == "string":
        return None
    raise DataError(f"column {column!r} is {feat}; expected a sequence of ClassLabel (or string) tags", path)


def read(
    path: Path,
    split: str | None = None,
    name: str | None = None,
    tokens: str = "tokens",
    tags: str = "ner_tags",
    level: str = "auto",
) -> ReadResult:
    if level not in LEVELS:
        raise ConfigError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
    ds, split_name = load(path, split, name)
    for col in (tokens, tags):
        if col not in ds.column_names:
            raise DataError(
                f"no column {col!r}; columns: {', '.join(ds.column_names)} "
                "(choose others with -O tokens=NAME -O tags=NAME)",
                path,
            )
    names = _tag_names(ds, tags, path)
    idcol = next((c for c in ("id", "guid") if c in ds.column_names), None)
    cols = ds.select_columns([c for c in (tokens, tags, idcol) if c]).to_dict()
    toks_all, tags_all = cols[tokens], cols[tags]
    if level == "auto":
        level = "char" if all(len(t) == 1 for row in toks_all for t in row) and toks_all else "word"
        why = "every token is one character" if level == "char" else "multi-character tokens"
        res_note = f"level {level} (auto: {why})"
    else:
        res_note = f"level {level}"
    sep = "" if level == "char" else " "
    res = ReadResult(scheme=None, files=1)
    res.notes[res_note] = 0
    where = f"{path}" + (f"[{split_name}]" if split_name and split_name != path.name else "")
    for i, (toks, tag_ids) in enumerate(zip(toks_all, tags_all)):
        sid = str(cols[idcol][i]) if idcol else f"{split_name}:{i}"

        def problem(kind: str, reason: str) -> None:
            res.problems.append(Problem(where, i, sid, reason, kind))

        if len(toks) != len(tag_ids):
            problem("length-mismatch", f"{len(toks)} tokens but {len(tag_ids)} tags; row skipped")
            res.skipped += 1
            continue
        parsed, bad = [], None
        for t in tag_ids:
            if names is not None:
                if not isinstance(t, int) or not 0 <= t < len(names):
                    bad = f"tag id {t!r} is not one of the {len(names)} ClassLabel names"
                    break
                t = names[t]
            tag = split_tag(str(t))
            if tag is None:
                bad = f"{t!r} is not a BIO/BIOES tag"
                break
            parsed.append(tag)
        if bad:
            problem("unknown-tag", bad + "; row skipped")
            res.skipped += 1
            continue
        starts, pos = [], 0
        for t in toks:
            starts.append(pos)
            pos += len(t) + len(sep)
        text = sep.join(toks)
        tok_spans, repairs = decode(parsed)
        for idx, msg in repairs:
            problem("i-without-b", f"token {idx}: {msg}")
        spans = []
        for a, b, lab in tok_spans:
            s, e = starts[a], starts[b - 1] + len(toks[b - 1])
            s2, e2 = strip_span(text, s, e)
            if s2 == e2:
                problem("empty-entity", f"{lab} entity [{s},{e}) is only whitespace; left out")
                continue
            if (s2, e2) != (s, e):
                problem("whitespace-trimmed", f"{lab} entity {text[s:e]!r} trimmed to {text[s2:e2]!r}")
            spans.append((s2, e2, lab))
        ents, notes = build_entities(text, spans)
        for kind, msg in notes:
            problem(kind, msg)
        res.examples.append(Example(sid, text, ents, {"doc": sid, "source": f"{where}:{i}"}))
    return res
