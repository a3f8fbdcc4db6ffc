"""A tiny LLaMA-2-style tokenizer built from the KMOU fixture, so no test needs the real one.

It copies what the code under test looks at in LLaMA-2's tokenizer: SentencePiece BPE with
``▁`` for spaces (prepended to the first word), ``<0xNN>`` byte fallback for whatever the
vocabulary lacks (newlines and rare syllables such as 겐, as in LLaMA-2), ``<unk>`` 0,
``<s>`` 1 (added in front), ``</s>`` 2, no pad token, the same decoder. Built once a session.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from functools import cache
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
KMOU_FIXTURE = FIXTURES / "kmou" / "corpus"
SPECIAL = ["<unk>", "<s>", "</s>"]
# Left to byte fallback whatever the corpus says: the tests spell these with <0xNN> tokens.
BYTE_ONLY = "겐\n"


def _corpus() -> list[str]:
    from kner.data.readers import read_dataset
    from kner.data.schemes import load_scheme
    from kner.model.prompt import PromptFormat, render_tags

    exs = read_dataset("kmou", KMOU_FIXTURE).examples
    lines = [e.text for e in exs] + [render_tags(e.entities) for e in exs]
    for name in ("spacy19", "kmou", "klue"):
        lines += PromptFormat().prompt("", load_scheme(name)).splitlines() * 5
    return [ln for ln in lines if ln.strip()]


def build(folder: Path, vocab_size: int = 800, alphabet: int = 150) -> Path:
    """Small vocabulary and alphabet: Korean costs about as many tokens a sentence as in LLaMA-2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, LlamaTokenizerFast

    corpus = [ln.translate({ord(c): None for c in BYTE_ONLY}) for ln in _corpus()]
    bpe = Tokenizer(models.BPE())
    # SentencePiece does not merge across spaces: train on words, encode whole texts (split=False).
    # Punctuation apart while training, so that "<", "PER" and ":" are pieces of their own as in LLaMA-2.
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL + bytes_, limit_alphabet=alphabet, show_progress=False
    )
    bpe.train_from_iterator(corpus, trainer)
    spec = json.loads(bpe.to_str())
    # The byte pieces are ordinary vocabulary in LLaMA-2, not added tokens matched in the text.
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] in SPECIAL]
    spec["model"].update(byte_fallback=True, fuse_unk=True, unk_token=None)
    spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    fast = LlamaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        add_bos_token=True,
        add_eos_token=False,
        legacy=False,
    )
    fast.save_pretrained(folder)
    # A LLaMA-2-shaped config beside it, as in a hub folder (only its shape is read).
    (folder / "config.json").write_text(json.dumps(LLAMA2_7B_CONFIG, indent=1), encoding="utf-8")
    loaded = AutoTokenizer.from_pretrained(folder)
    assert [loaded.unk_token_id, loaded.bos_token_id, loaded.eos_token_id] == [0, 1, 2]
    return folder


# Llama-2-7b-hf's published config.json (architecture numbers only).
LLAMA2_7B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": None,
    "initializer_range": 0.02,
    "torch_dtype": "float16",
}


@cache
def tiny_llama_dir() -> Path:
    """The tokenizer folder, built on first use and removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="kner-tiny-llama-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return build(root / "tiny-llama")


@cache
def tiny_llama():
    from kner.model.loading import load_tokenizer

    return load_tokenizer(str(tiny_llama_dir()))
