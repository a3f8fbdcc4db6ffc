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

from kner.errors import DataError
from kner.data.example import Example, strip_span
from kner.data.readers.base import Problem, ReadResult, build_entities, describe_spans, numbered_lines
from kner.data.readers.bio import decode, split_tag
from kner.data.readers.markup import MarkupError, parse_markup, trim_spans

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
            raise DataError("a sentence needs three header lines: '## N', '## raw text', '## text with <span:TAG> markup'",
                            path, lineno)
        raw, markup = _header(lines[i + 1][1]), _header(lines[i + 2][1])
        j = i + 3
        morphs: list[tuple[int, str, str]] = []   # (line, surface, tag)
        while j < len(lines) and lines[j][1].strip() and not lines[j][1].startswith("##"):
            mlineno, mline = lines[j]
            cols = mline.split("\t")
            if len(cols) != 4:
                raise DataError(f"expected 4 tab-separated columns (surface, lemma, POS, BIO), got {len(cols)}",
                                path, mlineno)
            surface = " " if cols[2] == "_" else cols[0]
            morphs.append((mlineno, surface, cols[3]))
            j += 1
        _sentence(path, lineno, m.group(1), raw, markup, morphs if check_bio else None, res)
        i = j
    return res


def _sentence(path: Path, lineno: int, num: str, raw: str, markup: str, morphs, res: ReadResult) -> None:
    sid = f"{path.stem}:{num}"

    def problem(kind: str, reason: str, line: int = lineno) -> None:
        res.problems.append(Problem(str(path), line, sid, reason, kind))

    try:
        mk = parse_markup(markup, LABELS)
    except MarkupError as err:
        problem("unparseable", f"markup not converted: {err}", lineno + 2)
        res.skipped += 1
        return
    text = mk.text
    for kind, msg in mk.notes:
        problem(kind, msg, lineno + 2)
    spans, notes = trim_spans(text, mk.spans)
    for kind, msg in notes:
        problem(kind, msg, lineno + 2)
    if text != raw:
        k = next((c for c, (a, b) in enumerate(zip(text, raw)) if a != b), min(len(text), len(raw)))
        problem("raw-mismatch", f"markup without tags differs from the raw line at column {k + 1}: "
                                f"{text[max(0, k - 10):k + 10]!r} vs {raw[max(0, k - 10):k + 10]!r} (markup kept)", lineno + 1)
    if morphs is not None:
        _check_bio(text, spans, morphs, problem, path)
    ents, notes = build_entities(text, spans)
    for kind, msg in notes:
        problem(kind, msg, lineno + 2)
    res.examples.append(Example(sid, text, ents, {"doc": path.stem, "source": f"{path.name}:{lineno}"}))


def _check_bio(text: str, spans, morphs, problem, path: Path) -> None:
    spelled = "".join(s for _, s, _ in morphs)
    shift = 0
    if spelled != text:
        if spelled.strip() != text.strip():
            problem("morphemes-mismatch", "morpheme lines do not spell the sentence; BIO not checked")
            return
        shift = (len(text) - len(text.lstrip())) - (len(spelled) - len(spelled.lstrip()))
    tags, offsets, pos = [], [], 0
    for mlineno, surface, tag in morphs:
        t = split_tag(tag)
        if t is None or (t.label is not None and t.label not in LABELS):
            raise DataError(f"unknown BIO tag {tag!r}", path, mlineno)
        tags.append(t)
        offsets.append((pos + shift, pos + shift + len(surface)))
        pos += len(surface)
    tok_spans, repairs = decode(tags)
    for k, msg in repairs:
        problem("i-without-b", msg, morphs[k][0])
    bio = set()
    for a, b, lab in tok_spans:
        s, e = strip_span(text, offsets[a][0], offsets[b - 1][1])
        if s < e:
            bio.add((s, e, lab))
    gold = set(spans)
    if bio != gold:
        problem("bio-mismatch", f"BIO lines disagree with markup (markup kept): markup {describe_spans(text, gold - bio)}; "
                                f"BIO {describe_spans(text, bio - gold)}")
