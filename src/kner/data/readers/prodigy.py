"""Prodigy / spaCy-style JSONL: ``{"text": ..., "spans": [{"start", "end", "label"}], "answer": ...}``.

This is what ``prodigy db-out`` writes for ``ner.manual`` / ``ner.correct``
datasets (extra keys such as ``tokens``, ``_input_hash``, ``meta`` are
allowed; ``token_start``/``token_end`` are ignored, the character offsets are
the truth). ``answer: accept`` tasks are read; ``reject`` and ``ignore``
tasks are left out and counted (not problems: the annotator chose that); a
task without ``answer`` is read as accepted and counted; any other answer is
a problem and the task is skipped. Offsets are Python character offsets.
The example id is ``meta.id``, else ``id``, else ``file:line``; the
document is ``meta.doc`` (or ``doc``), else the example's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kner.data.example import Example
from kner.data.readers.annotation import SpanChecker, jsonl_records
from kner.data.readers.base import ReadResult, build_entities


def read(path: Path) -> ReadResult:
    res = ReadResult(scheme=None, files=1)
    checker = SpanChecker(path, res, "chars")
    for lineno, d in jsonl_records(path):
        meta: dict[str, Any] = d["meta"] if isinstance(d, dict) and isinstance(d.get("meta"), dict) else {}
        own = meta.get("id", d.get("id")) if isinstance(d, dict) else None
        sid = str(own) if own is not None else f"{path.name}:{lineno}"

        def skip(kind: str, reason: str) -> None:
            checker.problem(lineno, sid, kind, reason + "; task skipped")
            res.skipped += 1

        if not isinstance(d, dict):
            skip("not-an-object", "expected a JSON object")
            continue
        answer = d.get("answer")
        if answer in ("reject", "ignore"):
            res.notes[f"tasks answered '{answer}' left out"] += 1
            continue
        if answer is None:
            res.notes["tasks without 'answer' read as accepted"] += 1
        elif answer != "accept":
            skip("unknown-answer", f"answer {answer!r} is not accept, reject or ignore")
            continue
        text = d.get("text")
        if not isinstance(text, str):
            skip("no-text", "no string field 'text'")
            continue
        items = d.get("spans") or []
        if not isinstance(items, list) or not all(isinstance(sp, dict) for sp in items):
            skip("bad-spans", "field 'spans' must be a list of {start, end, label} objects")
            continue
        raw = [(sp.get("start"), sp.get("end"), sp.get("label"), sp.get("text")) for sp in items]
        spans = checker.spans(text, raw, lineno, sid)
        ents, notes = build_entities(text, spans)
        for kind, msg in notes:
            checker.problem(lineno, sid, kind, msg)
        doc = meta.get("doc", d.get("doc"))
        res.examples.append(
            Example(
                sid,
                text,
                ents,
                {
                    "doc": str(doc) if doc is not None else (f"{path.name}:{own}" if own is not None else sid),
                    "source": f"{path.name}:{lineno}",
                },
            )
        )
    return res
