"""Token tags (BIO, BIOES/BILOU) -> spans over token indices.

Repair rule, the conlleval convention: an ``I-X`` (or ``E-X``) that does not
continue an open ``X`` entity starts a new one. Each such repair is returned so
the reader can count and report it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_PREFIX = {"B": "B", "I": "I", "E": "E", "S": "S", "L": "E", "U": "S", "M": "I"}


@dataclass(frozen=True)
class Tag:
    prefix: str  # 'B' 'I' 'E' 'S' or 'O'
    label: str | None  # None for 'O' (and for 2016klp's bare 'I')


OUTSIDE = Tag("O", None)


def split_tag(tag: str, sep: str = "-", label_first: bool = False) -> Tag | None:
    """``B-PER`` (or ``PER_B`` with ``sep='_', label_first=True``) -> Tag; None if not a tag."""
    tag = tag.strip()
    if tag in ("O", "-"):
        return OUTSIDE
    if sep not in tag:
        return None
    if label_first:
        label, _, prefix = tag.rpartition(sep)
    else:
        prefix, _, label = tag.partition(sep)
    bio = _PREFIX.get(prefix.upper())
    if bio is None or not label:
        return None
    return Tag(bio, label)


def decode(tags: list[Tag]) -> tuple[list[tuple[int, int, str]], list[tuple[int, str]]]:
    """Spans ``(first_token, last_token + 1, label)`` and repairs ``(token_index, message)``."""
    spans: list[tuple[int, int, str]] = []
    repairs: list[tuple[int, str]] = []
    cur: list[Any] | None = None  # [start, end, label]

    def close() -> None:
        nonlocal cur
        if cur is not None:
            spans.append((cur[0], cur[1], cur[2]))
            cur = None

    for i, t in enumerate(tags):
        p, lab = t.prefix, t.label
        if p == "O":
            close()
        elif p in ("B", "S"):
            close()
            cur = [i, i + 1, lab]
            if p == "S":
                close()
        else:  # I or E
            if cur is not None and (lab is None or cur[2] == lab):
                cur[1] = i + 1
            elif lab is None:
                repairs.append((i, "I tag with no entity open; token left outside"))
                continue
            else:
                what = f"{p}-{lab}" + (f" after {cur[2]}" if cur is not None else "")
                repairs.append((i, f"{what} without B-{lab}; started a new {lab} entity"))
                close()
                cur = [i, i + 1, lab]
            if p == "E":
                close()
    close()
    return spans, repairs
