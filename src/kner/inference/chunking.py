"""Split long documents into pieces the model can take, keeping every character.

A piece is an exact slice of the document plus its offset, so an entity found
at ``[s, e)`` in a piece is at ``[offset + s, offset + e)`` in the document.
Pieces are cut, in order of preference, after sentence ends (``. ? ! 。`` and
their full-width forms, or a line break), then at spaces, then anywhere; every
non-space character of the document lands in exactly one piece (tested).
Entities that would cross a cut are lost, which is why sentence ends come first.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from kner.data.example import strip_span

_SENT_END = re.compile(r"(?<=[.?!。？！…])[\"'”’)\]]*\s+|\n+")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Piece:
    offset: int
    text: str


def _spans(text: str, pattern: re.Pattern[str], start: int, end: int) -> list[tuple[int, int]]:
    """Cut ``text[start:end]`` after each match of ``pattern``; spans cover it all."""
    out, cur = [], start
    for m in pattern.finditer(text, start, end):
        if m.end() > cur and m.end() < end:
            out.append((cur, m.end()))
            cur = m.end()
    out.append((cur, end))
    return [s for s in out if s[1] > s[0]]


def split_document(text: str, count_tokens: Callable[[str], int], max_tokens: int) -> list[Piece]:
    """Pieces of ``text`` each at most ``max_tokens`` tokens (as ``count_tokens`` counts them)."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    if count_tokens(text) <= max_tokens:
        return [Piece(0, text)]
    units = _refine(text, [(0, len(text))], count_tokens, max_tokens)
    pieces: list[Piece] = []
    cur: tuple[int, int] | None = None
    for s, e in units:  # pack neighbouring units while they fit
        if cur is not None and count_tokens(text[cur[0] : e]) <= max_tokens:
            cur = (cur[0], e)
        else:
            if cur is not None:
                pieces.append(_piece(text, *cur))
            cur = (s, e)
    if cur is not None:
        pieces.append(_piece(text, *cur))
    return [p for p in pieces if p.text]


def _refine(
    text: str, spans: list[tuple[int, int]], count_tokens: Callable[[str], int], max_tokens: int, level: int = 0
) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in spans:
        if count_tokens(text[s:e]) <= max_tokens:
            out.append((s, e))
        elif level == 0:
            out.extend(_refine(text, _spans(text, _SENT_END, s, e), count_tokens, max_tokens, 1))
        elif level == 1:
            out.extend(_refine(text, _spans(text, _SPACE, s, e), count_tokens, max_tokens, 2))
        else:
            out.extend(_by_chars(text, s, e, count_tokens, max_tokens))
    return out


def _by_chars(text: str, s: int, e: int, count_tokens: Callable[[str], int], max_tokens: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    while s < e:
        lo, hi = s + 1, e
        while lo < hi:  # longest prefix that fits
            mid = (lo + hi + 1) // 2
            if count_tokens(text[s:mid]) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        out.append((s, lo))
        s = lo
    return out


def _piece(text: str, s: int, e: int) -> Piece:
    # Whitespace at a cut belongs to no entity; trimming it keeps prompts clean.
    s, e = strip_span(text, s, e)
    return Piece(s, text[s:e])
