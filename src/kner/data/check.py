"""``kner data check``: is a train/dev/test split fit to train and score on? (spaCy's ``debug data``).

Pure functions: ``check_folder`` / ``check_files`` read the split files and return a
``CheckReport`` (per-split counts plus ``Finding`` rows, each an error or a
warning); ``check_splits`` does the same on examples already in memory. The CLI
prints the report and ``kner run`` stops on its errors; neither decides anything.

Errors are what makes training or scoring fail or meaningless: a missing or empty
split, an entity whose offsets do not match its text, a duplicate id in the test
split (evaluation pairs gold and predictions by id), a train split whose every
example is longer than ``max_seq_len``. Everything else is a warning: tiny splits,
labels of dev/test that train never shows, identical texts in two splits
(leakage), overlapping entities, text not in Unicode NFC, examples training will
skip as too long, duplicate ids outside test.
"""

from __future__ import annotations

import logging
import unicodedata
from collections import Counter
from collections.abc import Callable, Set
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kner.data.example import Example, iter_jsonl, validate
from kner.data.schemes import load_scheme
from kner.data.splits import SMALL_SHARE, SPLITS, doc_of
from kner.errors import DataError
from kner.model.prompt import PromptEncoder, PromptFormat
from kner.textio import numbered_lines

ERROR, WARNING = "error", "warning"
# A split under either bound is "tiny" (a warning; an empty split is an error): 10 sentences
# give an F1 that moves by whole points per entity, and a split under 1% of the data is
# usually a ratio typo (0.01 for 0.1); the share is the one `kner data split` warns at.
TINY_SENTENCES = 10
TINY_FRACTION = SMALL_SHARE
SHOW = 5  # ids quoted per finding


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning"
    # missing, empty, tiny, invalid-entity, duplicate-id, unseen-label, leak, overlap, not-nfc, empty-text,
    # no-entities, too-long
    kind: str
    split: str
    message: str  # one line, naming the split
    count: int = 1
    examples: tuple[str, ...] = ()  # ids (or file:line) of the first few cases

    def line(self) -> str:
        eg = f" (e.g. {', '.join(self.examples)})" if self.examples else ""
        return f"{self.split}: {self.message}{eg}"


@dataclass
class SplitSummary:
    name: str
    path: str | None
    sentences: int = 0
    documents: int = 0
    entities: Counter[str] = field(default_factory=Counter)  # per label


@dataclass
class CheckReport:
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # checks that could not run, and why

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def verdict(self) -> str:
        ne, nw = len(self.errors), len(self.warnings)
        head = "FAILED" if ne else "passed"
        return f"check {head}: {ne} error{'s' * (ne != 1)}, {nw} warning{'s' * (nw != 1)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "verdict": self.verdict(),
            "splits": {
                n: {
                    "path": s.path,
                    "sentences": s.sentences,
                    "documents": s.documents,
                    "entities": sum(s.entities.values()),
                    "labels": dict(s.entities.most_common()),
                }
                for n, s in self.splits.items()
            },
            "findings": [{**asdict(f), "examples": list(f.examples)} for f in self.findings],
            "notes": list(self.notes),
        }


def load_split(path: str | Path, name: str) -> tuple[list[Example], list[Finding]]:
    """Read one split's JSONL; entities that fail ``validate`` and overlaps become findings.

    Malformed JSON or a record without ``text`` is still a ``DataError`` (nothing to check).
    """
    path = Path(path)
    if not path.is_file():
        return [], [Finding(ERROR, "missing", name, f"file not found: {path}")]
    linenos = [n for n, line in numbered_lines(path) if line.strip()]  # iter_jsonl skips blank lines too
    examples: list[Example] = []
    invalid: list[str] = []
    overlaps: list[str] = []
    for lineno, ex in zip(linenos, iter_jsonl(path, validate_examples=False)):
        try:
            if validate(ex, path, lineno):
                overlaps.append(ex.id)
        except DataError as err:
            invalid.append(str(err))
        examples.append(ex)
    found = []
    if invalid:
        found.append(
            Finding(
                ERROR,
                "invalid-entity",
                name,
                f"{len(invalid)} sentence(s) with an invalid entity; first: {invalid[0]}",
                len(invalid),
            )
        )
    if overlaps:
        found.append(
            Finding(
                WARNING,
                "overlap",
                name,
                f"{len(overlaps)} sentence(s) with overlapping entities (the spaCy baseline drops "
                f"the later span; the LLM keeps both)",
                len(overlaps),
                tuple(overlaps[:SHOW]),
            )
        )
    return examples, found


def check_folder(folder: str | Path, tokenizer: Any = None, **kw: Any) -> CheckReport:
    """``train.jsonl``, ``dev.jsonl`` and ``test.jsonl`` of a folder (``kner data split``, ``kner run``'s prepare)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a folder", folder)
    return check_files({s: folder / f"{s}.jsonl" for s in SPLITS}, tokenizer, **kw)


def check_files(files: dict[str, str | Path], tokenizer: Any = None, **kw: Any) -> CheckReport:
    """Named split files, e.g. ``{"train": "a.jsonl", "test": "b.jsonl"}``; "train" is the reference split."""
    splits: dict[str, list[Example]] = {}
    read_findings: list[Finding] = []
    missing: set[str] = set()
    for name, path in files.items():
        exs, found = load_split(path, name)
        splits[name] = exs
        read_findings += found
        if any(f.kind == "missing" for f in found):
            missing.add(name)
    report = check_splits(splits, tokenizer, paths={n: str(p) for n, p in files.items()}, skip_empty=missing, **kw)
    report.findings[:0] = read_findings
    _order(report)
    return report


def check_splits(
    splits: dict[str, list[Example]],
    tokenizer: Any = None,
    scheme: str = "spacy19",
    max_seq_len: int = 1024,
    prompt_format: PromptFormat | None = None,
    paths: dict[str, str] | None = None,
    skip_empty: Set[str] = frozenset(),
) -> CheckReport:
    """Check examples split by name. ``tokenizer`` (a loaded Hugging Face tokenizer) adds the
    ``max_seq_len`` check, with the prompt encoded as training encodes it."""
    rep = CheckReport()
    add = rep.findings.append
    total = sum(len(v) for v in splits.values())
    for name, exs in splits.items():
        rep.splits[name] = SplitSummary(
            name,
            (paths or {}).get(name),
            len(exs),
            len({doc_of(e) for e in exs}),
            Counter(e.label for ex in exs for e in ex.entities),
        )
        n = len(exs)
        if n == 0:
            if name not in skip_empty:  # a missing file is already an error of its own
                add(Finding(ERROR, "empty", name, "empty split (0 sentences)", 0))
            continue
        if n < TINY_SENTENCES or (len(splits) > 1 and n < TINY_FRACTION * total):
            add(
                Finding(
                    WARNING,
                    "tiny",
                    name,
                    f"tiny split: {n} sentence(s), {100 * n / total:.1f}% of {total} "
                    f"(warned under {TINY_SENTENCES} sentences or {TINY_FRACTION:.0%})",
                    n,
                )
            )
        if not rep.splits[name].entities:
            add(Finding(WARNING, "no-entities", name, f"no entities in {n} sentence(s)", n))
        _duplicate_ids(name, exs, add)
        blank = [ex.id for ex in exs if not ex.text.strip()]
        if blank:
            add(
                Finding(
                    WARNING,
                    "empty-text",
                    name,
                    f"{len(blank)} sentence(s) with empty text",
                    len(blank),
                    tuple(blank[:SHOW]),
                )
            )
        _not_nfc(name, exs, add)
    _unseen_labels(rep, add)
    _leaks(splits, add)
    if tokenizer is not None:
        _too_long(splits, tokenizer, scheme, max_seq_len, prompt_format, add)
    _order(rep)
    return rep


def _order(rep: CheckReport) -> None:
    names = list(rep.splits)
    rep.findings.sort(key=lambda f: (f.severity != ERROR, names.index(f.split) if f.split in names else 0))


def _not_nfc(name: str, exs: list[Example], add: Callable[[Finding], None]) -> None:
    ids: list[str] = []
    chars: Counter[str] = Counter()  # characters NFC replaces on their own (compatibility ideographs, ...)
    jamo = 0  # sentences with conjoining jamo: decomposed Hangul, composed only in sequence
    for ex in exs:
        if unicodedata.is_normalized("NFC", ex.text):
            continue
        ids.append(ex.id)
        chars.update(ch for ch in ex.text if unicodedata.normalize("NFC", ch) != ch)
        jamo += any(0x1100 <= ord(ch) <= 0x11FF for ch in ex.text)
    if not ids:
        return
    what = []
    if jamo:
        what.append(f"{jamo} with decomposed Hangul (jamo), which tokenizes and matches unlike the composed syllables")
    if chars:
        what.append(
            "characters NFC replaces: " + ", ".join(f"U+{ord(ch):04X} {ch} x{c}" for ch, c in chars.most_common(3))
        )
    add(
        Finding(
            WARNING,
            "not-nfc",
            name,
            f"{len(ids)} sentence(s) not in Unicode NFC ({'; '.join(what)})",
            len(ids),
            tuple(ids[:SHOW]),
        )
    )


def _duplicate_ids(name: str, exs: list[Example], add: Callable[[Finding], None]) -> None:
    counts = Counter(ex.id for ex in exs)
    dup = [i for i, c in counts.items() if c > 1]
    if not dup:
        return
    if name == "test":
        add(
            Finding(
                ERROR,
                "duplicate-id",
                name,
                f"{len(dup)} duplicate id(s): evaluation pairs gold and predictions by id, so test ids must be unique",
                len(dup),
                tuple(dup[:SHOW]),
            )
        )
    else:
        add(Finding(WARNING, "duplicate-id", name, f"{len(dup)} duplicate id(s)", len(dup), tuple(dup[:SHOW])))


def _unseen_labels(rep: CheckReport, add: Callable[[Finding], None]) -> None:
    if "train" not in rep.splits:
        if len(rep.splits) > 1:
            rep.notes.append("no split named train: labels unseen in training were not checked")
        return
    seen = set(rep.splits["train"].entities)
    for name, s in rep.splits.items():
        unseen = {lab: c for lab, c in s.entities.items() if lab not in seen}
        if name != "train" and unseen:
            labs = ", ".join(f"{lab} ({c})" for lab, c in sorted(unseen.items()))
            add(
                Finding(
                    WARNING,
                    "unseen-label",
                    name,
                    f"label(s) not in train: {labs}; a model trained on train cannot predict them",
                    sum(unseen.values()),
                    tuple(sorted(unseen)),
                )
            )


def _text_key(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def _leaks(splits: dict[str, list[Example]], add: Callable[[Finding], None]) -> None:
    """Identical texts (after NFC and whitespace collapse) in two splits; each later split against each earlier."""
    names = list(splits)
    first_id: dict[str, dict[str, str]] = {n: {} for n in names}
    for n in names:
        for ex in splits[n]:
            first_id[n].setdefault(_text_key(ex.text), ex.id)
    for j, later in enumerate(names):
        for earlier in names[:j]:
            shared = [ex for ex in splits[later] if _text_key(ex.text) in first_id[earlier]]
            if not shared:
                continue
            texts = len({_text_key(ex.text) for ex in shared})
            eg = tuple(f"{ex.id}={first_id[earlier][_text_key(ex.text)]}" for ex in shared[:SHOW])
            add(
                Finding(
                    WARNING,
                    "leak",
                    later,
                    f"{len(shared)} sentence(s) ({texts} distinct text(s)) identical to "
                    f"sentences of {earlier} (leakage: scores on them measure memory)",
                    len(shared),
                    eg,
                )
            )


def _too_long(
    splits: dict[str, list[Example]],
    tokenizer: Any,
    scheme_name: str,
    max_seq_len: int,
    prompt_format: PromptFormat | None,
    add: Callable[[Finding], None],
) -> None:
    # Training's own rule (kner.training.batching.tokenize_examples): prompt + answer tags + EOS, encoded
    # by PromptEncoder.encode_examples, which training and inference share.
    fmt = prompt_format or PromptFormat()
    encoder = PromptEncoder(tokenizer, fmt, load_scheme(scheme_name))
    for name, exs in splits.items():
        if not exs:
            continue
        too_long = [
            ex.id
            for ex, enc in zip(exs, encoder.encode_examples(exs, fmt.separator))
            if len(enc.input_ids) > max_seq_len
        ]
        if not too_long:
            continue
        every = name == "train" and len(too_long) == len(exs)
        effect = "training skips them" if name in ("train", "dev") else "longer than any training example"
        add(
            Finding(
                ERROR if every else WARNING,
                "too-long",
                name,
                f"{len(too_long)} of {len(exs)} sentence(s) longer than max_seq_len={max_seq_len} tokens "
                f"({scheme_name} prompt + answer + EOS): {effect}",
                len(too_long),
                tuple(too_long[:SHOW]),
            )
        )


def check_prepared(folder: str | Path, logger: logging.Logger | None = None) -> CheckReport:
    """``kner run``'s check of the prepare stage's split: warnings are logged, errors stop the run
    before training with one line naming the split and the problem (the first error; all are logged)."""
    logger = logger or logging.getLogger("kner.pipeline")
    report = check_folder(folder)
    for f in report.findings:
        (logger.error if f.severity == ERROR else logger.warning)("data check: %s", f.line())
    if report.errors:
        more = len(report.errors) - 1
        raise DataError(
            f"data check failed, {report.errors[0].line()}"
            + (f" (and {more} more error{'s' * (more != 1)})" if more else "")
            + f"; `kner data check {folder}` lists everything",
            folder,
        )
    return report
