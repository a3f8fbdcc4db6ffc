"""Generic CoNLL: one token a line, token in the first column, tag in the last.

Tags may be BIO, BIOES or BILOU (``B-PER``). Columns are split on whitespace
and every token line of a file must have the same number of columns. A blank
line ends a sentence; ``-DOCSTART-`` starts a new document (``file#2``, ...;
without it the file is the document). ``level="word"`` joins tokens with
single spaces, ``level="char"`` joins them with nothing (one character a
line; a space token can't be written in this format, so char level text has
no spaces unless a token is ``_`` with ``space_token="_"``). Lines starting
with ``#`` whose last column is not a tag are comments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kner.data.example import Example, strip_span
from kner.data.readers.base import Problem, ReadResult, build_entities, numbered_lines
from kner.data.readers.bio import decode, split_tag
from kner.errors import ConfigError, DataError


def read(path: Path, level: str = "word", space_token: str | None = None) -> ReadResult:
    if level not in ("word", "char"):
        raise ConfigError(f"CoNLL level must be 'word' or 'char', not {level!r}")
    sep = " " if level == "word" else ""
    res = ReadResult(scheme=None, files=1)
    ncols = None
    doc_no = 0
    sent: list[Any] = []
    k = 0

    def flush() -> None:
        nonlocal sent, k
        if sent:
            k += 1
            _sentence(path, k, sent, sep, space_token, f"{path.name}#{doc_no}" if doc_no else path.name, res)
        sent = []

    for lineno, line in numbered_lines(path):
        cols = line.split()
        if not cols:
            flush()
            continue
        if cols[0] == "-DOCSTART-":
            flush()
            doc_no += 1
            continue
        if cols[0].startswith("#") and (len(cols) < 2 or split_tag(cols[-1]) is None):
            continue
        if len(cols) < 2:
            raise DataError("expected a token and a tag", path, lineno)
        if ncols is None:
            ncols = len(cols)
        elif len(cols) != ncols:
            raise DataError(f"expected {ncols} columns like the first token line, got {len(cols)}", path, lineno)
        tag = split_tag(cols[-1])
        if tag is None:
            raise DataError(f"not a BIO/BIOES tag: {cols[-1]!r}", path, lineno)
        sent.append((lineno, cols[0], tag))
    flush()
    return res


def _sentence(
    path: Path, k: int, sent: list[Any], sep: str, space_token: str | None, doc: str, res: ReadResult
) -> None:
    sid = f"{path.name}:{k}"
    toks = [" " if space_token is not None and t == space_token else t for _, t, _ in sent]
    starts, pos = [], 0
    for t in toks:
        starts.append(pos)
        pos += len(t) + len(sep)
    text = sep.join(toks)
    tok_spans, repairs = decode([t for _, _, t in sent])
    for idx, msg in repairs:
        res.problems.append(Problem(str(path), sent[idx][0], sid, msg, "i-without-b"))
    spans = []
    for a, b, lab in tok_spans:
        s, e = strip_span(text, starts[a], starts[b - 1] + len(toks[b - 1]))
        if s < e:
            spans.append((s, e, lab))
    ents, notes = build_entities(text, spans)
    for kind, msg in notes:
        res.problems.append(Problem(str(path), sent[0][0], sid, msg, kind))
    res.examples.append(Example(sid, text, ents, {"doc": doc, "source": f"{path.name}:{sent[0][0]}"}))
