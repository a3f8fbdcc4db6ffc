"""KMOU 2016 Korean language processing contest files (``kmou/2016klp/ner.{train,dev,test}``).

Per sentence::

    ; raw sentence
    $sentence with <entity:TAG> markup
    eojeol_index<TAB>morpheme<TAB>POS<TAB>B_TAG | I | O
    <blank line>

As for the KMOU corpus the markup line is the truth. The morpheme column holds
lemmas (``지난`` is ``지나`` + ``ㄴ``), so the BIO check compares entity
strings, spaces removed and jamo of lemmatised endings folded, in order; every
disagreement is a problem row.
"""

from __future__ import annotations

from pathlib import Path

from kner.data.readers.base import ReadResult, numbered_lines
from kner.data.readers.bio import Tag, split_tag
from kner.data.readers.markup import add_marked
from kner.errors import DataError

LABELS = ("PS", "LC", "OG", "DT", "TI")


def read(path: Path, check_bio: bool = True) -> ReadResult:
    res = ReadResult(scheme="klp2016", files=1)
    lines = list(numbered_lines(path))
    i, k = 0, 0
    while i < len(lines):
        lineno, line = lines[i]
        if not line.strip():
            i += 1
            continue
        if not line.startswith(";"):
            raise DataError("expected a sentence header '; raw text'", path, lineno)
        if i + 1 >= len(lines) or not lines[i + 1][1].startswith("$"):
            raise DataError(
                "the '; raw text' line must be followed by a '$text with <span:TAG> markup' line", path, lineno
            )
        raw = line[2:] if line.startswith("; ") else line[1:]
        markup = lines[i + 1][1][1:]
        j = i + 2
        morphs = []
        while j < len(lines) and lines[j][1].strip():
            mlineno, mline = lines[j]
            cols = mline.split("\t")
            if len(cols) != 4:
                raise DataError(
                    f"expected 4 tab-separated columns (eojeol index, morpheme, POS, tag), got {len(cols)}",
                    path,
                    mlineno,
                )
            tag = Tag("I", None) if cols[3].strip() == "I" else split_tag(cols[3], sep="_")
            if tag is None or (tag.label is not None and tag.label not in LABELS):
                raise DataError(f"unknown tag {cols[3]!r} (expected B_TAG, I or O)", path, mlineno)
            morphs.append((mlineno, cols[1], tag))
            j += 1
        k += 1
        _sentence(path, lineno, k, raw, markup, morphs if check_bio else None, res)
        i = j
    return res


def _sentence(
    path: Path, lineno: int, k: int, raw: str, markup: str, morphs: list[tuple[int, str, Tag]] | None, res: ReadResult
) -> None:
    at = {"sentence": lineno + 1, "raw": lineno, "markup": lineno + 1}
    meta = {"doc": path.name, "source": f"{path.name}:{lineno}"}
    add_marked(res, path, f"{path.name}:{k}", at, markup, LABELS, meta, raw=raw, tokens=morphs, unit="lemmas")
