"""What each vocabulary token writes, as bytes, and a trie over those byte strings.

Constrained decoding works on bytes, not characters: LLaMA-2 spells about half
of Korean with byte-fallback tokens (``<0xEA>``), each a third of a syllable, so
a prefix of the output is often not valid UTF-8. Three tokenizer families are
handled:

* SentencePiece with byte fallback (LLaMA-2, Mistral, Gemma): ``▁`` is a space,
  ``<0xNN>`` is one raw byte, anything else is its UTF-8 text;
* byte-level BPE (Llama 3, Qwen2, GPT-2 style): every character of the token
  stands for one byte through the GPT-2 ``bytes_to_unicode`` table;
* anything else: the token's decoded text, UTF-8 encoded.

Special tokens (``<s>``, ``[INST]``, ``<|im_start|>``...) write nothing the
grammar accepts; they get ``None`` and are never allowed, except the
end-of-sequence ids, which the grammar treats as "stop". Added tokens that are
not special (the from-scratch tokenizer's ``<PER:`` pieces, Qwen3's ``<think>``)
write their literal content: the model may have learnt to emit them, and the
grammar still decides where their bytes are legal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte <-> printable-character table, used by every byte-level BPE.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _decoder_kind(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    desc = repr(getattr(backend, "decoder", None)) if backend is not None else ""
    if "ByteLevel" in desc:
        return "bytelevel"
    if "ByteFallback" in desc or "▁" in desc or getattr(tokenizer, "sp_model", None) is not None:
        return "sentencepiece"
    return "text"


def eos_token_ids(tokenizer, model=None) -> set[int]:
    """EOS ids from the tokenizer and, when given, the model's generation config (Llama 3 has two)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gc = getattr(model, "generation_config", None) if model is not None else None
    extra = getattr(gc, "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, (list, tuple)):
        ids.update(int(i) for i in extra)
    return ids


@dataclass
class TokenTable:
    """Per token id: its bytes (or None), plus a byte trie over all usable tokens."""

    token_bytes: list[bytes | None]
    eos_ids: set[int]
    kind: str
    # Trie: node 0 is the root; children[node][byte] -> node; ends[node] -> token ids ending there.
    children: list[dict[int, int]] = field(default_factory=list)
    ends: list[list[int]] = field(default_factory=list)

    @classmethod
    def from_tokenizer(cls, tokenizer, vocab_size: int | None = None, model=None) -> TokenTable:
        n = len(tokenizer)
        vocab_size = max(n, vocab_size or 0)
        kind = _decoder_kind(tokenizer)
        pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        added = {int(i): tok for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()}
        special.update(i for i, tok in added.items() if getattr(tok, "special", True))
        b2u = _bytes_to_unicode()
        u2b = {c: b for b, c in b2u.items()}
        out: list[bytes | None] = [None] * vocab_size
        for i, piece in enumerate(pieces):
            if i in special or piece is None:
                continue
            if i in added:  # stored as written, not in the model's piece alphabet
                b = str(getattr(added[i], "content", piece)).encode("utf-8")
            elif kind == "sentencepiece":
                m = _BYTE_TOKEN.fullmatch(piece)
                b = bytes([int(m.group(1), 16)]) if m else piece.replace("▁", " ").encode("utf-8")
            elif kind == "bytelevel":
                try:
                    b = bytes(u2b[c] for c in piece)
                except KeyError:  # not a byte-level piece after all
                    b = piece.encode("utf-8")
            else:
                b = tokenizer.convert_tokens_to_string([piece]).encode("utf-8")
            out[i] = b if b else None  # an empty token could be emitted forever
        table = cls(out, eos_token_ids(tokenizer, model), kind)
        table._build_trie()
        return table

    @classmethod
    def cached(cls, tokenizer, vocab_size: int | None = None, model=None) -> TokenTable:
        """``from_tokenizer``, built once per tokenizer object (a 128k vocabulary takes seconds)."""
        key = (max(len(tokenizer), vocab_size or 0), tuple(sorted(eos_token_ids(tokenizer, model))))
        store = tokenizer.__dict__.setdefault("_kner_token_tables", {})
        if key not in store:
            store[key] = cls.from_tokenizer(tokenizer, vocab_size, model)
        return store[key]

    def _build_trie(self) -> None:
        children: list[dict[int, int]] = [{}]
        ends: list[list[int]] = [[]]
        for tid, b in enumerate(self.token_bytes):
            if b is None:
                continue
            node = 0
            for byte in b:
                nxt = children[node].get(byte)
                if nxt is None:
                    nxt = len(children)
                    children[node][byte] = nxt
                    children.append({})
                    ends.append([])
                node = nxt
            ends[node].append(tid)
        self.children, self.ends = children, ends

    def __len__(self) -> int:
        return len(self.token_bytes)

    def decode(self, ids) -> str:
        """The text a list of generated ids spells (EOS and specials write nothing)."""
        return b"".join(self.token_bytes[i] or b"" for i in ids).decode("utf-8", errors="replace")
