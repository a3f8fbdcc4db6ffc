"""Models built from scratch: a tokenizer trained on the corpus and a small random decoder.

Used by the CPU quickstart and the GPU from-scratch proof run: they exercise
the same training and inference code paths as a 7B model, on hardware where a
7B model cannot run.
"""

from __future__ import annotations

from typing import Iterable

from kner.modeling import build_model_from_config, tiny_config

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4000, extra_texts: Iterable[str] = ()):
    """Byte-level BPE trained on ``texts``: every string is encodable (so any input
    substring can be copied into the answer), and frequent Korean syllables and
    the instruction's words become single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = list(texts) + list(extra_texts)
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)
    fast.add_bos_token = False
    return fast


def build_scratch_model(tokenizer, arch: str = "llama", hidden: int = 128, layers: int = 4, heads: int = 4,
                        kv_heads: int | None = None, intermediate: int | None = None, max_positions: int = 1024,
                        seed: int = 0):
    cfg = tiny_config(arch, vocab_size=len(tokenizer), hidden=hidden, layers=layers, heads=heads,
                      kv_heads=kv_heads or heads, intermediate=intermediate or 4 * hidden,
                      max_positions=max_positions, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return build_model_from_config(cfg, seed=seed)
