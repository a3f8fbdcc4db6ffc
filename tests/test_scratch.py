"""From-scratch models: the character tokenizer with prompt pieces, mention replacement, and
a tiny model that learns a handful of sentences and extracts them back through the
constrained decoder (the path the GPU proof run takes)."""

from __future__ import annotations

import pytest

from helpers import char_tokenizer
from kner.data.augment import AugmentConfig, mention_pool, replace_mentions, training_variants
from kner.data.example import Entity, Example, validate
from kner.data.schemes import load_scheme
from kner.errors import ConfigError
from kner.model.prompt import PromptFormat, render_tags

SCHEME = load_scheme("spacy19")
TEXTS = [
    ("이순신은 1545년 한성에서 태어났다.", [("이순신", "PER"), ("1545년", "DATE"), ("한성", "GPE")]),
    ("삼성전자는 3분기에 12조 원을 벌었다.", [("삼성전자", "ORG"), ("3분기", "DATE"), ("12조 원", "MONEY")]),
    ("세종대왕이 한글을 만들었다.", [("세종대왕", "PER"), ("한글", "LANGUAGE")]),
    ("부산항에 배 3척이 들어왔다.", [("부산항", "FAC"), ("3척", "QUANTITY")]),
    ("김유신은 신라의 장군이었다.", [("김유신", "PER"), ("신라", "GPE")]),
    ("현대차가 서울에서 신차를 공개했다.", [("현대차", "ORG"), ("서울", "GPE")]),
]


def _examples() -> list[Example]:
    out = []
    for i, (text, ents) in enumerate(TEXTS):
        es = []
        for surface, label in ents:
            s = text.index(surface)
            es.append(Entity(s, s + len(surface), label, surface))
        out.append(Example(f"s{i}", text, es, {}))
    return out


def _char_tokenizer(exs):
    return char_tokenizer([e.text for e in exs], SCHEME, [render_tags(e.entities) for e in exs])


def test_char_tokenizer_spells_entities_as_in_the_text_and_the_instruction_in_few_pieces():
    from kner.model.prompt import PromptEncoder

    exs = _examples()
    tok = _char_tokenizer(exs)
    enc = PromptEncoder(tok, PromptFormat(), SCHEME)
    prefix, _ = PromptFormat().parts(SCHEME)
    assert len(enc.prefix_ids) <= prefix.count("\n") + 2 < len(prefix) // 10
    e = enc.encode(exs[0].text, render_tags(exs[0].entities))
    answer = tok.convert_ids_to_tokens(e.input_ids[e.prompt_len :])
    assert answer[:5] == ["<PER:", "이", "순", "신", ">"]
    text_ids = tok("이순신은", add_special_tokens=False)["input_ids"]
    assert e.input_ids[e.prompt_len + 1 : e.prompt_len + 4] == text_ids[:3]
    assert tok.decode(e.input_ids[e.prompt_len : -1]) == render_tags(exs[0].entities)


def test_token_table_allows_non_special_added_tokens_only():
    from kner.inference.vocab import TokenTable

    tok = _char_tokenizer(_examples())
    table = TokenTable.from_tokenizer(tok)
    assert table.token_bytes[tok.convert_tokens_to_ids("<PER:")] == b"<PER:"
    assert table.token_bytes[tok.convert_tokens_to_ids("### Tags:\n")] == b"### Tags:\n"
    for special in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id):
        assert table.token_bytes[special] is None


def test_mention_replacement_keeps_offsets_labels_and_context():
    import random

    exs = _examples()
    pool = mention_pool(exs)
    assert pool["PER"] == ["이순신", "세종대왕", "김유신"]
    rng = random.Random(0)
    changed = [replace_mentions(e, pool, 1.0, rng) for e in exs]
    assert any(c is not e for c, e in zip(changed, exs))
    for old, new in zip(exs, changed):
        validate(new)
        assert [e.label for e in new.entities] == [e.label for e in old.entities]
        for ent in new.entities:
            assert new.text[ent.start : ent.end] == ent.text
            assert ent.text in pool[ent.label]
        # What lies between the mentions is untouched.
        gaps = lambda ex: [ex.text[a.end : b.start] for a, b in zip(ex.entities, ex.entities[1:])]  # noqa: E731
        assert gaps(new) == gaps(old)
        assert new.text.endswith(old.text[old.entities[-1].end :])
    assert replace_mentions(exs[0], pool, 0.0, rng) is exs[0]


def test_variants_are_deterministic_and_validated():
    exs = _examples()
    cfg = AugmentConfig.from_dict({"mention_replace": 0.7, "variants": 3})
    a, b = training_variants(exs, cfg, 5), training_variants(exs, cfg, 5)
    assert len(a) == 4 and a[0] is exs
    assert [[e.text for e in v] for v in a] == [[e.text for e in v] for v in b]
    assert [[e.text for e in v] for v in a] != [[e.text for e in v] for v in training_variants(exs, cfg, 6)]
    assert training_variants(exs, AugmentConfig(), 5) == [exs]
    for bad in ({"mention_replace": 2}, {"variants": -1}, {"variants": 2}, {"mention_rate": 0.5}):
        with pytest.raises(ConfigError):
            AugmentConfig.from_dict(bad)


@pytest.mark.slow
def test_tiny_char_model_learns_and_extracts_what_it_learnt(tmp_path):
    """A model that emits the ``<LABEL:`` pieces it was trained on must get them through the
    constrained decoder: with those tokens disallowed it scores about 0 (the first GPU run)."""
    from kner.evaluation.scoring import evaluate
    from kner.inference import Extractor
    from kner.model.scratch import build_scratch_model
    from kner.training.config import TrainConfig
    from kner.training.recipe import train

    exs = _examples()
    tok = _char_tokenizer(exs)
    model = build_scratch_model(tok, hidden=64, layers=2, heads=2, max_positions=512, seed=0)
    cfg = TrainConfig(
        model="scratch",
        method="full",
        scheme="spacy19",
        output=str(tmp_path / "out"),
        examples_per_step=6,
        max_steps=150,
        lr=3e-3,
        warmup_steps=10,
        optimizer="adamw",
        batch_tokens=4096,
        save_every=0,
        progress=False,
        tensorboard=False,
        seed=1,
        augment={"mention_replace": 0.5, "variants": 2},
    )
    out = train(cfg, model=model, tokenizer=tok, train_examples=exs)
    ext = Extractor.load(out, max_new_tokens=64)
    res = evaluate(exs, ext.predict_examples(exs))
    assert res.micro["f1"] >= 0.9, res.to_markdown()


def test_epochs_cycle_through_tokenized_copies():
    from kner.model.prompt import PromptEncoder
    from kner.training.batching import tokenize_examples
    from kner.training.config import TrainConfig
    from kner.training.data import augmented_sets

    exs = _examples()
    tok = _char_tokenizer(exs)
    enc = PromptEncoder(tok, PromptFormat(), SCHEME)
    base, _ = tokenize_examples(exs, enc, 1024)
    cfg = TrainConfig(augment={"mention_replace": 1.0, "variants": 2}, seed=3)
    sets = augmented_sets(exs, base, enc, cfg, " ")
    assert len(sets) == 3 and sets[0] is base
    assert all(len(s) == len(exs) for s in sets)
    assert sets[1] != sets[2] and [e.input_ids for e in sets[1]] != [e.input_ids for e in base]
    # Every copy keeps the prompt/answer boundary: the answer decodes to well-formed tags.
    for e in sets[1]:
        assert tok.decode(e.input_ids[e.prompt_len : -1]).startswith("<")
    assert augmented_sets(exs, base, enc, TrainConfig(), " ") == [base]
