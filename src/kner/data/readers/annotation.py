"""What the annotation-tool readers (doccano, Label Studio, Prodigy) share.

The tools store character offsets into a ``text`` field, but not all count
characters the way Python does: doccano's and (older) Label Studio's web
front ends count UTF-16 code units, so after an emoji or another character
outside the Basic Multilingual Plane every offset is one too large per such
character. ``SpanChecker`` turns a tool's raw spans into clean
``(start, end, label)`` tuples, converting UTF-16 offsets where asked (or,
given the span's own text, where that is what makes the span match) and
writing a ``Problem`` row for everything it repairs or rejects.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from kner.data.example import strip_span
from kner.data.readers.base import Problem, ReadResult
from kner.errors import ConfigError, DataError
from kner.textio import numbered_lines

OFFSET_UNITS = ("chars", "utf16")


def has_astral(text: str) -> bool:
    return any(ord(c) > 0xFFFF for c in text)


def utf16_to_chars(text: str) -> list[int]:
    """``m[u]`` = index in ``text`` of UTF-16 code unit ``u`` (length: code units + 1)."""
    m: list[int] = []
    for i, c in enumerate(text):
        m.append(i)
        if ord(c) > 0xFFFF:
            m.append(i)  # the low surrogate: an offset pointing between the two is rounded down
    m.append(len(text))
    return m


def chars_to_utf16(text: str) -> list[int]:
    """``m[i]`` = UTF-16 code unit offset of character ``i`` (length: characters + 1)."""
    m, u = [], 0
    for c in text:
        m.append(u)
        u += 2 if ord(c) > 0xFFFF else 1
    m.append(u)
    return m


def check_offsets_option(offsets: str) -> str:
    if offsets not in OFFSET_UNITS:
        raise ConfigError(f"offsets must be one of {', '.join(OFFSET_UNITS)}, not {offsets!r}")
    return offsets


@dataclass
class SpanChecker:
    """Validates the spans of one file; problems and counts go to ``res``."""

    path: Path
    res: ReadResult
    offsets: str = "chars"  # unit of the offsets when a span has no text of its own to check against

    def problem(self, line: int | None, sid: str, kind: str, reason: str) -> None:
        self.res.problems.append(Problem(str(self.path), line, sid, reason, kind))

    def spans(
        self, text: str, raw: Sequence[tuple[object, object, object, object]], line: int | None, sid: str
    ) -> list[tuple[int, int, str]]:
        """``raw``: (start, end, label, span text or None) as found in the file."""
        u2c = utf16_to_chars(text) if has_astral(text) else None
        if u2c is not None and self.offsets == "utf16":
            self.res.notes["texts with characters outside the BMP (offsets read as UTF-16 code units)"] += 1
        out: list[tuple[int, int, str]] = []
        for k, (s, e, lab, stext) in enumerate(raw):
            where = f"span {k + 1}"
            if not isinstance(lab, str) or not lab.strip():
                self.problem(line, sid, "bad-span", f"{where}: no label ({lab!r}); span left out")
                continue
            if isinstance(s, bool) or isinstance(e, bool) or not isinstance(s, int) or not isinstance(e, int):
                self.problem(
                    line, sid, "bad-span", f"{where} {lab}: start/end must be integers, got {s!r}, {e!r}; span left out"
                )
                continue
            if stext is not None and not isinstance(stext, str):
                stext = None
            s, e = self._unit(text, u2c, s, e, stext, line, sid, where, lab)
            if not (0 <= s < e <= len(text)):
                self.problem(
                    line,
                    sid,
                    "offset-out-of-range",
                    f"{where} {lab} [{s},{e}) is outside the text (length {len(text)}); span left out",
                )
                continue
            if stext is not None and text[s:e].strip() != stext.strip():
                self.problem(
                    line,
                    sid,
                    "span-text-mismatch",
                    f"{where} {lab} [{s},{e}) is {text[s:e]!r} in the text but {stext!r} in the span; offsets kept",
                )
            s2, e2 = strip_span(text, s, e)
            if s2 == e2:
                self.problem(line, sid, "empty-entity", f"{where} {lab} [{s},{e}) is only whitespace; span left out")
                continue
            if (s2, e2) != (s, e):
                self.problem(line, sid, "whitespace-trimmed", f"{lab} entity {text[s:e]!r} trimmed to {text[s2:e2]!r}")
            out.append((s2, e2, lab.strip()))
        ordered = sorted(set(out))
        for a, b in zip(ordered, ordered[1:]):
            if b[0] < a[1] and (a[0], a[1]) != (b[0], b[1]):
                self.problem(
                    line,
                    sid,
                    "overlap",
                    f"{a[2]} {text[a[0] : a[1]]!r} [{a[0]},{a[1]}) overlaps "
                    f"{b[2]} {text[b[0] : b[1]]!r} [{b[0]},{b[1]}); both kept",
                )
        return out

    def _unit(
        self,
        text: str,
        u2c: list[int] | None,
        s: int,
        e: int,
        stext: str | None,
        line: int | None,
        sid: str,
        where: str,
        lab: str,
    ) -> tuple[int, int]:
        if u2c is None:
            return s, e
        if stext is None:
            if self.offsets == "utf16" and 0 <= s <= e < len(u2c):
                return u2c[s], u2c[e]
            return s, e
        # The span carries its own text: take whichever reading makes it match.
        if 0 <= s < e <= len(text) and text[s:e].strip() == stext.strip():
            return s, e
        if 0 <= s <= e < len(u2c) and text[u2c[s] : u2c[e]].strip() == stext.strip():
            self.res.notes["spans with UTF-16 offsets converted to characters"] += 1
            return u2c[s], u2c[e]
        return s, e


def json_array_items(path: Path, text: str) -> Iterator[tuple[int, int, object]]:
    """(index from 1, line where the item starts, item) for a JSON array file, so that problems
    can name the line of each task even in a file of several megabytes."""
    dec = json.JSONDecoder()
    newlines = [i for i, c in enumerate(text) if c == "\n"]

    def line_of(pos: int) -> int:
        return bisect.bisect_right(newlines, pos - 1) + 1

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    def fail(msg: str, pos: int) -> NoReturn:
        raise DataError(msg, path, line_of(pos))

    pos = skip(0)
    if pos >= len(text) or text[pos] != "[":
        fail("expected a JSON array of tasks ('[' ...)", pos)
    pos = skip(pos + 1)
    if pos < len(text) and text[pos] == "]":
        return
    k = 0
    while True:
        try:
            item, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataError(f"invalid JSON: {err.msg} (column {err.colno})", path, err.lineno) from None
        k += 1
        yield k, line_of(pos), item
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            if skip(pos + 1) < len(text):
                fail("text after the end of the JSON array", skip(pos + 1))
            return
        fail("expected ',' or ']' after a task", pos)


def jsonl_records(path: Path) -> Iterator[tuple[int, object]]:
    """(line, parsed JSON) for every non-blank line of a JSONL file."""
    for lineno, line in numbered_lines(path):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"invalid JSON: {err.msg} (column {err.colno})", path, lineno) from None
