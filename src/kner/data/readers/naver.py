"""NAVER NER 2018 challenge data (and the copies most Korean NER projects ship), layout detected per file.

Two layouts, both word (eojeol) level:

* ``index``: the challenge's own ``train_data``: ``index<TAB>word<TAB>TAG``
  lines, a blank line between sentences (a word index of 1 also starts a new
  sentence, for files without blank lines);
* ``line``: one sentence per line, ``word word ...<TAB>TAG TAG ...`` with as
  many tags as words (KoBERT-NER's ``data/train.tsv``/``test.tsv`` and its
  forks).

Tags are ``PER_B``/``PER_I`` with ``-`` outside (the challenge's spelling), or
``PER-B``/``PER-I`` with ``O`` (or ``-``) outside, as KoBERT-NER's later
``label.txt`` spells them; ``B-PER``/``I-PER`` is read too. Messages quote tags
as the file spells them. 14 labels (PER FLD AFW ORG LOC CVL DAT TIM NUM EVT
ANM PLT MAT TRM). The text is the words joined by single spaces, so every
layout and spelling of the same corpus gives the same examples. The corpus is
a file of independent, shuffled sentences: each sentence is its own document
(``meta["doc"]`` is the sentence id) so that splitting can spread them.

Tags cover whole words, particles and punctuation included
(``예산결산특별위원회의``, ``최진철,``, ``'임수혁``): kept by default.
``trim_punct`` removes punctuation at the edges of each entity (quotes, commas,
periods, dashes, bullets such as ``▲``; a bracket only when its partner is not
inside the entity, so ``(주)알톤`` keeps its ``(``). ``trim_particles`` strips
trailing particles (조사) from the last word of each entity:

* ``"kiwi"``: strip the trailing morphemes that kiwipiepy tags as particles
  (JKS JKC JKG JKO JKB JKV JKQ JX JC), so ``강원도`` and ``우루과이`` stay whole
  while ``우루과이가`` loses ``가``;
* ``"list"``: strip the longest suffix found in ``PARTICLES`` if at least two
  characters remain (so ``한은`` and ``대만`` stay); it cannot tell ``강원도``
  (province) from ``강원`` + ``도`` (also), which is why ``kiwi`` is preferred;
* ``True``: ``kiwi`` when kiwipiepy is installed, else ``list`` (the result's
  notes say which).

With both, punctuation goes first, then particles, then punctuation again
(``‘믹스트존’이`` -> ``믹스트존``). Each trim is counted in the result's notes.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from kner.data.example import Example
from kner.data.readers.base import Problem, ReadResult, build_entities, numbered_lines
from kner.data.readers.bio import OUTSIDE, Tag, decode
from kner.errors import ConfigError, DataError

LABELS = ("PER", "FLD", "AFW", "ORG", "LOC", "CVL", "DAT", "TIM", "NUM", "EVT", "ANM", "PLT", "MAT", "TRM")

# Particles and common particle sequences, as surface forms. Longest match wins.
PARTICLES = tuple(
    sorted(
        {
            "이",
            "가",
            "은",
            "는",
            "을",
            "를",
            "의",
            "에",
            "와",
            "과",
            "도",
            "만",
            "로",
            "께서",
            "에서",
            "에게",
            "한테",
            "으로",
            "로서",
            "로써",
            "까지",
            "부터",
            "처럼",
            "보다",
            "마저",
            "조차",
            "이나",
            "이며",
            "하고",
            "이랑",
            "라는",
            "라고",
            "만큼",
            "에는",
            "에도",
            "에의",
            "로는",
            "로도",
            "로의",
            "과의",
            "와의",
            "과는",
            "와는",
            "만의",
            "만은",
            "만을",
            "에서는",
            "에서도",
            "에서의",
            "에게는",
            "에게도",
            "에게서",
            "으로는",
            "으로도",
            "으로의",
            "으로서",
            "으로써",
            "까지는",
            "까지도",
            "부터는",
            "이라는",
            "이라고",
            "에서부터",
            "으로부터",
        },
        key=lambda p: (-len(p), p),
    )
)
_J_TAGS = ("JKS", "JKC", "JKG", "JKO", "JKB", "JKV", "JKQ", "JX", "JC")


def read(path: Path, trim_particles: bool | str = False, trim_punct: bool = False) -> ReadResult:
    method = _method(trim_particles)
    res = ReadResult(scheme="naver", files=1)
    layout = None
    sent: list[tuple[int, str, str]] = []  # (line, word, tag)
    k = 0

    def flush() -> None:
        nonlocal sent, k
        if sent:
            k += 1
            _sentence(path, k, sent, method, bool(trim_punct), res)
        sent = []

    for lineno, line in numbered_lines(path):
        if not line.strip():
            flush()
            continue
        cols = line.split("\t")
        if layout is None:
            layout = _layout(cols, path, lineno)
        if layout == "index":
            if len(cols) != 3:
                raise DataError(
                    f"expected 3 tab-separated columns (index, word, tag), got {len(cols)}" + _HINT, path, lineno
                )
            if cols[0].strip() == "1":
                flush()
            if not cols[1]:
                raise DataError("empty word", path, lineno)
            sent.append((lineno, cols[1], cols[2]))
        else:
            if len(cols) != 2:
                raise DataError(
                    f"expected one sentence per line, 'words<TAB>tags' (2 tab-separated columns), "
                    f"got {len(cols)}" + _HINT,
                    path,
                    lineno,
                )
            words, tags = cols[0].split(), cols[1].split()
            if not words:
                raise DataError("no words before the tab", path, lineno)
            if len(words) != len(tags):
                raise DataError(
                    f"{len(words)} words but {len(tags)} tags (one tag per space-separated word)", path, lineno
                )
            sent = [(lineno, w, t) for w, t in zip(words, tags)]
            flush()
    flush()
    if layout:
        res.notes[f"sentences in NAVER layout {_LAYOUTS[layout]}"] += k
    return res


_LAYOUTS = {"index": "'index<TAB>word<TAB>tag' lines", "line": "'words<TAB>tags', one sentence per line"}
_HINT = (
    "; NAVER files are either index<TAB>word<TAB>TAG lines with a blank line between sentences, "
    "or one sentence per line as 'words<TAB>tags' (KoBERT-NER), detected from the first line"
)


def _layout(cols: list[str], path: Path, lineno: int) -> str:
    if len(cols) == 3 and cols[0].strip().isdigit():
        return "index"
    if len(cols) == 2:
        return "line"
    raise DataError(f"not a NAVER line ({len(cols)} tab-separated columns)" + _HINT, path, lineno)


_TAG = re.compile(r"^(?:(?P<label>[A-Z]{3})[_-](?P<prefix>[BI])|(?P<prefix2>[BI])-(?P<label2>[A-Z]{3}))$")


def _tag(tag: str) -> Tag | None:
    tag = tag.strip()
    if tag in ("-", "O"):
        return OUTSIDE
    m = _TAG.match(tag)
    if m is None:
        return None
    label = m.group("label") or m.group("label2")
    return Tag(m.group("prefix") or m.group("prefix2"), label) if label in LABELS else None


def _begin_of(tag: str) -> str:
    """The B tag matching an I tag, in the same spelling: ``ORG_I`` -> ``ORG_B``, ``I-ORG`` -> ``B-ORG``."""
    tag = tag.strip()
    return tag[:-1] + "B" if tag.endswith("I") else "B" + tag[1:]


def _method(trim: bool | str) -> str | None:
    if trim in (False, None, "", "no", "none"):
        return None
    if trim in (True, "auto", "yes"):
        try:
            import kiwipiepy  # noqa: F401, PLC0415  lazy: whether it is installed decides the default

            return "kiwi"
        except ImportError:
            return "list"
    if trim in ("kiwi", "list"):
        if trim == "kiwi":
            try:
                import kiwipiepy  # noqa: F401, PLC0415  lazy: as above
            except ImportError:
                raise ConfigError("trim_particles='kiwi' needs kiwipiepy: pip install kiwipiepy") from None
        return trim
    raise ConfigError(f"trim_particles must be true/false, 'kiwi' or 'list', not {trim!r}")


def _sentence(
    path: Path, k: int, sent: list[tuple[int, str, str]], method: str | None, punct: bool, res: ReadResult
) -> None:
    sid = f"{path.name}:{k}"
    tags = []
    for lineno, _, tag in sent:
        t = _tag(tag)
        if t is None:
            raise DataError(
                f"unknown tag {tag!r} (NAVER tags: LABEL_B, LABEL_I and - , or LABEL-B, LABEL-I and O, "
                f"with LABEL one of {' '.join(LABELS)})",
                path,
                lineno,
            )
        tags.append(t)
    words = [w for _, w, _ in sent]
    starts, pos = [], 0
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    text = " ".join(words)
    tok_spans, repairs = decode(tags)
    for idx, _ in repairs:  # decode's message spells tags I-X; say it in the file's own spelling
        tag = sent[idx][2].strip()
        before = sent[idx - 1][2].strip() if idx else None
        after = f" after {before!r}" if before not in (None, "-", "O") else ""
        msg = f"{tag!r}{after} without {_begin_of(tag)!r}; started a new {tags[idx].label} entity"
        res.problems.append(Problem(str(path), sent[idx][0], sid, msg, "i-without-b"))
    spans = []
    for a, b, lab in tok_spans:
        s, e = starts[a], starts[b - 1] + len(words[b - 1])
        if punct:
            s, e = _trim_punct(text, s, e, res, path, sent[a][0], sid)
        if method:
            last = max(s, starts[b - 1])
            cut = _particle_len(text[last:e], method)
            if cut and e - cut > s:
                res.notes[f"particles trimmed ({method})"] += 1
                e -= cut
                if punct:
                    s, e = _trim_punct(text, s, e, res, path, sent[a][0], sid)
        spans.append((s, e, lab))
    ents, notes = build_entities(text, spans)
    for kind, msg in notes:
        res.problems.append(Problem(str(path), sent[0][0], sid, msg, kind))
    res.examples.append(Example(sid, text, ents, {"doc": sid, "source": f"{path.name}:{sent[0][0]}"}))


# Punctuation that does not belong at the edge of a NAVER entity. Not here on purpose: % + # & @ *
# (4%, C++, C#, AT&T) and the minus sign. Brackets and quotes are handled apart: they go only when
# their partner is not inside the entity, or when a pair encloses the whole entity ('왕의 남자').
_EDGE = set(",.;:!?·・…‥~∼-－–—―/\\|、。，．：；！？｜▲△▶▷►◀◁◆◇■□●○◎※★☆♥♡→←↑↓▼▽")
_PAIRS = {
    "(": ")",
    "[": "]",
    "{": "}",
    "<": ">",
    "（": "）",
    "［": "］",
    "｛": "｝",
    "〈": "〉",
    "《": "》",
    "「": "」",
    "『": "』",
    "【": "】",
    "〔": "〕",
    "‘": "’",
    "“": "”",
    "＜": "＞",
}
_CLOSERS = {v: k for k, v in _PAIRS.items()}
_SAME = set("'\"＇＂`´")  # quotes that open and close alike


def _trim_punct(text: str, s: int, e: int, res: ReadResult, path: Path, line: int, sid: str) -> tuple[int, int]:
    s0, e0 = s, e
    while s < e:
        span = text[s:e]
        a, z = span[0], span[-1]
        if a.isspace() or (a in _EDGE and not (a in "-－" and len(span) > 1 and span[1].isdigit())):
            s += 1  # a dash before a digit is a minus sign (-5도), elsewhere a dialogue or list dash
        elif z.isspace() or z in _EDGE:
            e -= 1
        elif a in _PAIRS and z == _PAIRS[a] and _encloses(span):
            s, e = s + 1, e - 1
        elif a in _PAIRS and _PAIRS[a] not in span[1:]:
            s += 1
        elif z in _CLOSERS and _CLOSERS[z] not in span[:-1]:
            e -= 1
        elif a in _SAME and a == z and len(span) > 1 and span.count(a) == 2:
            s, e = s + 1, e - 1
        elif a in _SAME and span.count(a) % 2:
            s += 1
        elif z in _SAME and span.count(z) % 2:
            e -= 1
        else:
            break
    if s >= e:  # nothing but punctuation: keep it as tagged
        res.problems.append(
            Problem(
                str(path), line, sid, f"entity {text[s0:e0]!r} is all punctuation; kept as tagged", "punct-only-entity"
            )
        )
        return s0, e0
    if (s, e) != (s0, e0):
        res.notes["entity-edge punctuation trimmed"] += 1
    return s, e


def _encloses(span: str) -> bool:
    """Whether the bracket opening ``span`` is closed by its last character (not earlier)."""
    opener, closer, depth = span[0], span[-1], 0
    for i, c in enumerate(span):
        if c == opener:
            depth += 1
        elif c == closer:
            depth -= 1
            if depth == 0:
                return i == len(span) - 1
    return False


def _particle_len(word: str, method: str) -> int:
    return _kiwi_particle_len(word) if method == "kiwi" else _list_particle_len(word)


def _list_particle_len(word: str) -> int:
    for p in PARTICLES:
        if word.endswith(p) and len(word) - len(p) >= 2:
            return len(p)
    return 0


@cache
def _kiwi() -> Any:
    from kiwipiepy import Kiwi  # noqa: PLC0415  lazy: optional (see _method)

    return Kiwi()


@lru_cache(maxsize=200_000)
def _kiwi_particle_len(word: str) -> int:
    toks = _kiwi().tokenize(word)
    cut = len(word)
    for t in reversed(toks):
        if t.tag not in _J_TAGS or t.start + t.len != cut:
            break
        cut = t.start
    return len(word) - cut if 0 < cut < len(word) else 0
