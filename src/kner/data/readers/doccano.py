"""doccano sequence-labeling exports (JSONL, one example a line).

Both forms doccano writes are read::

    {"id": 7, "text": "...", "label": [[0, 3, "PS"], ...], "Comments": []}
    {"id": 7, "text": "...", "entities": [{"id": 1, "label": "PS", "start_offset": 0, "end_offset": 3}],
     "relations": [...]}

(the second when the project uses relations; older versions also wrote
``labels`` or ``entities`` as ``[start, end, label]`` triples). Other keys are
the example's metadata. doccano's web front end counts offsets in UTF-16
code units (doccano issue #2290), which differ from Python's character
offsets only after a character outside the BMP (emoji): ``offsets="utf16"``
(the default) converts them, ``offsets="chars"`` takes them as they are.
Each example is its own document unless it has a ``doc`` field (kner's
writer puts one there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kner.data.example import Example
from kner.data.readers.annotation import SpanChecker, check_offsets_option, jsonl_records
from kner.data.readers.base import ReadResult, build_entities

_SPAN_KEYS = ("label", "labels", "entities")


def read(path: Path, offsets: str = "utf16") -> ReadResult:
    res = ReadResult(scheme=None, files=1)
    checker = SpanChecker(path, res, check_offsets_option(offsets))
    for lineno, d in jsonl_records(path):
        sid = str(d.get("id", lineno)) if isinstance(d, dict) else str(lineno)

        def skip(kind: str, reason: str) -> None:
            checker.problem(lineno, sid, kind, reason + "; example skipped")
            res.skipped += 1

        if not isinstance(d, dict):
            skip("not-an-object", "expected a JSON object")
            continue
        text = d.get("text", d.get("data"))
        if not isinstance(text, str):
            skip("no-text", "no string field 'text'")
            continue
        raw, bad = _raw_spans(d)
        if bad:
            skip("bad-spans", bad)
            continue
        spans = checker.spans(text, raw, lineno, sid)
        ents, notes = build_entities(text, spans)
        for kind, msg in notes:
            checker.problem(lineno, sid, kind, msg)
        doc = d.get("doc")
        meta = {"doc": str(doc) if doc is not None else f"{path.name}:{sid}", "source": f"{path.name}:{lineno}"}
        res.examples.append(Example(sid, text, ents, meta))
    return res


def _raw_spans(d: dict[str, Any]) -> tuple[list[Any], str | None]:
    keys = [k for k in _SPAN_KEYS if k in d and d[k] is not None]
    if not keys:
        return [], None  # an example nobody labelled has no span key in some versions
    if len(keys) > 1 and any(d[k] for k in keys[1:]) and d[keys[0]]:
        return [], f"spans under both {keys[0]!r} and {keys[1]!r}"
    key = next((k for k in keys if d[k]), keys[0])
    items = d[key]
    if not isinstance(items, list):
        return [], f"field {key!r} must be a list of spans"
    raw = []
    for i, it in enumerate(items):
        if isinstance(it, dict):
            raw.append((it.get("start_offset"), it.get("end_offset"), it.get("label"), it.get("text")))
        elif isinstance(it, (list, tuple)) and len(it) == 3:
            raw.append((it[0], it[1], it[2], None))
        else:
            return [], (
                f"{key}[{i}] is neither [start, end, label] nor {{start_offset, end_offset, label}}: " + repr(it)[:80]
            )
    return raw, None
