"""Models built from scratch: a tokenizer trained on the corpus and a small random decoder.

Used by the CPU quickstart and the GPU from-scratch proof run: they exercise
the same training and inference code paths as a 7B model, on hardware where a
7B model cannot run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from kner.model.loading import build_model_from_config, tiny_config

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4000,
    extra_texts: Iterable[str] = (),
    kind: str = "bpe",
    min_count: int = 2,
    pieces: Iterable[str] = (),
):
    """A tokenizer for a model trained from scratch; every string is encodable.

    ``bpe``: byte-level BPE trained on ``texts``; frequent Korean syllables and the
    instruction's words become single tokens.
    ``char``: one token per character seen at least ``min_count`` times, byte
    fallback (``<0xNN>``) for the rest. An entity is then spelled with the same
    tokens in the answer as in the text -- copying is a lookup the model learns
    early -- where BPE tokenizes ``이순신`` in ``<PER:이순신>`` differently from
    ``이순신은`` in the sentence.
    ``pieces`` (char only): strings that become one token each wherever they occur,
    e.g. the instruction's lines and the ``<LABEL:`` openers. The fixed instruction
    then costs a few dozen tokens instead of ~600 characters, and choosing a label
    is one prediction.
    """
    if kind == "char":
        return _char_tokenizer(list(texts) + list(extra_texts), min_count, list(pieces))
    if kind != "bpe":
        raise ValueError(f"tokenizer kind must be bpe or char, not {kind!r}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = list(texts) + list(extra_texts)
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)
    fast.add_bos_token = False  # type: ignore[misc]  # it has a setter; the stubs say read-only
    return fast


def _char_tokenizer(corpus: list[str], min_count: int, pieces: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    counts = Counter(ch for text in corpus for ch in text)
    vocab: dict[str, int] = {}
    for piece in list(SPECIAL.values()) + [f"<0x{b:02X}>" for b in range(256)]:
        vocab[piece] = len(vocab)
    for ch, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if n >= min_count and ch not in vocab:
            vocab[ch] = len(vocab)
    # No merges and no pre-tokenizer: BPE then emits one token per known character.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(list(SPECIAL.values()))
    # Longest first: the tokenizers library prefers the first added token that matches.
    uniq = sorted(dict.fromkeys(p for p in pieces if len(p) > 1), key=len, reverse=True)
    tok.add_tokens([AddedToken(p, normalized=False, special=False) for p in uniq])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)
    fast.add_bos_token = False  # type: ignore[misc]  # it has a setter; the stubs say read-only
    return fast


def build_scratch_model(
    tokenizer,
    arch: str = "llama",
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int | None = None,
    intermediate: int | None = None,
    max_positions: int = 1024,
    seed: int = 0,
    **extra,
):
    """``extra``: further config settings of the architecture, e.g. ``attention_dropout``."""
    cfg = tiny_config(
        arch,
        vocab_size=len(tokenizer),
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads or heads,
        intermediate=intermediate or 4 * hidden,
        max_positions=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )
    return build_model_from_config(cfg, seed=seed)


def prompt_pieces(prefix: str, suffix: str, labels: Iterable[str]) -> list[str]:
    """The instruction's lines (newline kept) and every ``<LABEL:`` opener, for ``train_tokenizer(pieces=...)``."""
    lines = [ln for part in (prefix, suffix) for ln in part.splitlines(keepends=True)]
    return lines + [f"<{lab}:" for lab in labels]
