"""NAVER NER 2018 challenge data: ``index<TAB>word<TAB>TAG`` lines, blank line between sentences.

TAG is ``PER_B``/``PER_I`` ... or ``-``; 14 labels (PER FLD AFW ORG LOC CVL DAT
TIM NUM EVT ANM PLT MAT TRM). The text is the words joined by single spaces. A
word index of 1 also starts a new sentence, for files without blank lines.

Tags cover whole words, particles included (``예산결산특별위원회의``): kept by
default. ``trim_particles`` strips trailing particles (조사) from the last word
of each entity:

* ``"kiwi"``: strip the trailing morphemes that kiwipiepy tags as particles
  (JKS JKC JKG JKO JKB JKV JKQ JX JC), so ``강원도`` and ``우루과이`` stay whole
  while ``우루과이가`` loses ``가``;
* ``"list"``: strip the longest suffix found in ``PARTICLES`` if at least two
  characters remain (so ``한은`` and ``대만`` stay); it cannot tell ``강원도``
  (province) from ``강원`` + ``도`` (also), which is why ``kiwi`` is preferred;
* ``True``: ``kiwi`` when kiwipiepy is installed, else ``list`` (the result's
  notes say which).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from kner.errors import ConfigError, DataError
from kner.example import Example
from kner.readers.base import Problem, ReadResult, build_entities, numbered_lines
from kner.readers.bio import decode, split_tag

LABELS = ("PER", "FLD", "AFW", "ORG", "LOC", "CVL", "DAT", "TIM", "NUM", "EVT", "ANM", "PLT", "MAT", "TRM")

# Particles and common particle sequences, as surface forms. Longest match wins.
PARTICLES = tuple(sorted({
    "이", "가", "은", "는", "을", "를", "의", "에", "와", "과", "도", "만", "로",
    "께서", "에서", "에게", "한테", "으로", "로서", "로써", "까지", "부터", "처럼", "보다", "마저", "조차",
    "이나", "이며", "하고", "이랑", "라는", "라고", "만큼",
    "에는", "에도", "에의", "로는", "로도", "로의", "과의", "와의", "과는", "와는", "만의", "만은", "만을",
    "에서는", "에서도", "에서의", "에게는", "에게도", "에게서", "으로는", "으로도", "으로의", "으로서", "으로써",
    "까지는", "까지도", "부터는", "이라는", "이라고", "에서부터", "으로부터",
}, key=lambda p: (-len(p), p)))
_J_TAGS = ("JKS", "JKC", "JKG", "JKO", "JKB", "JKV", "JKQ", "JX", "JC")


def read(path: Path, trim_particles: bool | str = False) -> ReadResult:
    method = _method(trim_particles)
    res = ReadResult(scheme="naver", files=1)
    sent: list[tuple[int, str, str]] = []
    k = 0

    def flush():
        nonlocal sent, k
        if sent:
            k += 1
            _sentence(path, k, sent, method, res)
        sent = []

    for lineno, line in numbered_lines(path):
        if not line.strip():
            flush()
            continue
        cols = line.split("\t")
        if len(cols) != 3:
            raise DataError(f"expected 3 tab-separated columns (index, word, tag), got {len(cols)}", path, lineno)
        if cols[0].strip() == "1":
            flush()
        if not cols[1]:
            raise DataError("empty word", path, lineno)
        sent.append((lineno, cols[1], cols[2]))
    flush()
    return res


def _method(trim: bool | str) -> str | None:
    if trim in (False, None, "", "no", "none"):
        return None
    if trim in (True, "auto", "yes"):
        try:
            import kiwipiepy  # noqa: F401
            return "kiwi"
        except ImportError:
            return "list"
    if trim in ("kiwi", "list"):
        if trim == "kiwi":
            try:
                import kiwipiepy  # noqa: F401
            except ImportError:
                raise ConfigError("trim_particles='kiwi' needs kiwipiepy: pip install 'kner[kiwi]'") from None
        return trim
    raise ConfigError(f"trim_particles must be true/false, 'kiwi' or 'list', not {trim!r}")


def _sentence(path: Path, k: int, sent, method: str | None, res: ReadResult) -> None:
    sid = f"{path.name}:{k}"
    tags = []
    for lineno, _, tag in sent:
        t = split_tag(tag, sep="_", label_first=True)
        if t is None or (t.label is not None and t.label not in LABELS):
            raise DataError(f"unknown tag {tag!r} (expected LABEL_B, LABEL_I or -)", path, lineno)
        tags.append(t)
    words = [w for _, w, _ in sent]
    starts, pos = [], 0
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    text = " ".join(words)
    tok_spans, repairs = decode(tags)
    for idx, msg in repairs:
        res.problems.append(Problem(str(path), sent[idx][0], sid, msg, "i-without-b"))
    spans = []
    for a, b, lab in tok_spans:
        s, e = starts[a], starts[b - 1] + len(words[b - 1])
        if method:
            cut = _particle_len(words[b - 1], method)
            if cut and e - cut > s:
                res.notes[f"particles trimmed ({method})"] += 1
                e -= cut
        spans.append((s, e, lab))
    ents, notes = build_entities(text, spans)
    for kind, msg in notes:
        res.problems.append(Problem(str(path), sent[0][0], sid, msg, kind))
    res.examples.append(Example(sid, text, ents, {"doc": path.name, "source": f"{path.name}:{sent[0][0]}"}))


def _particle_len(word: str, method: str) -> int:
    return _kiwi_particle_len(word) if method == "kiwi" else _list_particle_len(word)


def _list_particle_len(word: str) -> int:
    for p in PARTICLES:
        if word.endswith(p) and len(word) - len(p) >= 2:
            return len(p)
    return 0


@lru_cache(maxsize=None)
def _kiwi():
    from kiwipiepy import Kiwi
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
