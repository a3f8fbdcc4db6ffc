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

from kner.data.example import Example
from kner.data.readers.base import Problem, ReadResult, numbered_lines
from kner.data.readers.bio import Tag, split_tag
from kner.data.readers.markup import MarkupError, from_tokens, read_marked
from kner.errors import DataError

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


def _sentence(
    path: Path, lineno: int, sid: str, markup: str, chars: list[tuple[int, str, Tag]] | None, res: ReadResult
) -> None:
    meta = {"doc": sid, "source": f"{path.name}:{lineno}"}
    try:
        mk = read_marked(markup, LABELS, tokens=chars, unit="chars")
    except MarkupError as err:
        if not chars:
            res.problems.append(Problem(str(path), lineno, sid, f"markup not converted: {err}", "unparseable"))
            res.skipped += 1
            return
        # KLUE's own annotation is the character column; it reads the broken tag as text.
        res.problems.append(
            Problem(
                str(path), lineno, sid, f"markup unreadable ({err}); used the character lines instead", "unparseable"
            )
        )
        mk = from_tokens(chars)
    res.problems += mk.problems(path, sid, dict.fromkeys(("sentence", "raw", "markup"), lineno))
    res.examples.append(Example(sid, mk.text, mk.entities, meta))
