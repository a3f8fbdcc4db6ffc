"""The canonical example: text plus character-offset entity spans.

Every reader produces ``Example`` objects and every model consumes and emits
them, so offsets here are the single source of truth. ``end`` is exclusive,
Python-slice style: ``text[start:end] == entity.text``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kner.errors import DataError
from kner.textio import atomic_write, json_line, numbered_lines


@dataclass(frozen=True, order=True)
class Entity:
    start: int
    end: int
    label: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "label": self.label, "text": self.text}

    @property
    def span(self) -> tuple[int, int]:
        return (self.start, self.end)


@dataclass
class Example:
    id: str
    text: str
    entities: list[Entity] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "text": self.text, "entities": [e.to_dict() for e in self.entities]}
        if self.meta:
            d["meta"] = self.meta
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str | Path | None = None, line: int | None = None) -> Example:
        if not isinstance(d, dict):
            raise DataError("expected a JSON object", path, line)
        for key in ("text",):
            if key not in d:
                raise DataError(f"missing field {key!r}", path, line)
        if not isinstance(d["text"], str):
            raise DataError("field 'text' must be a string", path, line)
        ents = []
        for i, e in enumerate(d.get("entities") or []):
            try:
                start, end, label = int(e["start"]), int(e["end"]), str(e["label"])
            except (KeyError, TypeError, ValueError):
                raise DataError(f"entity {i} needs integer 'start', 'end' and a 'label'", path, line) from None
            text = e.get("text")
            if text is None:
                text = d["text"][start:end]
            ents.append(Entity(start, end, label, str(text)))
        ex = cls(
            id=str(d.get("id", line if line is not None else "")),
            text=d["text"],
            entities=sorted(ents),
            meta=dict(d.get("meta") or {}),
        )
        return ex


def strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    """``[start, end)`` without the whitespace at its ends (canonical entities never start or
    end on a space); ``start == end`` when the span held only whitespace."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def validate(
    example: Example, path: str | Path | None = None, line: int | None = None, allow_overlaps: bool = True
) -> list[str]:
    """Check offsets and surface strings; return warnings (overlaps), raise on errors.

    Overlapping (nested) spans are legal in some corpora, so they are reported,
    not rejected, unless ``allow_overlaps`` is false.
    """
    n = len(example.text)
    seen: set[tuple[int, int, str]] = set()
    spans: set[tuple[int, int]] = set()
    warnings: list[str] = []
    for e in example.entities:
        if not (0 <= e.start < e.end <= n):
            raise DataError(f"entity {e.label} [{e.start},{e.end}) is outside the text (length {n})", path, line)
        if example.text[e.start : e.end] != e.text:
            raise DataError(
                f"entity text {e.text!r} does not match text[{e.start}:{e.end}] = {example.text[e.start : e.end]!r}",
                path,
                line,
            )
        key = (e.start, e.end, e.label)
        if key in seen:
            raise DataError(f"duplicate entity {e.label} [{e.start},{e.end}) {e.text!r}", path, line)
        if e.span in spans:
            raise DataError(f"span [{e.start},{e.end}) {e.text!r} has two labels", path, line)
        seen.add(key)
        spans.add(e.span)
    ordered = sorted(example.entities)
    for a, b in zip(ordered, ordered[1:]):
        if b.start < a.end:
            msg = (
                f"overlapping entities {a.label}:{a.text!r} [{a.start},{a.end}) "
                f"and {b.label}:{b.text!r} [{b.start},{b.end})"
            )
            if not allow_overlaps:
                raise DataError(msg, path, line)
            warnings.append(msg)
    return warnings


def numbered_jsonl(path: str | Path, validate_examples: bool = True) -> Iterator[tuple[int, Example]]:
    """(line number, example) for canonical JSONL, read through :func:`kner.textio.numbered_lines` (the
    user's encoding, BOM and CRLF tolerated); blank lines are skipped, anything else that is not an
    example is a ``DataError``."""
    for lineno, raw in numbered_lines(path):
        if not raw.strip():
            continue
        try:
            d = json.loads(raw)
        except json.JSONDecodeError as err:
            raise DataError(f"invalid JSON: {err.msg} (column {err.colno})", path, lineno) from None
        ex = Example.from_dict(d, path, lineno)
        if validate_examples:
            validate(ex, path, lineno)
        yield lineno, ex


def iter_jsonl(path: str | Path, validate_examples: bool = True) -> Iterator[Example]:
    for _, ex in numbered_jsonl(path, validate_examples):
        yield ex


def read_jsonl(path: str | Path, validate_examples: bool = True) -> list[Example]:
    return list(iter_jsonl(path, validate_examples))


def write_jsonl(path: str | Path, examples: Iterable[Example], what: str = "output") -> int:
    """Canonical JSONL, written atomically (:func:`kner.textio.atomic_write`): an interrupted or failed
    write leaves the old file (or none) and no temporary file."""
    n = 0
    with atomic_write(path, what=what) as f:
        for ex in examples:
            f.write(json_line(ex.to_dict()) + "\n")
            n += 1
    return n
