"""KLUE-NER TSV (``klue-ner-v1.1_{train,dev}.tsv``).

``##`` comment lines at the top describe the format; then per sentence::

    ## <sentence id><TAB>sentence with <entity:TAG> markup
    char<TAB>BIO                 (one character a line, spaces included)
    <blank line>

The markup line is the truth, as for KMOU; the characters must spell the same
text and their BIO spans must equal the markup spans, otherwise a problem row is
written. Each KLUE sentence comes from a different source, so the document of
an example is its sentence id.
"""

from __future__ import annotations

import re
from pathlib import Path

from kner.errors import DataError
from kner.data.example import Example
from kner.data.readers.base import Problem, ReadResult, build_entities, describe_spans, numbered_lines
from kner.data.readers.bio import decode, split_tag
from kner.data.readers.markup import MarkupError, parse_markup, trim_spans

LABELS = ("PS", "LC", "OG", "DT", "TI", "QT")
_HEAD = re.compile(r"^## (\S+)\t(.*)$")


def read(path: Path, check_bio: bool = True) -> ReadResult:
    res = ReadResult(scheme="klue", files=1)
    lines = list(numbered_lines(path))
    i = 0
    while i < len(lines):
        lineno, line = lines[i]
        m = _HEAD.match(line)
        if not m:
            if line.strip() and not line.startswith("##"):
                raise DataError("expected '## <id><TAB><markup>' or a '##' comment", path, lineno)
            i += 1
            continue
        j = i + 1
        chars = []
        while j < len(lines) and lines[j][1] != "" and not _HEAD.match(lines[j][1]):
            clineno, cline = lines[j]
            cols = cline.split("\t")
            if len(cols) != 2:
                raise DataError(f"expected 'character<TAB>BIO tag', got {len(cols)} columns", path, clineno)
            tag = split_tag(cols[1])
            if tag is None or (tag.label is not None and tag.label not in LABELS):
                raise DataError(f"unknown BIO tag {cols[1]!r}", path, clineno)
            chars.append((clineno, cols[0], tag))
            j += 1
        _sentence(path, lineno, m.group(1), m.group(2), chars if check_bio else None, res)
        i = j
    return res


def _sentence(path: Path, lineno: int, sid: str, markup: str, chars, res: ReadResult) -> None:
    def problem(kind: str, reason: str, line: int = lineno) -> None:
        res.problems.append(Problem(str(path), line, sid, reason, kind))

    try:
        mk = parse_markup(markup, LABELS)
    except MarkupError as err:
        if not chars:
            problem("unparseable", f"markup not converted: {err}")
            res.skipped += 1
            return
        # KLUE's own annotation is the character column; it reads the broken tag as text.
        problem("unparseable", f"markup unreadable ({err}); used the character lines instead")
        text = "".join(c for _, c, _ in chars)
        tok_spans, repairs = decode([t for _, _, t in chars])
        for idx, msg in repairs:
            problem("i-without-b", msg, chars[idx][0])
        _finish(path, lineno, sid, text, tok_spans, problem, res)
        return
    text = mk.text
    for kind, msg in mk.notes:
        problem(kind, msg)
    spans, notes = trim_spans(text, mk.spans)
    for kind, msg in notes:
        problem(kind, msg)
    if chars is not None:
        spelled = "".join(c for _, c, _ in chars)
        if spelled != text:
            problem("chars-mismatch", "character lines do not spell the markup text; BIO not checked")
        else:
            tok_spans, repairs = decode([t for _, _, t in chars])
            for idx, msg in repairs:
                problem("i-without-b", msg, chars[idx][0])
            bio = set(tok_spans)
            if bio != set(spans):
                problem("bio-mismatch", f"BIO lines disagree with markup (markup kept): markup "
                                        f"{describe_spans(text, set(spans) - bio)}; BIO {describe_spans(text, bio - set(spans))}")
    _finish(path, lineno, sid, text, spans, problem, res)


def _finish(path: Path, lineno: int, sid: str, text: str, spans, problem, res: ReadResult) -> None:
    ents, notes = build_entities(text, spans)
    for kind, msg in notes:
        problem(kind, msg)
    res.examples.append(Example(sid, text, ents, {"doc": sid, "source": f"{path.name}:{lineno}"}))
