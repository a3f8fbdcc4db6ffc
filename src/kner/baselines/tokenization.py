"""Korean tokenizers for the spaCy baseline, and how gold spans fit onto them.

spaCy's own Korean tokenizer needs mecab (natto-py), and whitespace tokens are
too coarse for Korean: particles attach to words ("이순신은"), so a gold span
often ends inside a whitespace token and a token-level tagger cannot express
it. Three modes, all producing tokens whose texts concatenate back to the
original text, so predicted character offsets are always exact:

``char``
    every non-space character is a token; every gold span is representable.
``kiwi``
    whitespace tokens split further at kiwipiepy morpheme boundaries (a
    morpheme that spans a space, e.g. a two-word name, never merges tokens).
``whitespace``
    whitespace only; kept for comparison.

The tokenizer is registered as ``kner.KoreanTokenizer.v1`` so a saved pipeline
loads again with ``spacy.load`` once ``kner.baselines`` has been imported.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from spacy.tokens import Doc
from spacy.util import registry

from kner.errors import ConfigError

MODES = ("char", "kiwi", "whitespace")

_kiwi = None


def _get_kiwi():
    # Loading kiwi's model takes a second or two and ~100 MB, so only the
    # ``kiwi`` mode pays for it, once per process.
    global _kiwi
    if _kiwi is None:
        try:
            from kiwipiepy import Kiwi  # noqa: PLC0415  lazy: only the kiwi mode needs it
        except ImportError:
            raise ConfigError("tokenizer 'kiwi' needs kiwipiepy: pip install kiwipiepy") from None

        with warnings.catch_warnings():
            # num_workers=0 means "main thread only" since kiwipiepy 0.21, which is
            # what a small shared CPU wants; kiwi warns about the changed meaning.
            warnings.simplefilter("ignore", DeprecationWarning)
            _kiwi = Kiwi(num_workers=0)
    return _kiwi


def _whitespace_offsets(text: str) -> list[tuple[int, int]]:
    out = []
    start = None
    for i, ch in enumerate(text):
        if ch.isspace():
            if start is not None:
                out.append((start, i))
                start = None
        elif start is None:
            start = i
    if start is not None:
        out.append((start, len(text)))
    return out


def _split(offsets: Sequence[tuple[int, int]], cuts: Iterable[int]) -> list[tuple[int, int]]:
    """Split tokens at the character positions in ``cuts`` that fall strictly inside one."""
    cuts = sorted(set(cuts))
    out: list[tuple[int, int]] = []
    j = 0
    for s, e in offsets:
        while j < len(cuts) and cuts[j] <= s:
            j += 1
        k = j
        prev = s
        while k < len(cuts) and cuts[k] < e:
            out.append((prev, cuts[k]))
            prev = cuts[k]
            k += 1
        out.append((prev, e))
    return out


def _kiwi_tokens(text: str) -> tuple[list[tuple[int, int]], list[str]]:
    morphs = _get_kiwi().tokenize(text)
    cuts = [c for m in morphs for c in (m.start, m.start + m.len)]
    offsets = _split(_whitespace_offsets(text), cuts)
    # Each token takes the part of speech of the first morpheme overlapping it;
    # kiwi contracts some morphemes ("했" = 하+었), so tokens and morphemes are
    # not always one to one.
    tags = []
    j = 0
    for s, e in offsets:
        while j < len(morphs) and morphs[j].start + morphs[j].len <= s:
            j += 1
        tags.append(morphs[j].tag if j < len(morphs) and morphs[j].start < e else "")
    return offsets, tags


def tokenize(text: str, mode: str) -> tuple[list[tuple[int, int]], list[str] | None]:
    """Token character offsets ``(start, end)`` of ``text`` (never containing whitespace), and
    kiwi part-of-speech tags per token in ``kiwi`` mode (``None`` otherwise)."""
    if mode == "whitespace":
        return _whitespace_offsets(text), None
    if mode == "char":
        return [(i, i + 1) for i, ch in enumerate(text) if not ch.isspace()], None
    if mode == "kiwi":
        if not text.strip():
            return [], []
        return _kiwi_tokens(text)
    raise ConfigError(f"unknown tokenizer {mode!r}; choose one of {', '.join(MODES)}")


def token_offsets(text: str, mode: str) -> list[tuple[int, int]]:
    return tokenize(text, mode)[0]


def make_doc(vocab, text: str, offsets: Sequence[tuple[int, int]], tags: Sequence[str] | None = None):
    """A spaCy ``Doc`` with exactly these tokens whose ``doc.text == text``.

    spaCy stores at most one trailing space per token; other whitespace
    (tabs, runs of spaces, leading spaces) becomes whitespace tokens, spaCy's
    own convention.
    """
    words: list[str] = []
    spaces: list[bool] = []
    doc_tags: list[str] = []

    def gap(s: str) -> None:
        if not s:
            return
        if words and not spaces[-1] and s[0] == " ":
            spaces[-1] = True
            s = s[1:]
        if s:
            words.append(s)
            spaces.append(False)
            doc_tags.append("_SP")

    pos = 0
    for i, (s, e) in enumerate(offsets):
        gap(text[pos:s])
        words.append(text[s:e])
        spaces.append(False)
        doc_tags.append(tags[i] if tags is not None else "")
        pos = e
    gap(text[pos:])
    doc = Doc(vocab, words=words, spaces=spaces, tags=doc_tags if tags is not None else None)
    if doc.text != text:  # pragma: no cover - guards the invariant the offsets rely on
        raise AssertionError(f"tokenization changed the text: {text!r} -> {doc.text!r}")
    return doc


class KoreanTokenizer:
    """spaCy tokenizer callable for one of :data:`MODES`.

    The mode lives in the pipeline's config.cfg, so there is no state to save.
    """

    def __init__(self, vocab, mode: str = "kiwi"):
        if mode not in MODES:
            raise ConfigError(f"unknown tokenizer {mode!r}; choose one of {', '.join(MODES)}")
        self.vocab = vocab
        self.mode = mode

    def __call__(self, text: str):
        offsets, tags = tokenize(text, self.mode)
        return make_doc(self.vocab, text, offsets, tags)

    def pipe(self, texts: Iterable[str], batch_size: int = 1000) -> Iterator:
        for t in texts:
            yield self(t)

    def to_bytes(self, **kwargs) -> bytes:
        return b""

    def from_bytes(self, data: bytes, **kwargs) -> KoreanTokenizer:
        return self

    def to_disk(self, path, **kwargs) -> None:
        return None

    def from_disk(self, path, **kwargs) -> KoreanTokenizer:
        return self

    def __reduce__(self):
        return KoreanTokenizer, (self.vocab, self.mode)


def create_korean_tokenizer(mode: str = "kiwi"):
    """spaCy registry entry ``kner.KoreanTokenizer.v1``."""
    if mode not in MODES:
        raise ConfigError(f"unknown tokenizer {mode!r}; choose one of {', '.join(MODES)}")

    def make(nlp):
        return KoreanTokenizer(nlp.vocab, mode)

    return make


def register() -> None:
    """Make ``kner.KoreanTokenizer.v1`` known to spaCy (idempotent)."""
    registry.tokenizers.register("kner.KoreanTokenizer.v1", func=create_korean_tokenizer)


# ---------------------------------------------------------------------------
# How gold spans fit onto tokens


@dataclass
class AlignmentReport:
    """Counts of gold spans by how they sit on the tokens.

    ``unaligned`` spans start or end inside a token; they were handled by
    ``handling`` (``expand`` widens them to whole tokens, ``contract`` narrows
    them and drops those that vanish, ``split`` cuts the tokens at the span
    boundary for training). ``overlapping`` spans clash with an earlier span
    (spaCy entities cannot nest) and are left out; both are counted per label.
    """

    mode: str
    handling: str
    spans: int = 0
    aligned: int = 0
    unaligned: int = 0
    expanded: int = 0
    contracted: int = 0
    split: int = 0
    dropped_unalignable: int = 0
    dropped_overlap: int = 0
    unaligned_by_label: Counter = field(default_factory=Counter)
    dropped_by_label: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def unaligned_share(self) -> float:
        return self.unaligned / self.spans if self.spans else 0.0

    @property
    def kept(self) -> int:
        return self.spans - self.dropped_unalignable - self.dropped_overlap

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "handling": self.handling,
            "spans": self.spans,
            "aligned": self.aligned,
            "unaligned": self.unaligned,
            "unaligned_share": round(self.unaligned_share, 5),
            "expanded": self.expanded,
            "contracted": self.contracted,
            "split": self.split,
            "dropped_unalignable": self.dropped_unalignable,
            "dropped_overlap": self.dropped_overlap,
            "kept": self.kept,
            "unaligned_by_label": dict(self.unaligned_by_label),
            "dropped_by_label": dict(self.dropped_by_label),
            "unaligned_examples": self.examples,
        }

    def summary(self) -> str:
        s = (
            f"{self.mode} tokens: {self.unaligned}/{self.spans} gold spans "
            f"({100 * self.unaligned_share:.2f}%) not token-aligned"
        )
        if self.unaligned:
            done = {
                "expand": f"{self.expanded} expanded to whole tokens",
                "contract": f"{self.contracted} contracted to whole tokens",
                "split": f"{self.split} made aligned by splitting tokens",
            }[self.handling]
            s += f"; {done}"
        if self.dropped_unalignable:
            s += f"; {self.dropped_unalignable} dropped (no whole token inside)"
        if self.dropped_overlap:
            s += f"; {self.dropped_overlap} dropped as overlapping another span"
        return s


HANDLINGS = ("expand", "contract", "split")


def fit_spans(
    text: str, offsets: list[tuple[int, int]], entities, handling: str, report: AlignmentReport
) -> tuple[list[tuple[int, int]], list[tuple[int, int, str]]]:
    """Fit gold ``entities`` onto tokens; return (possibly split) token offsets and token-aligned spans.

    Spans come back as character offsets that start and end on token
    boundaries and do not overlap; every change is counted in ``report``.
    """
    if handling not in HANDLINGS:
        raise ConfigError(f"unknown span handling {handling!r}; choose one of {', '.join(HANDLINGS)}")
    starts = {s for s, _ in offsets}
    ends = {e for _, e in offsets}
    ents = sorted(entities, key=lambda e: (e.start, -e.end))
    unaligned = []
    for e in ents:
        report.spans += 1
        if e.start in starts and e.end in ends:
            report.aligned += 1
        else:
            report.unaligned += 1
            report.unaligned_by_label[e.label] += 1
            unaligned.append(e)
            if len(report.examples) < 20:
                toks = [text[s:t] for s, t in offsets if t > e.start and s < e.end]
                report.examples.append(f"{e.label}:{e.text!r} in tokens {toks}")
    if handling == "split" and unaligned:
        cuts = [c for e in unaligned for c in (e.start, e.end)]
        offsets = _split(offsets, cuts)
        report.split += len(unaligned)
    spans: list[tuple[int, int, str]] = []
    for e in ents:
        s, t = e.start, e.end
        if handling != "split" and not (e.start in starts and e.end in ends):
            inside = [(a, b) for a, b in offsets if b > s and a < t]
            if handling == "expand":
                s, t = inside[0][0], inside[-1][1]
                report.expanded += 1
            else:
                whole = [(a, b) for a, b in inside if a >= s and b <= t]
                if not whole:
                    report.dropped_unalignable += 1
                    report.dropped_by_label[e.label] += 1
                    continue
                s, t = whole[0][0], whole[-1][1]
                report.contracted += 1
        if spans and s < spans[-1][1]:
            report.dropped_overlap += 1
            report.dropped_by_label[e.label] += 1
            continue
        spans.append((s, t, e.label))
    return offsets, spans


def alignment_report(examples, mode: str, handling: str = "expand") -> AlignmentReport:
    """Measure how the gold spans of ``examples`` fit ``mode`` tokens, without building docs."""
    report = AlignmentReport(mode, handling)
    for ex in examples:
        fit_spans(ex.text, token_offsets(ex.text, mode), ex.entities, handling, report)
    return report
