"""Where the datasets are, and the default KMOU split every benchmark uses.

``data_dir()`` is ``$KNER_DATA_DIR``, else ``../shared/datasets`` relative to the
working directory, else relative to the repository checkout. The layout under it
is that of ``kner.data.acquire`` (``kmou/corpus``, ``kmou/2016klp``, ``klue-ner``).
"""

from __future__ import annotations

import os
from pathlib import Path

from kner.data.example import Example
from kner.errors import KnerError

_REPO = Path(__file__).resolve().parents[1]
DEFAULT_RATIOS = (0.8, 0.1, 0.1)
DEFAULT_SEED = 13
_cache: dict[Path, list[Example]] = {}


def data_dir() -> Path:
    env = os.environ.get("KNER_DATA_DIR")
    if env:
        p = Path(env)
        if not p.is_dir():
            raise KnerError(f"KNER_DATA_DIR={env} is not a folder")
        return p
    for p in (Path.cwd().parent / "shared" / "datasets", _REPO.parent / "shared" / "datasets"):
        if p.is_dir():
            return p
    raise KnerError(
        "no dataset folder found: set KNER_DATA_DIR to a folder holding kmou/corpus/*.txt "
        "(the KMOU corpus, 1,284 files), kmou/2016klp/ner.{train,dev,test} and "
        "klue-ner/klue-ner-v1.1_dev.tsv, or place that folder at ../shared/datasets"
    )


def kmou_examples(root: str | Path | None = None) -> list[Example]:
    """All KMOU corpus sentences (read once per process; checksums verified by ``kner.data.acquire``)."""
    from kner.data.acquire import locate
    from kner.data.readers import read_dataset

    folder = locate("kmou", root or data_dir(), download=False).resolve()
    if folder not in _cache:
        _cache[folder] = read_dataset("kmou", folder).examples
    # Fresh objects each call: callers may relabel or edit examples without touching the cache.
    return [Example(e.id, e.text, list(e.entities), dict(e.meta)) for e in _cache[folder]]


def default_kmou_split(data_dir: str | Path | None = None) -> dict[str, list[Example]]:
    """The 80/10/10 KMOU split by document, seed 13 (sizes in docs/data.md)."""
    from kner.data.splits import split_by_document

    return split_by_document(kmou_examples(data_dir), DEFAULT_RATIOS, DEFAULT_SEED)
