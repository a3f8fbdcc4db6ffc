"""KLUE-labelled sentences for the metric and report tests, read without ``kner.data.readers``.

Independent of ``kner.data.readers`` on purpose: metric tests must not share a bug with the reader.
The sentences are the KMOU fixture's (tests/fixtures/kmou), taken from each sentence's
``<span:TAG>`` markup line and relabelled with KLUE's tags, so every clone has them.
"""

from __future__ import annotations

import re
from pathlib import Path

from kner.data.example import Entity, Example

KLUE = Path(__file__).resolve().parent / "fixtures" / "kmou" / "corpus"
# KMOU -> KLUE-NER tags; POH (other proper nouns) has no KLUE tag and is left untagged.
TO_KLUE = {
    "PER": "PS",
    "LOC": "LC",
    "ORG": "OG",
    "DAT": "DT",
    "TIM": "TI",
    "DUR": "QT",
    "MNY": "QT",
    "PNT": "QT",
    "NOH": "QT",
}
_TAG = re.compile(r"<([^<>]+?):([A-Z]{2,3})>")


def _parse(markup: str) -> tuple[str, list[tuple[int, int, str]]]:
    text, spans, pos = "", [], 0
    for m in _TAG.finditer(markup):
        text += markup[pos : m.start()]
        spans.append((len(text), len(text) + len(m.group(1)), m.group(2)))
        text += m.group(1)
        pos = m.end()
    return text + markup[pos:], spans


def load_klue(n: int) -> list[Example]:
    """The first ``n`` sentences whose markup spells the raw text exactly."""
    out = []
    for path in sorted(KLUE.glob("*.txt")):
        heads = [ln[3:] for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith("## ")]
        for i in range(0, len(heads) - 2, 3):
            text, spans = _parse(heads[i + 2])
            if text != heads[i + 1]:
                continue
            ents = [Entity(s, e, TO_KLUE[lab], text[s:e]) for s, e, lab in spans if lab in TO_KLUE]
            out.append(Example(f"{path.stem}:{heads[i]}", text, ents))
            if len(out) == n:
                return out
    return out
