"""Shared helpers for the training tests: KMOU examples, a LLaMA-2-style tokenizer, tiny models.

KMOU sentences come from ``kner.data.readers``; the minimal markup parser below was the
stand-in before it existed and is still checked against it.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from kner.data.example import Entity, Example, validate
from tiny_llama import KMOU_FIXTURE as KMOU
from tiny_llama import tiny_llama, tiny_llama_dir

# The tokenizer folder, with Llama-2-7b's config.json beside it (what test_training_memory reads).
LLAMA_TOK = tiny_llama_dir()

_TAG = re.compile(r"<([^<>]+?):([A-Z]{2,3})>")


def parse_markup(line: str) -> tuple[str, list[Entity]]:
    text, ents, pos = [], [], 0
    for m in _TAG.finditer(line):
        text.append(line[pos : m.start()])
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


@cache
def kmou_examples(n_files: int = 4) -> tuple[Example, ...]:
    """Sentences of the first ``n_files`` KMOU corpus files (about 14 a file; the fixture has 15), KMOU labels."""
    files = sorted(KMOU.glob("*.txt"))[:n_files]
    try:
        from kner.data.readers import read_dataset
    except ImportError:  # before kner.data.readers existed; kept as a fallback
        return tuple(ex for f in files for ex in read_kmou_file(f))
    return tuple(ex for f in files for ex in read_dataset("kmou", f).examples)


def llama_tokenizer():
    """The tiny LLaMA-2-style tokenizer (tiny_llama.py): same pieces, bytes and special ids as LLaMA-2."""
    return tiny_llama()


def test_markup_parser_offsets():
    text, ents = parse_markup("이미 수상자(<2000년:DAT> <김대중:PER> 전 대통령)")
    assert text == "이미 수상자(2000년 김대중 전 대통령)"
    assert [(e.label, text[e.start : e.end]) for e in ents] == [("DAT", "2000년"), ("PER", "김대중")]


def test_kmou_examples_load():
    exs = kmou_examples(1)
    assert len(exs) > 10 and any(e.entities for e in exs)
    mine = read_kmou_file(sorted(KMOU.glob("*.txt"))[0])
    same = {e.text: {(x.start, x.end, x.label) for x in e.entities} for e in mine}
    agree = sum(same.get(e.text) == {(x.start, x.end, x.label) for x in e.entities} for e in exs)
    assert agree >= 0.9 * len(exs)


def tiny_model_dir(tmp_path: Path, arch: str = "llama", seed: int = 0, **kw) -> Path:
    """A tiny random model of ``arch`` with the LLaMA-2-style tokenizer, saved like a hub model."""
    from kner.model.loading import build_model_from_config, save_pretrained_dir, tiny_config

    tok = llama_tokenizer()
    model = build_model_from_config(tiny_config(arch, len(tok), **kw), seed=seed)
    return save_pretrained_dir(model, tok, tmp_path / f"tiny-{arch}")
