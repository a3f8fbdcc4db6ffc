"""The first KLUE-NER dev sentences read straight from the per-character BIO column.

Independent of ``kner.readers`` on purpose: metric tests must not share a bug with the reader.
"""

from __future__ import annotations

import os
from pathlib import Path

from kner.example import Entity, Example

DATA = Path(os.environ.get("KNER_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
KLUE = DATA / "klue-ner" / "klue-ner-v1.1_dev.first4000.tsv"


def load_klue(n: int) -> list[Example]:
    """First ``n`` sentences, entities taken from the per-character BIO column."""
    sents: list[tuple[str, list[tuple[str, str]]]] = []
    with KLUE.open(encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("## klue-ner"):
                if len(sents) == n:
                    break
                sents.append((line[3:].split("\t")[0], []))
            elif line and not line.startswith("##"):
                ch, tag = line.split("\t")
                sents[-1][1].append((ch, tag))
    out = []
    for sid, rows in sents:
        text = "".join(c for c, _ in rows)
        ents, start, label = [], None, None
        for i, (_, tag) in enumerate(rows + [("", "O")]):
            if start is not None and tag != f"I-{label}":
                ents.append(Entity(start, i, label, text[start:i]))
                start = None
            if tag.startswith("B-"):
                start, label = i, tag[2:]
        out.append(Example(sid, text, ents))
    return out
