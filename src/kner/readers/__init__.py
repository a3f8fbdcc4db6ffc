"""Dataset readers: every supported format -> canonical ``Example``s with character offsets.

``read_dataset(fmt, path, **opts)`` reads one file, or every file of a folder
that matches the format's pattern (not recursive, sorted by name), and returns a
``ReadResult``: examples, problems (path, line, sentence id, reason) and the
number of sentences it could not convert. Every example has ``meta["doc"]``
(its document, for splitting) and ``meta["source"]`` (``file:line``).

Formats (``FORMATS``): kmou, klp2016, klue, naver, multiconer, conll, jsonl.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kner.errors import ConfigError, DataError
from kner.readers import conll, jsonl, klp2016, klue, kmou, multiconer, naver
from kner.readers.base import Problem, ReadResult

__all__ = ["FORMATS", "Format", "Problem", "ReadResult", "native_scheme", "read_dataset"]


@dataclass(frozen=True)
class Format:
    name: str
    read: Callable[..., ReadResult]
    pattern: str                # files taken from a folder
    scheme: str | None          # native label scheme (None: labels are whatever the file has)
    options: tuple[str, ...]    # keyword options the reader accepts
    description: str


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("kmou", kmou.read, "*.txt", "kmou", ("check_bio",),
           "KMOU corpus: '## N', '## raw', '## <markup:TAG>', morpheme BIO lines"),
    Format("klp2016", klp2016.read, "ner.*", "klp2016", ("check_bio",),
           "KMOU 2016klp: '; raw', '$<markup:TAG>', eojeol/morpheme B_TAG/I/O lines"),
    Format("klue", klue.read, "*.tsv", "klue", ("check_bio",),
           "KLUE-NER TSV: '## id<TAB><markup:TAG>', then char<TAB>BIO lines"),
    Format("naver", naver.read, "*", "naver", ("trim_particles",),
           "NAVER NER 2018: index<TAB>word<TAB>TAG_B/TAG_I/-"),
    Format("multiconer", multiconer.read, "*.conll", "multiconer_v2", ("version",),
           "MultiCoNER v1/v2 Korean CoNLL: '# id <uuid>', 'token _ _ TAG'"),
    Format("conll", conll.read, "*", None, ("level", "space_token"),
           "generic CoNLL BIO/BIOES, token first and tag last"),
    Format("jsonl", jsonl.read, "*.jsonl", None, (),
           "kner canonical JSONL"),
)}


def _format(fmt: str) -> Format:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown data format {fmt!r}; known: {', '.join(FORMATS)}")
    return FORMATS[fmt]


def native_scheme(fmt: str, **opts) -> str | None:
    """Name of the label scheme a format's tags belong to; None for conll/jsonl (no fixed scheme)."""
    f = _format(fmt)
    if fmt == "multiconer" and str(opts.get("version", "")) in ("1", "v1"):
        return "multiconer_v1"
    return f.scheme


def files_of(fmt: str, path: str | Path) -> list[Path]:
    f = _format(fmt)
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.exists():
        raise DataError("no such file or folder", path)
    files = sorted(p for p in path.glob(f.pattern) if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(f"no {fmt} files (matching {f.pattern!r}) in this folder", path)
    return files


def read_dataset(fmt: str, path: str | Path, **opts) -> ReadResult:
    f = _format(fmt)
    bad = sorted(set(opts) - set(f.options))
    if bad:
        raise ConfigError(f"format {fmt!r} has no option {', '.join(bad)}; its options: {', '.join(f.options) or 'none'}")
    result = ReadResult(scheme=f.scheme)
    schemes = set()
    for p in files_of(fmt, path):
        r = f.read(p, **opts)
        schemes.add(r.scheme)
        result.extend(r)
    if len(schemes) > 1:
        raise DataError(f"files of different label schemes in one folder: {', '.join(sorted(map(str, schemes)))}", path)
    result.scheme = schemes.pop() if schemes else f.scheme
    return result
