"""MultiCoNER Korean (SemEval 2022 v1, 2023 v2) CoNLL files.

Per sentence: ``# id <uuid><TAB>domain=ko``, then ``token _ _ TAG`` lines (BIO),
then a blank line. v1 has 6 coarse labels, v2 33 fine-grained ones; the label
sets are disjoint, so ``version=None`` detects the version from the tags
(a file with no entities at all reads as v2). The text is the tokens joined by
single spaces; MultiCoNER sentences are independent, so each is its own document.
"""

from __future__ import annotations

import re
from pathlib import Path

from kner.errors import ConfigError, DataError
from kner.example import Example
from kner.readers.base import Problem, ReadResult, build_entities, numbered_lines
from kner.readers.bio import decode, split_tag

V1 = ("PER", "LOC", "GRP", "CORP", "PROD", "CW")
V2 = ("Facility", "OtherLOC", "HumanSettlement", "Station",
      "VisualWork", "MusicalWork", "WrittenWork", "ArtWork", "Software",
      "MusicalGRP", "PublicCorp", "PrivateCorp", "AerospaceManufacturer", "SportsGRP", "CarManufacturer", "ORG",
      "Scientist", "Artist", "Athlete", "Politician", "Cleric", "SportsManager", "OtherPER",
      "Clothing", "Vehicle", "Food", "Drink", "OtherPROD",
      "Medication/Vaccine", "MedicalProcedure", "AnatomicalStructure", "Symptom", "Disease")
_ID = re.compile(r"^#\s+id\s+(\S+)(.*)$")


def read(path: Path, version: int | str | None = None) -> ReadResult:
    version = _version(version)
    raw: list[tuple[int, str | None, str, list]] = []   # (line, id, domain, [(line, token, tag)])
    cur = None
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
        cols = line.split()
        if len(cols) != 4:
            raise DataError(f"expected 'token _ _ TAG' (4 columns), got {len(cols)}", path, lineno)
        if cur is None:   # a sentence without an id line
            cur = (lineno, None, "", [])
            raw.append(cur)
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
        sid = sid or f"{path.name}:{k}"
        if not toks:
            res.problems.append(Problem(str(path), lineno, sid, "sentence without tokens; not converted", "empty-sentence"))
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
    return res


def _version(v) -> int | None:
    if v in (None, "", "auto"):
        return None
    if str(v) in ("1", "v1"):
        return 1
    if str(v) in ("2", "v2"):
        return 2
    raise ConfigError(f"MultiCoNER version must be 1, 2 or auto, not {v!r}")
