"""MultiCoNER CoNLL files: SemEval 2022 Task 11 (v1) and SemEval 2023 Task 2 (MultiCoNER II, v2).

v1 has 11 languages, Korean (``KO-Korean/ko_{train,dev,test}.conll``) among
them; MultiCoNER II has 12 and no Korean, so for Korean it is v1 (the v2 reader
serves the other languages' files).

Per sentence: a header ``# id <uuid><TAB>domain=<value>`` (the value is the
language in v1 files, ``ko``; ``train``/``dev``/... in others; test files may
have no ``domain=`` at all), then one ``token _ _ TAG`` line per token (BIO),
then one or more blank lines. Tokens may be punctuation, ``#`` or ``_``
themselves; a token line is told from a header by the ``# id`` start. Blind
test files have three columns, ``token _ _``, and no tags: every file is one
or the other, and a blind file reads as texts without entities.

v1 has 6 coarse labels, v2 33 fine-grained ones; the label sets are disjoint,
so ``version=None`` detects the version from the tags (a file with no entities
at all reads as v2). The text is the tokens joined by single spaces;
MultiCoNER sentences are independent, so each is its own document.

The ``domain=`` value is kept in ``meta["domain"]``. Ids are meant to be unique
but released files repeat some (MultiCoNER II files hundreds): a repeated id is
a ``duplicate-id`` problem and gets a suffix (``<uuid>-2``, ``-3``, ...) in
``read_dataset`` (as for every format), so the output pairs gold with predictions.
"""

from __future__ import annotations

import re
from pathlib import Path

from kner.data.example import Example
from kner.data.readers.base import Problem, ReadResult, build_entities, numbered_lines
from kner.data.readers.bio import OUTSIDE, Tag, decode, split_tag
from kner.errors import ConfigError, DataError

V1 = ("PER", "LOC", "GRP", "CORP", "PROD", "CW")
V2 = (
    "Facility",
    "OtherLOC",
    "HumanSettlement",
    "Station",
    "VisualWork",
    "MusicalWork",
    "WrittenWork",
    "ArtWork",
    "Software",
    "MusicalGRP",
    "PublicCorp",
    "PrivateCorp",
    "AerospaceManufacturer",
    "SportsGRP",
    "CarManufacturer",
    "ORG",
    "Scientist",
    "Artist",
    "Athlete",
    "Politician",
    "Cleric",
    "SportsManager",
    "OtherPER",
    "Clothing",
    "Vehicle",
    "Food",
    "Drink",
    "OtherPROD",
    "Medication/Vaccine",
    "MedicalProcedure",
    "AnatomicalStructure",
    "Symptom",
    "Disease",
)
_ID = re.compile(r"^#\s+id\s+(\S+)(.*)$")
_COLS = re.compile(r"[ \t]+")  # not str.split(): a token may hold a no-break or ideographic space


def read(path: Path, version: int | str | None = None) -> ReadResult:
    version = _version(version)
    raw: list[tuple[int, str | None, str, list[tuple[int, str, Tag]]]] = []  # (line, id, domain, [(line, token, tag)])
    cur: tuple[int, str | None, str, list[tuple[int, str, Tag]]] | None = None
    width = None  # 4 (token _ _ TAG) or 3 (blind test file: token _ _), from the first token line
    for lineno, line in numbered_lines(path):
        if not line.strip():
            cur = None
            continue
        m = _ID.match(line)
        if m:
            dom = re.search(r"domain=(\S+)", m.group(2))
            cur = (lineno, m.group(1), dom.group(1) if dom else "", [])
            raw.append(cur)
            continue
        cols = _COLS.split(line.strip(" \t"))
        if width is None and len(cols) in (3, 4):
            width = len(cols)
        if len(cols) != width:
            want = "'token _ _' (3 columns, a blind test file)" if width == 3 else "'token _ _ TAG' (4 columns)"
            raise DataError(f"expected {want}, got {len(cols)} columns", path, lineno)
        if cur is None:  # a sentence without an id line
            cur = (lineno, None, "", [])
            raw.append(cur)
        tag: Tag | None
        if width == 3:
            tag = OUTSIDE
        else:
            tag = split_tag(cols[3])
            if tag is None:
                raise DataError(f"not a BIO tag: {cols[3]!r}", path, lineno)
        cur[3].append((lineno, cols[0], tag))
    labels = {t.label for s in raw for _, _, t in s[3] if t.label}
    if version is None:
        version = 1 if labels and labels <= set(V1) else 2
    allowed = set(V1 if version == 1 else V2)
    res = ReadResult(scheme=f"multiconer_v{version}", files=1)
    for k, (lineno, sid, domain, toks) in enumerate(raw, 1):
        for tl, _, t in toks:
            if t.label and t.label not in allowed:
                raise DataError(f"label {t.label!r} is not a MultiCoNER v{version} label", path, tl)
        sid = sid or f"{path.name}:{k}"  # repeated ids are made unique by read_dataset
        if not toks:
            res.problems.append(
                Problem(str(path), lineno, sid, "sentence without tokens; not converted", "empty-sentence")
            )
            res.skipped += 1
            continue
        words = [w for _, w, _ in toks]
        starts, pos = [], 0
        for w in words:
            starts.append(pos)
            pos += len(w) + 1
        tok_spans, repairs = decode([t for _, _, t in toks])
        for idx, msg in repairs:
            res.problems.append(Problem(str(path), toks[idx][0], sid, msg, "i-without-b"))
        text = " ".join(words)
        spans = [(starts[a], starts[b - 1] + len(words[b - 1]), lab) for a, b, lab in tok_spans]
        ents, notes = build_entities(text, spans)
        for kind, msg in notes:
            res.problems.append(Problem(str(path), lineno, sid, msg, kind))
        meta = {"doc": sid, "source": f"{path.name}:{lineno}"}
        if domain:
            meta["domain"] = domain
        res.examples.append(Example(sid, text, ents, meta))
    if width == 3:
        res.notes["sentences from a blind test file (no tags; read as texts without entities)"] += len(res.examples)
    return res


def _version(v: int | str | None) -> int | None:
    if v in (None, "", "auto"):
        return None
    if str(v) in ("1", "v1"):
        return 1
    if str(v) in ("2", "v2"):
        return 2
    raise ConfigError(f"MultiCoNER version must be 1, 2 or auto, not {v!r}")
