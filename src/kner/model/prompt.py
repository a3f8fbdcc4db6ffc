"""The study's instruction format: render prompts and tags, parse tags back to spans, and
``PromptEncoder``, the one tokenization of prompts and answers that training and inference share.

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
from typing import Any

from kner.data.example import Entity
from kner.data.schemes import Scheme
from kner.errors import ConfigError

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
                raise ConfigError(f"prompt template must contain {key}")
        if not self.template.endswith("{output_tags}"):
            raise ConfigError("prompt template must end with {output_tags}: the answer is generated last")

    def to_dict(self) -> dict:
        return {
            "template": self.template,
            "header": self.header,
            "footer": self.footer,
            "label_line": self.label_line,
            "separator": self.separator,
        }

    @classmethod
    def from_dict(cls, d: dict | None) -> PromptFormat:
        return cls(**(d or {}))

    def instruction(self, scheme: Scheme) -> str:
        lines = [self.label_line.format(name=l.name, en=l.en, ko=l.ko) for l in scheme.labels]
        return "\n".join([self.header, *lines, self.footer])

    def parts(self, scheme: Scheme) -> tuple[str, str]:
        """(prefix, suffix): a prompt is ``prefix + text + suffix``; the answer follows."""
        t = self.template.replace("{instruction}", self.instruction(scheme))
        i, j = t.index("{input_text}"), t.index("{output_tags}")
        return t[:i], t[i + len("{input_text}") : j]

    def prompt(self, text: str, scheme: Scheme) -> str:
        prefix, suffix = self.parts(scheme)
        return prefix + text + suffix

    def render(self, text: str, entities: list[Entity], scheme: Scheme) -> str:
        return self.prompt(text, scheme) + render_tags(entities, self.separator)


def escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("<", "\\<").replace(">", "\\>")


def render_tags(entities: list[Entity], separator: str = " ") -> str:
    """Gold entities in order of appearance (start, then end) as ``<LABEL:text>``."""
    return separator.join(
        f"<{e.label}:{escape(e.text)}>" for e in sorted(entities, key=lambda e: (e.start, e.end, e.label))
    )


@dataclass
class RawTag:
    label: str
    text: str
    complete: bool  # False when the closing '>' was missing (truncated output)


@dataclass
class ParseResult:
    entities: list[Entity] = field(default_factory=list)
    unknown_labels: Counter = field(default_factory=Counter)
    unaligned: list[RawTag] = field(default_factory=list)  # surface not found in the input
    out_of_order: int = 0  # found only before the previous entity
    garbage: list[str] = field(default_factory=list)  # text outside any tag

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
        label = output[i + 1 : colon].strip()
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


# ---------------------------------------------------------------------------
# Prompt token ids shared by training and inference.
#
# Training puts the loss on exactly the tokens that inference will generate, and
# both share the instruction prefix's KV. That only holds if both tokenize the
# same way, so they go through one encoder.


@dataclass
class EncodedExample:
    input_ids: list[int]  # prefix + text + suffix [+ answer + EOS]
    prefix_len: int  # input_ids[:prefix_len] == PromptEncoder.prefix_ids, always
    prompt_len: int  # input_ids[:prompt_len] is what inference feeds; the rest is the answer (+EOS)
    natural: bool  # True: ids equal the tokenizer's own tokenization of the whole string


class PromptEncoder:
    """Token ids for ``prefix + text + suffix [+ answer + EOS]`` with exact prompt/answer boundaries.

    Fast tokenizers: the whole string is tokenized once with ``return_offsets_mapping``;
    the answer starts at the first token whose offset starts at or after the prompt's
    length. That tokenization is kept ("natural") only if its first tokens are exactly
    the prefix's own ids, and the prompt part equals the prompt tokenized alone (what
    inference feeds), so no token straddles a boundary. Otherwise, and always for slow
    tokenizers, the pieces prefix / text+suffix / answer are tokenized separately and
    concatenated; ``fallbacks`` counts those examples. Either way ``prefix_len`` and
    ``prompt_len`` are exact and ``input_ids[prompt_len:]`` is the answer plus EOS.
    """

    def __init__(self, tokenizer: Any, prompt_format: PromptFormat, scheme: Scheme) -> None:
        self.tokenizer = tokenizer
        self.prefix, self.suffix = prompt_format.parts(scheme)
        self.fast = bool(getattr(tokenizer, "is_fast", False))
        probe_with = tokenizer("a", add_special_tokens=True)["input_ids"]
        probe = tokenizer("a", add_special_tokens=False)["input_ids"]
        # Special tokens the tokenizer puts first (BOS); none for Qwen2. A trailing EOS
        # that some tokenizers add is ignored: we append EOS ourselves, to answers only.
        k = next((i for i in range(len(probe_with) - len(probe) + 1) if probe_with[i : i + len(probe)] == probe), 0)
        self.lead_ids: list[int] = list(probe_with[:k])
        self.prefix_ids: list[int] = self.lead_ids + self._ids(self.prefix)
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            raise ConfigError("the tokenizer has no EOS token; set tokenizer.eos_token before training or inference")
        self.fallbacks = 0

    def _ids(self, s: str) -> list[int]:
        return list(self.tokenizer(s, add_special_tokens=False)["input_ids"]) if s else []

    def prompt_ids(self, text: str) -> EncodedExample:
        """What inference feeds the model for ``text`` (no answer)."""
        return self.prompt_ids_many([text])[0]

    def encode(self, text: str, answer: str) -> EncodedExample:
        """A training example: prompt, answer and EOS; labels are ``input_ids[prompt_len:]``."""
        return self.encode_many([(text, answer)])[0]

    def prompt_ids_many(self, texts: list[str]) -> list[EncodedExample]:
        """``prompt_ids`` of many texts; a fast tokenizer takes them as one batch (parallel in Rust)."""
        if not texts:
            return []
        rests = [text + self.suffix for text in texts]
        own_prefix = self.prefix_ids[len(self.lead_ids) :]
        # Fast: the whole prompt in one pass, kept where the instruction's tokens come out
        # unchanged; otherwise (and for slow tokenizers) the prefix ids, then the rest.
        whole = self._ids_many([self.prefix + r for r in rests]) if self.fast else [None] * len(rests)
        out: list[EncodedExample] = []
        for rest, ids in zip(rests, whole):
            natural = ids is not None and ids[: len(own_prefix)] == own_prefix
            full = self.lead_ids + ids if ids is not None and natural else self.prefix_ids + self._ids(rest)
            out.append(EncodedExample(full, len(self.prefix_ids), len(full), natural))
        return out

    def encode_many(self, items: list[tuple[str, str]]) -> list[EncodedExample]:
        """``encode`` of many (text, answer) pairs, tokenized in batches."""
        prompts = self.prompt_ids_many([text for text, _ in items])
        whole: dict[int, tuple[list[int], list]] = {}
        natural = [i for i, pr in enumerate(prompts) if pr.natural]  # only a fast tokenizer's can be
        if natural:
            strings = [self.prefix + items[i][0] + self.suffix + items[i][1] for i in natural]
            enc = self.tokenizer(strings, add_special_tokens=False, return_offsets_mapping=True)
            whole = {i: (list(ids), offs) for i, ids, offs in zip(natural, enc["input_ids"], enc["offset_mapping"])}
        out: list[EncodedExample] = []
        for i, (prompt, (text, answer)) in enumerate(zip(prompts, items)):
            if i in whole:
                ids, offs = whole[i]
                cut = len(self.prefix) + len(text) + len(self.suffix)
                a = next((k for k, (s, _) in enumerate(offs) if s >= cut), len(ids))
                if all(e <= cut for _, e in offs[:a]) and self.lead_ids + ids[:a] == prompt.input_ids:
                    full = self.lead_ids + ids + [self.eos_id]
                    out.append(EncodedExample(full, prompt.prefix_len, prompt.prompt_len, True))
                    continue
            self.fallbacks += 1
            full = prompt.input_ids + self._ids(answer) + [self.eos_id]
            out.append(EncodedExample(full, prompt.prefix_len, prompt.prompt_len, False))
        return out

    def encode_examples(self, examples: list, separator: str = " ", chunk: int = 2048) -> list[EncodedExample]:
        """``encode_many`` of examples with their gold tags as the answer (what training learns and what
        ``kner data check --tokenizer`` measures), in chunks: the tokenizer's threads get batches without
        every offset list being held at once."""
        out: list[EncodedExample] = []
        for c in range(0, len(examples), chunk):
            part = examples[c : c + chunk]
            out += self.encode_many([(ex.text, render_tags(ex.entities, separator)) for ex in part])
        return out

    def _ids_many(self, strings: list[str]) -> list[list[int]]:
        return [list(ids) for ids in self.tokenizer(strings, add_special_tokens=False)["input_ids"]]
