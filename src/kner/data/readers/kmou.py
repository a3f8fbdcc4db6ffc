"""KMOU NER corpus (``kmou/corpus/*.txt``), one document per file.

Per sentence::

    ## 3
    ## raw sentence
    ## sentence with <entity:TAG> markup
    surface<TAB>lemma<TAB>POS<TAB>BIO      (one morpheme a line; POS '_' = a space)
    <blank line>

The markup line is the truth. It is checked against the raw line (markup with
tags removed must equal it) and against the BIO column (BIO spans re-aligned to
characters must equal the markup spans); every disagreement is a problem row,
and the sentence is kept as the markup says. A sentence whose markup cannot be
parsed is not converted and is reported with the reason.
"""

from __future__ import annotations

import re
from pathlib import Path

from kner.data.readers.base import ReadResult, numbered_lines
from kner.data.readers.bio import Tag, split_tag
from kner.data.readers.markup import add_marked
from kner.errors import DataError

LABELS = ("PER", "ORG", "LOC", "POH", "DAT", "TIM", "DUR", "MNY", "PNT", "NOH")
_NUM = re.compile(r"^##\s*(\d+)\s*$")


def _header(line: str) -> str:
    return line[3:] if line.startswith("## ") else line[2:]


def read(path: Path, check_bio: bool = True) -> ReadResult:
    res = ReadResult(scheme="kmou", files=1)
    lines = list(numbered_lines(path))
    i = 0
    while i < len(lines):
        lineno, line = lines[i]
        if not line.strip():
            i += 1
            continue
        m = _NUM.match(line)
        if not m:
            raise DataError("expected a sentence header '## N'", path, lineno)
        if i + 2 >= len(lines) or not lines[i + 1][1].startswith("##") or not lines[i + 2][1].startswith("##"):
            raise DataError(
                "a sentence needs three header lines: '## N', '## raw text', '## text with <span:TAG> markup'",
                path,
                lineno,
            )
        raw, markup = _header(lines[i + 1][1]), _header(lines[i + 2][1])
        j = i + 3
        morphs: list[tuple[int, str, Tag]] = []  # (line, surface, tag)
        while j < len(lines) and lines[j][1].strip() and not lines[j][1].startswith("##"):
            mlineno, mline = lines[j]
            cols = mline.split("\t")
            if len(cols) != 4:
                raise DataError(
                    f"expected 4 tab-separated columns (surface, lemma, POS, BIO), got {len(cols)}", path, mlineno
                )
            surface = " " if cols[2] == "_" else cols[0]
            tag = split_tag(cols[3])
            if check_bio and (tag is None or (tag.label is not None and tag.label not in LABELS)):
                raise DataError(f"unknown BIO tag {cols[3]!r}", path, mlineno)
            if tag is not None:  # None only without check_bio, which does not use morphs
                morphs.append((mlineno, surface, tag))
            j += 1
        _sentence(path, lineno, m.group(1), raw, markup, morphs if check_bio else None, res)
        i = j
    return res


def _sentence(
    path: Path, lineno: int, num: str, raw: str, markup: str, morphs: list[tuple[int, str, Tag]] | None, res: ReadResult
) -> None:
    at = {"sentence": lineno, "raw": lineno + 1, "markup": lineno + 2}
    meta = {"doc": path.stem, "source": f"{path.name}:{lineno}"}
    add_marked(res, path, f"{path.stem}:{num}", at, markup, LABELS, meta, raw=raw, tokens=morphs, unit="morphemes")
