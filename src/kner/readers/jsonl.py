"""kner's canonical JSONL (``kner.example``), validated.

Examples that lack ``meta.doc`` become their own document (``file:id``): with no
document information the safe assumption for splitting is independent sentences.
"""

from __future__ import annotations

from pathlib import Path

from kner.example import iter_jsonl
from kner.readers.base import ReadResult, numbered_lines


def read(path: Path) -> ReadResult:
    res = ReadResult(scheme=None, files=1)
    # iter_jsonl skips blank lines; pair its records with the line numbers they came from.
    linenos = [n for n, line in numbered_lines(path) if line.strip()]
    for lineno, ex in zip(linenos, iter_jsonl(path)):
        ex.meta.setdefault("doc", f"{path.name}:{ex.id}")
        ex.meta.setdefault("source", f"{path.name}:{lineno}")
        res.examples.append(ex)
    return res
