"""Inline ``<entity text:TAG>`` markup (KMOU, 2016klp, KLUE) -> text and character spans.

The corpora also contain ``<`` and ``>`` as ordinary text (``영화 <<트럼보:POH>>``,
``<<2>:NOH>``, ``[...]<7><KT:ORG>``, ``->``) and colons inside entities
(``<12:30:TIM>``), so the markup is not a regular language. Rules:

* a closer is ``:LABEL>`` with LABEL one of the scheme's labels; any other
  ``:`` is text. A closer whose label is a known label with stray punctuation
  (KLUE's ``<일:;LC>``) is read as that label and reported;
* every ``<`` may open a tag; a closer takes the innermost open one, so nested
  tags (``<<서울:LOC> 시청:ORG>``) give nested spans;
* a ``>`` that is not part of a closer is text and, if a ``<`` is open,
  pairs with it as literal brackets (so ``<<2>:NOH>`` is the entity ``<2>``);
  if a closer later finds nothing open, the most recent such pairing is undone
  (``<A->B:ORG>`` is the entity ``A->B``);
* a ``<`` still open at the end is text.

A closer with no ``<`` at all cannot be read: ``MarkupError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Collection

from kner.data.example import strip_span

_CLOSER = re.compile(r":([^\s<>:]{1,32})>")


class MarkupError(ValueError):
    pass


@dataclass
class Markup:
    text: str
    spans: list[tuple[int, int, str]]
    notes: list[tuple[str, str]] = field(default_factory=list)  # (kind, message)


def parse_markup(markup: str, labels: Collection[str]) -> Markup:
    labels = set(labels)
    pieces: list[str] = []          # output text, one piece per input character ('' for tag syntax)
    opened: list[int] = []          # indices into pieces of '<' that may still open a tag
    paired: list[int] = []          # '<' taken as literal by a later '>', most recent last
    spans: list[tuple[int, int, str]] = []   # (piece index of the '<', piece index after the text, label)
    notes: list[tuple[str, str]] = []
    i, n = 0, len(markup)
    while i < n:
        ch = markup[i]
        if ch == ":":
            m = _CLOSER.match(markup, i)
            label = _label(m.group(1), labels) if m else None
            if label is not None:
                if m.group(1) != label:
                    notes.append(("malformed-tag", f"tag '{m.group(0)}' read as {label}"))
                if opened:
                    k = opened.pop()
                elif paired:
                    k = paired.pop()
                else:
                    raise MarkupError(f"'{m.group(0)}' at column {i + 1} has no opening '<'")
                pieces[k] = ""
                spans.append((k, len(pieces), label))
                i = m.end()
                continue
            if m and re.fullmatch(r"[A-Z_]{2,}", m.group(1)):
                notes.append(("unknown-label", f"'{m.group(0)}' looks like a tag but {m.group(1)} is not a label; kept as text"))
        elif ch == "<":
            opened.append(len(pieces))
        elif ch == ">" and opened:
            paired.append(opened.pop())
        pieces.append(ch)
        i += 1
    # Piece index -> character offset: tag syntax contributes no characters.
    offsets = [0] * (len(pieces) + 1)
    for k, p in enumerate(pieces):
        offsets[k + 1] = offsets[k] + len(p)
    text = "".join(pieces)
    out = [(offsets[a], offsets[b], lab) for a, b, lab in spans]
    return Markup(text, sorted(out), notes)


def _label(raw: str, labels: set[str]) -> str | None:
    if raw in labels:
        return raw
    cleaned = re.sub(r"[^A-Za-z0-9_]", "", raw)
    return cleaned if cleaned and cleaned != raw and cleaned in labels else None


def trim_spans(text: str, spans: list[tuple[int, int, str]]) -> tuple[list[tuple[int, int, str]], list[tuple[str, str]]]:
    """Strip spaces from span ends (``<중국 :ORG>``); empty spans are dropped. Both are reported."""
    out, notes = [], []
    for s, e, lab in spans:
        s2, e2 = strip_span(text, s, e)
        if s2 == e2:
            notes.append(("empty-entity", f"empty {lab} entity at [{s},{e}) dropped"))
            continue
        if (s2, e2) != (s, e):
            notes.append(("whitespace-trimmed", f"{lab} entity {text[s:e]!r} trimmed to {text[s2:e2]!r}"))
        out.append((s2, e2, lab))
    return out, notes
