"""kner's canonical JSONL (``kner.data.example``), validated.

Examples that lack ``meta.doc`` become their own document (``file:id``): with no
document information the safe assumption for splitting is independent sentences.
"""

from __future__ import annotations

from pathlib import Path

from kner.data.example import numbered_jsonl
from kner.data.readers.base import ReadResult


def read(path: Path) -> ReadResult:
    res = ReadResult(scheme=None, files=1)
    for lineno, ex in numbered_jsonl(path):
        ex.meta.setdefault("doc", f"{path.name}:{ex.id}")
        ex.meta.setdefault("source", f"{path.name}:{lineno}")
        res.examples.append(ex)
    return res
