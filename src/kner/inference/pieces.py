"""Texts to prompt pieces: what :class:`kner.inference.Extractor` (and ``kner serve``'s stream) decodes.

A text longer than ``max_chunk_tokens`` or than the model's context leaves room for is split
(:mod:`kner.inference.chunking`); every piece gets its full prompt ids -- through the same
:class:`~kner.model.prompt.PromptEncoder` training uses -- and its new-token budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from kner.errors import KnerError
from kner.inference.chunking import split_document
from kner.inference.memory import ModelDims
from kner.inference.options import ExtractorConfig
from kner.inference.results import RunStats
from kner.model.prompt import PromptEncoder


@dataclass
class Piece:
    doc: int
    offset: int
    text: str
    ids: list[int] = field(default_factory=list)  # full prompt ids
    text_tokens: int = 0
    max_new: int = 0
    output: str = ""
    truncated: bool = False


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def context_limit(model, tokenizer) -> int | None:
    lim = ModelDims.from_model(model).max_positions
    tml = getattr(tokenizer, "model_max_length", None)
    if tml and tml < 1_000_000:
        lim = min(lim, tml) if lim else tml
    return lim


def max_text_tokens(cfg: ExtractorConfig, ctx: int | None, tokenizer, prefix_len: int, suffix_text: str) -> int:
    """Most text tokens per piece: ``max_chunk_tokens``, or less where the context ``ctx`` must also hold
    the instruction (``prefix_len`` tokens), the suffix and the new-token budget."""
    limit = cfg.max_chunk_tokens
    if ctx:
        suffix = len(tokenizer(suffix_text, add_special_tokens=False)["input_ids"])
        room = ctx - prefix_len - suffix - cfg.new_tokens_overhead - 2
        fit = int(room / (1 + cfg.new_tokens_factor))
        if fit < 8:
            raise KnerError(
                f"the model's context ({ctx} tokens) leaves no room for text after the {prefix_len}-token instruction"
            )
        limit = min(limit, fit)
    return limit


def make_pieces(
    texts: Sequence[str],
    stats: RunStats,
    new_tokens: Sequence[int] | None,
    skip,
    *,
    cfg: ExtractorConfig,
    tokenizer,
    encoder: PromptEncoder,
    max_text: int,
) -> list[Piece]:
    """Pieces of the non-blank ``texts`` not in ``skip``, each with prompt ids and new-token budget
    (``new_tokens``: one fixed budget per text); counts empty and split texts in ``stats``."""
    tok = tokenizer
    pieces: list[Piece] = []
    todo = [(i, t) for i, t in enumerate(texts) if i not in skip and t.strip()]
    stats.empty = len(texts) - len(todo) - len(skip)
    if new_tokens is not None and len(new_tokens) != len(texts):
        raise ValueError("new_tokens needs one budget per text")
    counts = tok([t for _, t in todo], add_special_tokens=False)["input_ids"] if todo else []

    def count(s: str) -> int:
        return len(tok(s, add_special_tokens=False)["input_ids"])

    for (i, t), ids in zip(todo, counts):
        if len(ids) <= max_text:
            pieces.append(Piece(i, 0, t, text_tokens=len(ids)))
        else:
            stats.split_texts += 1
            for pc in split_document(t, count, max_text):
                pieces.append(Piece(i, pc.offset, pc.text, text_tokens=count(pc.text)))
    if pieces:
        for p in pieces:
            p.ids = encoder.prompt_ids(p.text).input_ids
            if new_tokens is not None:
                p.max_new = int(new_tokens[p.doc])
            else:
                p.max_new = math.ceil(p.text_tokens * cfg.new_tokens_factor) + cfg.new_tokens_overhead
            if cfg.max_new_tokens:
                p.max_new = min(p.max_new, cfg.max_new_tokens)
            p.max_new = max(1, p.max_new)
        stats.prompt_tokens = sum(len(p.ids) for p in pieces)
    return pieces
