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

:func:`read_marked` is the one conversion of a markup sentence that the KMOU,
2016klp and KLUE readers share: the markup line is the truth; it is checked
against the raw line and the BIO lines, and every disagreement is a note.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from kner.data.example import Entity, Example, strip_span
from kner.data.readers.base import Problem, ReadResult, build_entities, describe_spans
from kner.data.readers.bio import Tag, decode

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
    pieces: list[str] = []  # output text, one piece per input character ('' for tag syntax)
    opened: list[int] = []  # indices into pieces of '<' that may still open a tag
    paired: list[int] = []  # '<' taken as literal by a later '>', most recent last
    spans: list[tuple[int, int, str]] = []  # (piece index of the '<', piece index after the text, label)
    notes: list[tuple[str, str]] = []
    i, n = 0, len(markup)
    while i < n:
        ch = markup[i]
        if ch == ":":
            m = _CLOSER.match(markup, i)
            label = _label(m.group(1), labels) if m else None
            if m is not None and label is not None:
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
                notes.append(
                    ("unknown-label", f"'{m.group(0)}' looks like a tag but {m.group(1)} is not a label; kept as text")
                )
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


def trim_spans(
    text: str, spans: list[tuple[int, int, str]]
) -> tuple[list[tuple[int, int, str]], list[tuple[str, str]]]:
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


Where = str | int  # "sentence", "raw", "markup", or the line of one token


@dataclass
class Marked:
    text: str
    entities: list[Entity]
    notes: list[tuple[str, str, Where]]  # (kind, message, where it was seen)

    def problems(self, path: Path, sid: str, lines: dict[str, int]) -> list[Problem]:
        """The notes as problem rows; ``lines`` gives the line of "sentence", "raw" and "markup"."""
        return [
            Problem(str(path), where if isinstance(where, int) else lines[where], sid, msg, kind)
            for kind, msg, where in self.notes
        ]


def read_marked(
    markup: str,
    labels: Collection[str],
    *,
    raw: str | None = None,
    tokens: list[tuple[int, str, Tag]] | None = None,
    unit: Literal["morphemes", "chars", "lemmas"] = "morphemes",
) -> Marked:
    """One sentence: text and entities as the markup says, with a note for each disagreement.

    ``raw``: the sentence's raw line, which the markup without tags must equal.
    ``tokens``: (line, surface, tag) of the BIO lines (None: not checked). Their
    ``unit``: KMOU's morphemes and KLUE's characters spell the text and their
    spans must equal the markup's; 2016klp's lemmas are compared as entity strings.
    Raises :class:`MarkupError` if the markup cannot be read: the reader decides
    whether to skip the sentence or fall back on its tokens.
    """
    mk = parse_markup(markup, labels)
    text = mk.text
    notes: list[tuple[str, str, Where]] = [(kind, msg, "markup") for kind, msg in mk.notes]
    spans, trimmed = trim_spans(text, mk.spans)
    notes += [(kind, msg, "markup") for kind, msg in trimmed]
    if raw is not None and text != raw:
        k = next((c for c, (a, b) in enumerate(zip(text, raw)) if a != b), min(len(text), len(raw)))
        notes.append(
            (
                "raw-mismatch",
                f"markup without tags differs from the raw line at column {k + 1}: "
                f"{text[max(0, k - 10) : k + 10]!r} vs {raw[max(0, k - 10) : k + 10]!r} (markup kept)",
                "raw",
            )
        )
    if tokens is not None:
        notes += _check_lemmas(text, spans, tokens) if unit == "lemmas" else _check_spelled(text, spans, tokens, unit)
    ents, dup = build_entities(text, spans)
    notes += [(kind, msg, "markup") for kind, msg in dup]
    return Marked(text, ents, notes)


def add_marked(
    res: ReadResult,
    path: Path,
    sid: str,
    lines: dict[str, int],
    markup: str,
    labels: Collection[str],
    meta: dict[str, Any],
    *,
    raw: str | None,
    tokens: list[tuple[int, str, Tag]] | None,
    unit: Literal["morphemes", "chars", "lemmas"],
) -> None:
    """One sentence into ``res`` (KMOU, 2016klp): the example and its notes as problem rows (``lines`` as
    for :meth:`Marked.problems`), or, if the markup cannot be read, a skipped sentence with the reason."""
    try:
        mk = read_marked(markup, labels, raw=raw, tokens=tokens, unit=unit)
    except MarkupError as err:
        res.problems.append(Problem(str(path), lines["markup"], sid, f"markup not converted: {err}", "unparseable"))
        res.skipped += 1
        return
    res.problems += mk.problems(path, sid, lines)
    res.examples.append(Example(sid, mk.text, mk.entities, meta))


def from_tokens(tokens: list[tuple[int, str, Tag]]) -> Marked:
    """A sentence read from its BIO lines alone (they spell the text): for markup that cannot be read."""
    text = "".join(s for _, s, _ in tokens)
    starts = _starts(tokens, 0)
    tok_spans, notes = _decoded(tokens)
    ents, dup = build_entities(text, [(starts[a], starts[b], lab) for a, b, lab in tok_spans])
    return Marked(text, ents, notes + [(kind, msg, "markup") for kind, msg in dup])


def _starts(tokens: list[tuple[int, str, Tag]], shift: int) -> list[int]:
    """Character offset of each token's start, and of the end of the last."""
    starts = [shift]
    for _, surface, _ in tokens:
        starts.append(starts[-1] + len(surface))
    return starts


def _decoded(tokens: list[tuple[int, str, Tag]]) -> tuple[list[tuple[int, int, str]], list[tuple[str, str, Where]]]:
    spans, repairs = decode([t for _, _, t in tokens])
    return spans, [("i-without-b", msg, tokens[k][0]) for k, msg in repairs]


def _check_spelled(
    text: str, spans: list[tuple[int, int, str]], tokens: list[tuple[int, str, Tag]], unit: str
) -> list[tuple[str, str, Where]]:
    """BIO spans, re-aligned to characters, must equal the markup spans."""
    spelled = "".join(s for _, s, _ in tokens)
    shift = 0
    if spelled != text:
        # The tokens may lack the sentence's outer spaces (KMOU); anything else is a real mismatch.
        if spelled.strip() != text.strip():
            noun = "morpheme" if unit == "morphemes" else "character"
            return [(f"{unit}-mismatch", f"{noun} lines do not spell the markup text; BIO not checked", "sentence")]
        shift = (len(text) - len(text.lstrip())) - (len(spelled) - len(spelled.lstrip()))
    starts = _starts(tokens, shift)
    tok_spans, notes = _decoded(tokens)
    bio = {(starts[a], starts[b], lab) for a, b, lab in tok_spans}
    if unit == "morphemes":
        # KMOU tags the space morphemes around an entity; its markup never holds them. KLUE's
        # character tags are compared as written: a tagged space is a disagreement.
        stripped = {(*strip_span(text, s, e), lab) for s, e, lab in bio}
        bio = {(s, e, lab) for s, e, lab in stripped if s < e}
    gold = set(spans)
    if bio != gold:
        notes.append(
            (
                "bio-mismatch",
                f"BIO lines disagree with markup (markup kept): markup {describe_spans(text, gold - bio)}; "
                f"BIO {describe_spans(text, bio - gold)}",
                "sentence",
            )
        )
    return notes


def _check_lemmas(
    text: str, spans: list[tuple[int, int, str]], tokens: list[tuple[int, str, Tag]]
) -> list[tuple[str, str, Where]]:
    """Entity strings of the BIO column (lemmas joined) must equal the markup's, in order."""
    tok_spans, notes = _decoded(tokens)
    bio = [(lab, "".join(t[1] for t in tokens[a:b])) for a, b, lab in tok_spans]
    gold = [(lab, text[s:e]) for s, e, lab in spans]
    if [(lab, _key(x)) for lab, x in bio] != [(lab, _key(x)) for lab, x in gold]:

        def shown(xs: list[tuple[str, str]]) -> str:
            return ", ".join(f"{lab} {x!r}" for lab, x in xs) or "none"

        notes.append(
            (
                "bio-mismatch",
                f"BIO column disagrees with markup (markup kept): markup {shown(gold)}; BIO {shown(bio)}",
                "sentence",
            )
        )
    return notes


def _key(s: str) -> str:
    """Comparable form of a surface or of lemmatised morphemes: no spaces, jamo decomposed, finals as initials."""
    return "".join(_fold(c) for c in unicodedata.normalize("NFKD", "".join(s.split())))


@cache
def _fold(c: str) -> str:
    # '지난' decomposes to ...ᆫ (final), the lemma '지나'+'ㄴ' to ...ᄂ (initial): make them equal.
    name = unicodedata.name(c, "")
    if name.startswith("HANGUL JONGSEONG "):
        try:
            return unicodedata.lookup(name.replace("JONGSEONG", "CHOSEONG"))
        except KeyError:
            return c
    return c
