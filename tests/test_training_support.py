"""Shared helpers for the training tests: KMOU examples and tiny models.

Until ``kner.readers`` lands, a minimal parser of the KMOU ``## <surface:TAG>`` markup
lines stands in for it.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

import pytest

from kner.example import Entity, Example, validate

DATA = Path(os.environ.get("KNER_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
KMOU = DATA / "kmou" / "corpus"
LLAMA_TOK = DATA.parent / "tokenizers" / "llama-2"

_TAG = re.compile(r"<([^<>]+?):([A-Z]{2,3})>")


def parse_markup(line: str) -> tuple[str, list[Entity]]:
    text, ents, pos = [], [], 0
    for m in _TAG.finditer(line):
        text.append(line[pos:m.start()])
        start = sum(map(len, text))
        text.append(m.group(1))
        ents.append(Entity(start, start + len(m.group(1)), m.group(2), m.group(1)))
        pos = m.end()
    text.append(line[pos:])
    return "".join(text), ents


def read_kmou_file(path: Path) -> list[Example]:
    heads = [l[3:].rstrip("\n") for l in path.read_text(encoding="utf-8").splitlines() if l.startswith("## ")]
    out = []
    for i in range(0, len(heads) - 2, 3):
        raw, markup = heads[i + 1], heads[i + 2]
        text, ents = parse_markup(markup)
        if text != raw:
            continue  # the helper only needs clean sentences; the real reader reports these
        ex = Example(f"{path.stem}:{heads[i]}", text, ents, {"source": str(path)})
        validate(ex)
        out.append(ex)
    return out


@lru_cache(maxsize=None)
def kmou_examples(n_files: int = 4) -> tuple[Example, ...]:
    if not KMOU.is_dir():
        pytest.skip(f"KMOU corpus not found at {KMOU}")
    try:  # the real reader, once it exists
        from kner.readers import read_dataset  # type: ignore
    except ImportError:
        read_dataset = None
    files = sorted(KMOU.glob("*.txt"))[:n_files]
    exs: list[Example] = []
    for f in files:
        exs += read_kmou_file(f)
    return tuple(exs)


@lru_cache(maxsize=None)
def llama_tokenizer():
    if not LLAMA_TOK.is_dir():
        pytest.skip(f"LLaMA-2 tokenizer not found at {LLAMA_TOK}")
    from kner.modeling import load_tokenizer
    return load_tokenizer(str(LLAMA_TOK))


def test_markup_parser_offsets():
    text, ents = parse_markup("이미 수상자(<2000년:DAT> <김대중:PER> 전 대통령)")
    assert text == "이미 수상자(2000년 김대중 전 대통령)"
    assert [(e.label, text[e.start:e.end]) for e in ents] == [("DAT", "2000년"), ("PER", "김대중")]


def test_kmou_examples_load():
    exs = kmou_examples(1)
    assert len(exs) > 10 and any(e.entities for e in exs)
