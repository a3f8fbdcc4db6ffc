"""The tag-grammar constraint, without a model: token byte tables, escaping, byte fallback, order.

Random logits stand in for a model: whatever they prefer, the chooser may only
pick tokens the grammar allows, so every output must parse and every entity
must sit exactly at its offsets.
"""

from __future__ import annotations

import random
import re

import pytest
import torch

from kner.data.example import Entity
from kner.data.schemes import load_scheme
from kner.inference.constrained import AFTER, ConstrainedChooser, TagConstraint, TagGrammar, TextContext
from kner.inference.vocab import TokenTable
from kner.model.loading import load_tokenizer
from kner.model.prompt import parse_tags


@pytest.fixture(scope="module")
def llama(llama_dir):
    """The LLaMA-2-style tokenizer of tiny_llama.py: ``▁`` pieces and <0xNN> byte fallback."""
    tok = load_tokenizer(str(llama_dir))
    return tok, TokenTable.from_tokenizer(tok)


@pytest.fixture(scope="module")
def scheme():
    return load_scheme("spacy19")


def simulate(grammar, texts, steps=80, seed=0, boost=None, table=None):
    """Drive a ConstrainedChooser with random logits (optionally boosting some tokens)."""
    g = torch.Generator().manual_seed(seed)
    chooser = ConstrainedChooser(grammar, texts)
    vocab = len(grammar.table)
    rows = list(range(len(texts)))
    for _ in range(steps):
        live = [r for r in rows if not chooser.done(r)]
        if not live:
            break
        logits = torch.randn(len(live), vocab, generator=g)
        if boost is not None:
            logits[:, boost[0]] += boost[1]
        chooser.choose(logits, live)
    return chooser


def check_outputs(chooser, texts, scheme):
    """Every output parses, every entity is text[start:end], entities move left to right."""
    n_ents = 0
    for row, text in zip(chooser.rows, texts):
        out, _ = row.output()
        res = parse_tags(out, text, scheme)
        assert res.ok, (out, text, res.problems())
        assert res.out_of_order == 0, (out, text)
        prev_end = 0
        for e in res.entities:
            assert text[e.start : e.end] == e.text and e.text == e.text.strip()
            assert e.label in scheme.names
            assert e.start >= prev_end
            prev_end = e.end
        n_ents += len(res.entities)
    return n_ents


def boosted(table, predicate, amount):
    ids = torch.tensor([i for i, b in enumerate(table.token_bytes) if b and predicate(b)])
    return ids, amount


# -- token byte tables ---------------------------------------------------------------


_BYTE = re.compile(r"<0x[0-9A-F]{2}>")


def check_token_bytes(tok):
    table = TokenTable.from_tokenizer(tok)
    assert table.kind == "sentencepiece"
    assert table.token_bytes[tok.eos_token_id] is None and tok.eos_token_id in table.eos_ids
    rng = random.Random(0)
    pieces = [
        i
        for i, b in enumerate(table.token_bytes)
        if b is not None and not _BYTE.fullmatch(tok.convert_ids_to_tokens(i))
    ]
    space = tok.convert_tokens_to_ids("▁")
    for _ in range(300):
        ids = [space] + [rng.choice(pieces) for _ in range(6)]
        # Byte tokens as a whole character (a random syllable): HF decodes an invalid byte run
        # as one replacement character per byte, ASCII bytes included, which no output has.
        syllable = chr(rng.randrange(0xAC00, 0xD7A4)).encode("utf-8")
        ids[rng.randrange(1, 7) : 1] = [tok.convert_tokens_to_ids(f"<0x{b:02X}>") for b in syllable]
        # The decoder strips the first leading space; the anchor token absorbs that.
        assert table.decode(ids)[1:] == tok.decode(ids, skip_special_tokens=False), ids
    # Korean through byte fallback: 겐 is <0xEA><0xB2><0x90> in LLaMA-2.
    ids = tok("겐", add_special_tokens=False)["input_ids"]
    assert b"".join(table.token_bytes[i] for i in ids).decode("utf-8").strip() == "겐"
    return ids


def test_token_bytes_spell_what_the_tokenizer_decodes(llama):
    ids = check_token_bytes(llama[0])
    assert llama[0].convert_ids_to_tokens(ids)[-3:] == ["<0xEA>", "<0xB2>", "<0x90>"]


def test_byte_level_bpe_table():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["이순신은 조선 중기의 무신이다.", "서울특별시 <종로구> 세종대로 175", "a:b\\c 1,234원"] * 20
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    table = TokenTable.from_tokenizer(tok)
    assert table.kind == "bytelevel"
    rng = random.Random(1)
    usable = [i for i, b in enumerate(table.token_bytes) if b is not None]
    for _ in range(200):
        ids = [rng.choice(usable) for _ in range(5)]
        assert table.decode(ids) == tok.decode(ids), ids
    sch = load_scheme("spacy19")
    texts = ["이순신은 조선 중기의 무신이다.", "서울특별시 <종로구> 세종대로 175", "a:b\\c 1,234원"]
    ch = simulate(
        TagGrammar(table, sch.names), texts, steps=120, boost=boosted(table, lambda b: b"<" in b or b">" in b, 4.0)
    )
    assert check_outputs(ch, texts, sch) > 0


# -- grammar rules, byte by byte ----------------------------------------------------


def run_bytes(grammar, text, output: str):
    """Feed ``output`` byte by byte; return the final state or None where it breaks."""
    ctx = TextContext(text)
    st = grammar.start_state()
    for b in output.encode("utf-8"):
        st = grammar.step(st, b, ctx)
        if st is None:
            return None
    return st


def test_grammar_accepts_exactly_the_tag_language(llama, scheme):
    g = TagGrammar(llama[1], scheme.names)
    text = "a<b> c:d \\e 이순신"
    ok = [
        "<PER:a\\<b\\>>",
        "<PER:c:d>",
        "<PER:c\\:d>",
        "<PER:\\\\e>",
        "<PER:이순신>",
        "<PER:a> <ORG:c:d> <LOC:이순신>",
        " <PER:a>",
        "\n<PER:a>",
    ]
    for out in ok:
        st = run_bytes(g, text, out)
        assert st is not None and st[0] == AFTER, out
        assert parse_tags(out, text, scheme).ok
    bad = [
        "<PER:a<b>",
        "<PER:b>>",
        "<PER:\\e>",
        "<PER: c>",
        "<PER:c >",
        "<PER:>",
        "<FOO:a>",
        "<per:a>",
        "<PER:x>",
        "<PER:이순신> <PER:a>",  # before the cursor
        "<PER:a>  <ORG:c>",
        "<PER:a><ORG:c>",  # separator is exactly one space
        "  <PER:a>",
        "x",
    ]
    for out in bad:
        assert run_bytes(g, text, out) is None, out


def test_byte_fallback_partial_syllables(llama, scheme):
    tok, table = llama
    g = TagGrammar(table, scheme.names)
    text = "오에 겐자부로는"
    byte_ids = [tok.convert_tokens_to_ids(f"<0x{b:02X}>") for b in "겐".encode()]
    row = TagConstraint(g, text)
    for tid in [tok.convert_tokens_to_ids("<"), tok.convert_tokens_to_ids("PER"), tok.convert_tokens_to_ids(":")]:
        assert row.accepts(tid)
        row.advance(tid)
    close = tok.convert_tokens_to_ids(">")
    for k, tid in enumerate(byte_ids):
        assert tid in set(row.allowed().tolist())
        row.advance(tid)
        # '>' only once the syllable is complete.
        assert row.accepts(close) == (k == 2)
    row.advance(close)
    out, truncated = row.output()
    assert out == "<PER:겐>" and not truncated
    assert parse_tags(out, text, scheme).entities == [Entity(3, 4, "PER", "겐")]


def test_leftmost_occurrence_matches_align(llama, scheme):
    tok, table = llama
    g = TagGrammar(table, scheme.names)
    text = "일본과 일본, 그리고 일본"
    st = run_bytes(g, text, "<LOC:일본> <LOC:일본>")
    assert st[0] == AFTER and st[1] == len("일본과 일본".encode())
    res = parse_tags("<LOC:일본> <LOC:일본>", text, scheme)
    assert [e.start for e in res.entities] == [0, 4]


def test_allowed_set_equals_single_token_checks(llama, scheme):
    """The trie walk finds exactly the tokens a brute-force check accepts (sampled states)."""
    tok, table = llama
    g = TagGrammar(table, scheme.names)
    text = "서울 <종로구>에서 1,234원: 이순신 \\ 끝"
    rng = random.Random(3)
    usable = [i for i, b in enumerate(table.token_bytes) if b is not None]
    sample = rng.sample(usable, min(3000, len(usable)))
    for prefix in ["", "<", "<WORK_", "<PER:", "<PER:서", "<PER:\\", "<PER:1,2", "<PER:이순신>", "<PER:이순신> "]:
        row = TagConstraint(g, text)
        for b in prefix.encode("utf-8"):
            row.state = g.step(row.state, b, row.ctx)
            assert row.state is not None, prefix
        allowed = set(row.allowed().tolist())
        brute = {i for i in sample if row.accepts(i)}
        assert brute == allowed & set(sample), (prefix, sorted(brute ^ (allowed & set(sample)))[:10])


# -- end to end with random logits -----------------------------------------------------


def test_escaping_and_special_characters(llama, scheme):
    tok, table = llama
    texts = ["a<b>c", "x > y < z", "키:값 \\ 경로", "<<>>", "::\\\\::", "<PER:홍길동>", "꺾쇠〈괄호〉와 <진짜>"]
    g = TagGrammar(table, scheme.names)
    ch = simulate(g, texts, steps=150, seed=5, boost=boosted(table, lambda b: any(c in b for c in b"<>\\:"), 6.0))
    assert check_outputs(ch, texts, scheme) > 0
    # Some entity really had to be escaped.
    assert any("\\" in row.output()[0] for row in ch.rows)


def test_random_logits_on_kmou_sentences(llama, scheme, datasets_dir):
    from kner.data.readers import read_dataset

    files = sorted((datasets_dir / "kmou" / "corpus").glob("*.txt"))[:20]
    texts = []
    for f in files:
        texts += [e.text for e in read_dataset("kmou", f).examples]
    texts = texts[:200]
    assert len(texts) == 200
    tok, table = llama
    g = TagGrammar(table, scheme.names)
    ch = simulate(g, texts, steps=100, seed=7, boost=boosted(table, lambda b: b.strip().startswith(b"<"), 3.0))
    assert check_outputs(ch, texts, scheme) > 100


def test_ignore_eos_keeps_generating(llama, scheme):
    tok, table = llama
    g = TagGrammar(table, scheme.names, ignore_eos=True)
    row = TagConstraint(g, "이순신")
    assert tok.eos_token_id not in set(row.allowed().tolist())
    assert not row.accepts(tok.eos_token_id)
    g2 = TagGrammar(table, scheme.names)
    assert tok.eos_token_id in set(TagConstraint(g2, "이순신").allowed().tolist())
    # Nothing to tag: only EOS is allowed.
    assert TagConstraint(g2, "   ").allowed().tolist() == sorted(table.eos_ids)
    assert len(TagConstraint(g, "   ").allowed()) == 0


def test_truncated_output_drops_the_unfinished_tag(llama, scheme):
    tok, table = llama
    g = TagGrammar(table, scheme.names)
    row = TagConstraint(g, "이순신과 원균")
    for tid in tok("<PER:이순신> <PER:원", add_special_tokens=False)["input_ids"]:
        assert row.accepts(tid), tok.convert_ids_to_tokens(tid)
        row.advance(tid)
    out, truncated = row.output()
    assert truncated and out.strip() == "<PER:이순신>"
    row.advance(tok.convert_tokens_to_ids(">"))
    out, truncated = row.output()
    assert not truncated and parse_tags(out, "이순신과 원균", scheme).entities == [
        Entity(0, 3, "PER", "이순신"),
        Entity(5, 6, "PER", "원"),
    ]
