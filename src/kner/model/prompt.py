"""The study's instruction format: render prompts and tags, parse tags back to spans.

The prompt is ``prefix + text + suffix`` and the answer is the tag list. The
prefix (instruction with one line per label) is identical for every example,
which training and inference exploit; keep it byte-identical between the two.

Tag grammar (what ``render_tags`` writes and ``parse_tags`` reads)::

    tags   := (tag (" " tag)*)?
    tag    := "<" LABEL ":" etext ">"
    etext  := (char | "\\<" | "\\>" | "\\\\")+

Escaping: inside entity text ``\\``, ``<`` and ``>`` are written ``\\\\``,
``\\<`` and ``\\>``. A colon needs no escape because the label ends at the first
colon and labels never contain one (``\\:`` is still accepted). An empty tag
list means "no entities".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from kner.data.example import Entity
from kner.data.schemes import Scheme

DEFAULT_HEADER = "다음 아래 문장에서 개체명을 추출하려 합니다. 개체명은 아래 규칙(spacy를 따름)으로 태깅시켜 주세요."
DEFAULT_FOOTER = "아래 문장들에서 개체명을 추출하세요."
DEFAULT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Text:\n{input_text}\n\n### Tags:\n{output_tags}"
DEFAULT_LABEL_LINE = "- {name}: {en}"


@dataclass(frozen=True)
class PromptFormat:
    """Declarative prompt settings; saved with every trained model so inference matches training."""

    template: str = DEFAULT_TEMPLATE
    header: str = DEFAULT_HEADER
    footer: str = DEFAULT_FOOTER
    label_line: str = DEFAULT_LABEL_LINE
    separator: str = " "

    def __post_init__(self):
        for key in ("{instruction}", "{input_text}", "{output_tags}"):
            if key not in self.template:
                from kner.errors import ConfigError
                raise ConfigError(f"prompt template must contain {key}")
        if not self.template.endswith("{output_tags}"):
            from kner.errors import ConfigError
            raise ConfigError("prompt template must end with {output_tags}: the answer is generated last")

    def to_dict(self) -> dict:
        return {"template": self.template, "header": self.header, "footer": self.footer,
                "label_line": self.label_line, "separator": self.separator}

    @classmethod
    def from_dict(cls, d: dict | None) -> "PromptFormat":
        return cls(**(d or {}))

    def instruction(self, scheme: Scheme) -> str:
        lines = [self.label_line.format(name=l.name, en=l.en, ko=l.ko) for l in scheme.labels]
        return "\n".join([self.header, *lines, self.footer])

    def parts(self, scheme: Scheme) -> tuple[str, str]:
        """(prefix, suffix): a prompt is ``prefix + text + suffix``; the answer follows."""
        t = self.template.replace("{instruction}", self.instruction(scheme))
        i, j = t.index("{input_text}"), t.index("{output_tags}")
        return t[:i], t[i + len("{input_text}"):j]

    def prompt(self, text: str, scheme: Scheme) -> str:
        prefix, suffix = self.parts(scheme)
        return prefix + text + suffix

    def render(self, text: str, entities: list[Entity], scheme: Scheme) -> str:
        return self.prompt(text, scheme) + render_tags(entities, self.separator)


def escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("<", "\\<").replace(">", "\\>")


def render_tags(entities: list[Entity], separator: str = " ") -> str:
    """Gold entities in order of appearance (start, then end) as ``<LABEL:text>``."""
    return separator.join(f"<{e.label}:{escape(e.text)}>" for e in sorted(entities, key=lambda e: (e.start, e.end, e.label)))


@dataclass
class RawTag:
    label: str
    text: str
    complete: bool  # False when the closing '>' was missing (truncated output)


@dataclass
class ParseResult:
    entities: list[Entity] = field(default_factory=list)
    unknown_labels: Counter = field(default_factory=Counter)
    unaligned: list[RawTag] = field(default_factory=list)   # surface not found in the input
    out_of_order: int = 0                                     # found only before the previous entity
    garbage: list[str] = field(default_factory=list)         # text outside any tag

    @property
    def ok(self) -> bool:
        return not (self.unknown_labels or self.unaligned or self.garbage)

    def problems(self) -> list[str]:
        out = [f"unknown label {l!r} x{c}" for l, c in self.unknown_labels.items()]
        out += [f"entity {t.label}:{t.text!r} is not in the text" for t in self.unaligned]
        out += [f"text outside tags: {g!r}" for g in self.garbage]
        return out


def scan_tags(output: str) -> tuple[list[RawTag], list[str]]:
    """Split generated text into raw tags; tolerant of spacing, newlines and a missing final '>'."""
    tags: list[RawTag] = []
    garbage: list[str] = []
    i, n = 0, len(output)
    while i < n:
        ch = output[i]
        if ch.isspace():
            i += 1
            continue
        if ch != "<":
            j = output.find("<", i)
            j = n if j < 0 else j
            garbage.append(output[i:j].strip())
            i = j
            continue
        colon = output.find(":", i + 1)
        close = output.find(">", i + 1)
        nxt = output.find("<", i + 1)
        if colon < 0 or (close >= 0 and close < colon) or (nxt >= 0 and nxt < colon):
            end = close + 1 if close >= 0 else n
            garbage.append(output[i:end])
            i = end
            continue
        label = output[i + 1:colon].strip()
        buf: list[str] = []
        k = colon + 1
        complete = False
        while k < n:
            c = output[k]
            if c == "\\" and k + 1 < n and output[k + 1] in "\\<>:":
                buf.append(output[k + 1])
                k += 2
                continue
            if c == ">":
                complete = True
                k += 1
                break
            if c == "<":  # a new tag starts: the previous one lost its '>'
                break
            buf.append(c)
            k += 1
        tags.append(RawTag(label, "".join(buf), complete))
        i = k
    return tags, garbage


def align(tags: list[tuple[str, str]], text: str) -> tuple[list[Entity], list[int], int]:
    """Place (label, surface) pairs on ``text`` left to right.

    Repeated surfaces take successive occurrences: each search starts at the
    previous entity's end (then, for nested spans, at its start) and skips spans
    already taken, so the second "일본" maps to the second occurrence, not the
    first. Constrained decoding emits entities that satisfy the same rule. Returns entities,
    indices of tags that could not be placed, and how many were found only
    before the cursor (out of order).
    """
    ents: list[Entity] = []
    taken: set[tuple[int, int]] = set()
    missing: list[int] = []
    out_of_order = 0
    prev: tuple[int, int] = (0, 0)
    for idx, (label, surface) in enumerate(tags):
        pos = -1
        for cand in (surface.strip(), surface):
            if not cand:
                continue
            # After the previous entity first; then overlapping it (nested spans).
            pos = _find_free(text, cand, prev[1], taken)
            if pos < 0:
                pos = _find_free(text, cand, prev[0], taken)
            if pos >= 0:
                surface = cand
                break
        if pos < 0 and surface.strip():
            surface = surface.strip() if text.find(surface) < 0 else surface
            pos = _find_free(text, surface, 0, taken)
            if pos >= 0:
                out_of_order += 1
        if pos < 0:
            missing.append(idx)
            continue
        span = (pos, pos + len(surface))
        taken.add(span)
        ents.append(Entity(pos, pos + len(surface), label, surface))
        prev = span
    return ents, missing, out_of_order


def _find_free(text: str, surface: str, start: int, taken: set[tuple[int, int]]) -> int:
    if not surface:
        return -1
    pos = text.find(surface, start)
    while pos >= 0 and (pos, pos + len(surface)) in taken:
        pos = text.find(surface, pos + 1)
    return pos


def parse_tags(output: str, text: str, scheme: Scheme) -> ParseResult:
    """Model output -> entity spans on ``text``. Never raises; problems are reported in the result."""
    raw, garbage = scan_tags(output)
    res = ParseResult(garbage=[g for g in garbage if g])
    keep: list[tuple[str, str]] = []
    kept_raw: list[RawTag] = []
    for t in raw:
        lab = scheme.canonical(t.label)
        if lab is None:
            res.unknown_labels[t.label] += 1
            continue
        keep.append((lab, t.text))
        kept_raw.append(t)
    ents, missing, res.out_of_order = align(keep, text)
    res.unaligned = [kept_raw[i] for i in missing]
    # Duplicate spans with two labels cannot both be right; keep the first the model emitted.
    seen: set[tuple[int, int]] = set()
    for e in ents:
        if e.span not in seen:
            seen.add(e.span)
            res.entities.append(e)
    res.entities.sort()
    return res
