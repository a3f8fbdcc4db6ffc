"""What every reader returns: examples plus an account of everything it could not take as is.

A reader never drops or repairs anything silently: each repair (an ``I-`` tag
with no ``B-``, a span trimmed of spaces, markup that disagrees with the BIO
lines) is a ``Problem`` row, and each sentence that could not be converted is
counted in ``skipped`` and has a problem row saying why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kner import textio
from kner.data.example import Entity, Example
from kner.textio import atomic_write


@dataclass(frozen=True)
class Problem:
    path: str
    line: int | None
    sentence_id: str
    reason: str
    kind: str = "other"  # short key for counting ("bio-mismatch", "i-without-b", ...)

    HEADER = "path\tline\tsentence_id\tkind\treason"

    def __str__(self) -> str:  # one TSV row, as written to problems.tsv
        reason = self.reason.replace("\t", " ").replace("\n", " ")
        return f"{self.path}\t{'' if self.line is None else self.line}\t{self.sentence_id}\t{self.kind}\t{reason}"


@dataclass
class ReadResult:
    examples: list[Example] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    skipped: int = 0  # sentences not converted; each has a problem row with the reason
    scheme: str | None = None  # native label scheme of what was read (None: unknown, e.g. generic CoNLL)
    files: int = 0
    notes: Counter[str] = field(default_factory=Counter)  # counts of deliberate changes, e.g. particles trimmed

    def extend(self, other: ReadResult) -> None:
        self.examples.extend(other.examples)
        self.problems.extend(other.problems)
        self.skipped += other.skipped
        self.files += other.files
        self.notes.update(other.notes)
        if self.scheme is None:
            self.scheme = other.scheme

    def problem_counts(self) -> Counter[str]:
        return Counter(p.kind for p in self.problems)

    def write_problems(self, path: str | Path) -> None:
        with atomic_write(path, what="problems file") as f:
            f.write(Problem.HEADER + "\n")
            for p in self.problems:
                f.write(f"{p}\n")


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its end-of-line), in the user's ``--encoding``; see
    :func:`kner.textio.numbered_lines` (BOM and CRLF tolerated, decode errors name file and line)."""
    return textio.numbered_lines(path)


def build_entities(text: str, spans: list[tuple[int, int, str]]) -> tuple[list[Any], list[tuple[str, str]]]:
    """Spans -> sorted ``Entity`` list; a repeated span keeps its first label and the rest are reported."""
    seen: dict[tuple[int, int], str] = {}
    notes: list[tuple[str, str]] = []
    ents = []
    for s, e, lab in spans:
        if (s, e) in seen:
            kind = "duplicate-entity" if seen[(s, e)] == lab else "two-labels"
            notes.append((kind, f"span [{s},{e}) {text[s:e]!r} tagged {lab} again (kept {seen[(s, e)]})"))
            continue
        seen[(s, e)] = lab
        ents.append(Entity(s, e, lab, text[s:e]))
    return sorted(ents), notes


def describe_spans(text: str, spans: Iterable[tuple[int, int, str]]) -> str:
    return ", ".join(f"{lab} {text[s:e]!r} [{s},{e})" for s, e, lab in sorted(spans)) or "none"
