"""Dataset readers: every supported format -> canonical ``Example``s with character offsets.

``read_dataset(fmt, path, **opts)`` reads one file, or every file of a folder
that matches the format's pattern (not recursive, sorted by name), and returns a
``ReadResult``: examples, problems (path, line, sentence id, reason) and the
number of sentences it could not convert. Every example has ``meta["doc"]``
(its document, for splitting) and ``meta["source"]`` (``file:line``).

Formats (``FORMATS``): kmou, klp2016, klue, naver, multiconer, conll, jsonl;
annotation tools: doccano, labelstudio, prodigy, spacy (DocBin), hf (Hugging Face
``datasets``; its path is a ``save_to_disk`` folder or a Hub id, read whole).
Writers back into those tools: ``kner.data.readers.writers``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kner.data.readers import (
    conll,
    doccano,
    hf,
    jsonl,
    klp2016,
    klue,
    kmou,
    labelstudio,
    multiconer,
    naver,
    prodigy,
    spacy_docbin,
)
from kner.data.readers.base import Problem, ReadResult
from kner.errors import ConfigError, DataError

__all__ = ["FORMATS", "Format", "Problem", "ReadResult", "native_scheme", "read_dataset"]


@dataclass(frozen=True)
class Format:
    name: str
    read: Callable[..., ReadResult]
    pattern: str  # files taken from a folder
    scheme: str | None  # native label scheme (None: labels are whatever the file has)
    options: tuple[str, ...]  # keyword options the reader accepts
    description: str


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "kmou",
            kmou.read,
            "*.txt",
            "kmou",
            ("check_bio",),
            "KMOU corpus: '## N', '## raw', '## <markup:TAG>', morpheme BIO lines",
        ),
        Format(
            "klp2016",
            klp2016.read,
            "ner.*",
            "klp2016",
            ("check_bio",),
            "KMOU 2016klp: '; raw', '$<markup:TAG>', eojeol/morpheme B_TAG/I/O lines",
        ),
        Format(
            "klue",
            klue.read,
            "*.tsv",
            "klue",
            ("check_bio",),
            "KLUE-NER TSV: '## id<TAB><markup:TAG>', then char<TAB>BIO lines",
        ),
        Format(
            "naver",
            naver.read,
            "*",
            "naver",
            ("trim_particles", "trim_punct"),
            "NAVER NER 2018: index<TAB>word<TAB>TAG lines, or 'words<TAB>tags' per line (KoBERT-NER)",
        ),
        Format(
            "multiconer",
            multiconer.read,
            "*.conll",
            "multiconer_v2",
            ("version",),
            "MultiCoNER v1/v2 CoNLL: '# id <uuid>', 'token _ _ TAG' (blind test files: 'token _ _')",
        ),
        Format(
            "conll",
            conll.read,
            "*",
            None,
            ("level", "space_token"),
            "generic CoNLL BIO/BIOES, token first and tag last",
        ),
        Format("jsonl", jsonl.read, "*.jsonl", None, (), "kner canonical JSONL"),
        Format(
            "doccano",
            doccano.read,
            "*.jsonl",
            None,
            ("offsets",),
            "doccano JSONL export: text + label [[start, end, LABEL]] or entities [{start_offset, ...}]",
        ),
        Format(
            "labelstudio",
            labelstudio.read,
            "*.json",
            None,
            ("text_key", "predictions", "offsets"),
            "Label Studio JSON (or JSON-MIN) export: tasks with data.text and annotations[].result[].value",
        ),
        Format(
            "prodigy",
            prodigy.read,
            "*.jsonl",
            None,
            (),
            "Prodigy/spaCy JSONL: text + spans [{start, end, label}], answer accept/reject/ignore",
        ),
        Format("spacy", spacy_docbin.read, "*.spacy", None, (), "spaCy DocBin (.spacy): doc.text and doc.ents"),
        Format(
            "hf",
            hf.read,
            "",
            None,
            ("split", "name", "tokens", "tags", "level"),
            "Hugging Face datasets (save_to_disk folder or Hub id): tokens + ClassLabel ner_tags",
        ),
    )
}


def _format(fmt: str) -> Format:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown data format {fmt!r}; known: {', '.join(FORMATS)}")
    return FORMATS[fmt]


def native_scheme(fmt: str, **opts: Any) -> str | None:
    """Name of the label scheme a format's tags belong to; None for conll/jsonl (no fixed scheme)."""
    f = _format(fmt)
    if fmt == "multiconer" and str(opts.get("version", "")) in ("1", "v1"):
        return "multiconer_v1"
    return f.scheme


# Files a folder read passes over: documentation, code, archives and tool output that sit beside
# corpora (KoBERT-NER keeps label.txt and cached_* feature files in its data folder).
_NOT_DATA_NAMES = (
    "readme*",
    "license*",
    "licence*",
    "copying*",
    "notice*",
    "changelog*",
    "changes*",
    "authors*",
    "citation*",
    "makefile",
    "requirements*.txt",
    "label.txt",
    "labels.txt",
    "cached_*",
    "thumbs.db",
    "desktop.ini",
)
_NOT_DATA_SUFFIXES = {
    ".md",
    ".markdown",
    ".rst",
    ".html",
    ".htm",
    ".pdf",
    ".doc",
    ".docx",
    ".py",
    ".pyc",
    ".ipynb",
    ".sh",
    ".bat",
    ".yml",
    ".yaml",
    ".toml",
    ".cfg",
    ".ini",
    ".json",
    ".zip",
    ".gz",
    ".tgz",
    ".bz2",
    ".xz",
    ".7z",
    ".tar",
    ".rar",
    ".pkl",
    ".pt",
    ".bin",
    ".png",
    ".jpg",
    ".gif",
}


def _not_data(p: Path, pattern: str = "") -> bool:
    name = p.name.lower()
    return (
        name.startswith(".")
        or (
            p.suffix.lower() in _NOT_DATA_SUFFIXES and not pattern.lower().endswith(p.suffix.lower())
        )  # labelstudio *.json
        or any(fnmatch.fnmatch(name, pat) for pat in _NOT_DATA_NAMES)
    )


def files_of(fmt: str, path: str | Path, skipped: list[Path] | None = None) -> list[Path]:
    """The files to read: ``path`` itself, or the files of folder ``path`` matching the format's pattern,
    minus those plainly not data (README, LICENSE, ``*.md``, ``*.py``, hidden files, ...), which are
    appended to ``skipped``. A file named directly is always read."""
    f = _format(fmt)
    path = Path(path)
    if not f.pattern:  # the format's data is a folder (or a Hub id) read as a whole
        return [path]
    if path.is_file():
        return [path]
    if not path.exists():
        raise DataError("no such file or folder", path)
    files: list[Path] = []
    passed: list[Path] = []
    for p in sorted(path.glob(f.pattern)):
        if p.is_file():
            (passed if _not_data(p, f.pattern) else files).append(p)
    if skipped is not None:
        skipped.extend(passed)
    if not files:
        also = f" (passed over as not data: {', '.join(p.name for p in passed)})" if passed else ""
        raise DataError(f"no {fmt} files (matching {f.pattern!r}) in this folder{also}", path)
    return files


def _unique_ids(res: ReadResult, path: Path, seen: dict[str, tuple[Path, str]]) -> None:
    """Give every repeated id a suffix (``id-2``, ``id-3``, ...) and a ``duplicate-id`` problem row.

    Released files repeat ids (MultiCoNER II files hundreds, files of one folder each numbering from
    1); evaluation pairs gold and predictions by id, so ids must leave the reader unique.
    """
    for ex in res.examples:
        line = str(ex.meta.get("source", "")).rpartition(":")[2]
        if ex.id in seen:
            first, first_line = seen[ex.id]
            n = 2
            while f"{ex.id}-{n}" in seen:
                n += 1
            new = f"{ex.id}-{n}"
            where = f"line {first_line}" if first == path else f"{first.name}:{first_line}"
            res.problems.append(
                Problem(
                    str(path),
                    int(line) if line.isdigit() else None,
                    new,
                    f"id {ex.id} already used at {where}; this sentence is {new}",
                    "duplicate-id",
                )
            )
            if ex.meta.get("doc") == ex.id:
                ex.meta["doc"] = new
            ex.id = new
        seen[ex.id] = (path, line)


def read_dataset(fmt: str, path: str | Path, **opts: Any) -> ReadResult:
    f = _format(fmt)
    bad = sorted(set(opts) - set(f.options))
    if bad:
        raise ConfigError(
            f"format {fmt!r} has no option {', '.join(bad)}; its options: {', '.join(f.options) or 'none'}"
        )
    result = ReadResult(scheme=f.scheme)
    schemes = set()
    passed: list[Path] = []
    files = files_of(fmt, path, passed)
    if passed:
        names = ", ".join(p.name for p in passed[:5]) + (", ..." if len(passed) > 5 else "")
        result.notes[f"files passed over as not data ({names}; name a file to read it anyway)"] += len(passed)
    seen: dict[str, tuple[Path, str]] = {}  # id -> (file, line) of its first use, across files
    for p in files:
        r = f.read(p, **opts)
        schemes.add(r.scheme)
        _unique_ids(r, p, seen)
        result.extend(r)
    if len(schemes) > 1:
        raise DataError(f"files of different label schemes in one folder: {', '.join(sorted(map(str, schemes)))}", path)
    result.scheme = schemes.pop() if schemes else f.scheme
    return result
