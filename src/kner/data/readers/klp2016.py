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

import unicodedata
from functools import lru_cache
from pathlib import Path

from kner.errors import DataError
from kner.data.example import Example
from kner.data.readers.base import Problem, ReadResult, build_entities, numbered_lines
from kner.data.readers.bio import Tag, decode, split_tag
from kner.data.readers.markup import MarkupError, parse_markup, trim_spans

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
            raise DataError("the '; raw text' line must be followed by a '$text with <span:TAG> markup' line", path, lineno)
        raw = line[2:] if line.startswith("; ") else line[1:]
        markup = lines[i + 1][1][1:]
        j = i + 2
        morphs = []
        while j < len(lines) and lines[j][1].strip():
            mlineno, mline = lines[j]
            cols = mline.split("\t")
            if len(cols) != 4:
                raise DataError(f"expected 4 tab-separated columns (eojeol index, morpheme, POS, tag), got {len(cols)}",
                                path, mlineno)
            tag = Tag("I", None) if cols[3].strip() == "I" else split_tag(cols[3], sep="_")
            if tag is None or (tag.label is not None and tag.label not in LABELS):
                raise DataError(f"unknown tag {cols[3]!r} (expected B_TAG, I or O)", path, mlineno)
            morphs.append((mlineno, cols[1], tag))
            j += 1
        k += 1
        _sentence(path, lineno, k, raw, markup, morphs if check_bio else None, res)
        i = j
    return res


def _sentence(path: Path, lineno: int, k: int, raw: str, markup: str, morphs, res: ReadResult) -> None:
    sid = f"{path.name}:{k}"

    def problem(kind: str, reason: str, line: int = lineno + 1) -> None:
        res.problems.append(Problem(str(path), line, sid, reason, kind))

    try:
        mk = parse_markup(markup, LABELS)
    except MarkupError as err:
        problem("unparseable", f"markup not converted: {err}")
        res.skipped += 1
        return
    for kind, msg in mk.notes:
        problem(kind, msg)
    spans, notes = trim_spans(mk.text, mk.spans)
    for kind, msg in notes:
        problem(kind, msg)
    if mk.text != raw:
        problem("raw-mismatch", "markup without tags differs from the raw line (markup kept)", lineno)
    if morphs is not None:
        tok_spans, repairs = decode([t for _, _, t in morphs])
        for idx, msg in repairs:
            problem("i-without-b", msg, morphs[idx][0])
        bio = [(lab, "".join(m[1] for m in morphs[a:b])) for a, b, lab in tok_spans]
        gold = [(lab, mk.text[s:e]) for s, e, lab in spans]
        if [(lab, _key(x)) for lab, x in bio] != [(lab, _key(x)) for lab, x in gold]:
            shown = lambda xs: ", ".join(f"{lab} {x!r}" for lab, x in xs) or "none"
            problem("bio-mismatch", f"BIO column disagrees with markup (markup kept): markup {shown(gold)}; BIO {shown(bio)}")
    ents, notes = build_entities(mk.text, spans)
    for kind, msg in notes:
        problem(kind, msg)
    res.examples.append(Example(sid, mk.text, ents, {"doc": path.name, "source": f"{path.name}:{lineno}"}))


def _key(s: str) -> str:
    """Comparable form of a surface or of lemmatised morphemes: no spaces, jamo decomposed, finals as initials."""
    return "".join(_fold(c) for c in unicodedata.normalize("NFKD", "".join(s.split())))


@lru_cache(maxsize=None)
def _fold(c: str) -> str:
    # '지난' decomposes to ...ᆫ (final), the lemma '지나'+'ㄴ' to ...ᄂ (initial): make them equal.
    name = unicodedata.name(c, "")
    if name.startswith("HANGUL JONGSEONG "):
        try:
            return unicodedata.lookup(name.replace("JONGSEONG", "CHOSEONG"))
        except KeyError:
            return c
    return c
