"""spaCy baseline: tokenizers keep text and offsets exact, unaligned gold spans are counted,
a tiny pipeline trains, saves, reloads in a fresh process and predicts mapped labels."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

pytest.importorskip("spacy")

from helpers import kner_process, run_app  # noqa: E402
from kner.baselines.spacy_ner import (  # noqa: E402
    examples_to_docbin,
    parse_label_map,
    predict_spacy,
    predict_spacy_with_report,
    train_spacy,
)
from kner.baselines.tokenization import alignment_report, make_doc, token_offsets, tokenize  # noqa: E402
from kner.data.example import Entity, Example, read_jsonl, validate, write_jsonl  # noqa: E402
from kner.data.schemes import Mapping  # noqa: E402
from kner.errors import ConfigError, DataError  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "spacy"

TEXTS = [
    "이순신은 조선의 장군이다.",
    "  김철수는\t한국은행에  다닌다",
    "서울-부산간 도로 2024년",
    "",
    "   ",
    "ABC 123 !?",
]


@pytest.mark.parametrize("mode", ["char", "kiwi", "whitespace"])
def test_tokens_cover_text_exactly(mode):
    from spacy.vocab import Vocab

    for text in TEXTS:
        offsets, tags = tokenize(text, mode)
        assert all(text[s:e].strip() == text[s:e] and s < e for s, e in offsets)
        assert all(a[1] <= b[0] for a, b in zip(offsets, offsets[1:]))
        # Nothing but whitespace lies between tokens.
        covered = "".join(text[s:e] for s, e in offsets)
        assert covered == "".join(text.split())
        doc = make_doc(Vocab(), text, offsets, tags)
        assert doc.text == text
        if mode == "kiwi" and text.strip():
            assert any(t.tag_ for t in doc)


def test_kiwi_splits_particles_off():
    offs = token_offsets("이순신은 조선의 장군이다.", "kiwi")
    words = [("이순신은 조선의 장군이다."[s:e]) for s, e in offs]
    assert "이순신" in words and "조선" in words


def test_unaligned_counts_on_handmade_cases():
    examples = read_jsonl(FIXTURES / "unaligned.jsonl")
    ws = alignment_report(examples, "whitespace", "expand")
    assert (ws.spans, ws.aligned, ws.unaligned, ws.expanded, ws.dropped_overlap) == (8, 2, 6, 6, 1)
    assert ws.unaligned_by_label == {"PS": 2, "LC": 3, "OG": 1}
    assert ws.kept == 7
    contract = alignment_report(examples, "whitespace", "contract")
    assert (contract.unaligned, contract.dropped_unalignable, contract.contracted, contract.kept) == (6, 6, 0, 2)
    split = alignment_report(examples, "whitespace", "split")
    assert (split.unaligned, split.split, split.kept) == (6, 6, 8)
    char = alignment_report(examples, "char", "expand")
    assert (char.aligned, char.unaligned, char.kept) == (8, 0, 8)
    assert "6/8 gold spans (75.00%) not token-aligned" in ws.summary()


def test_docbin_spans_follow_handling():
    from spacy.vocab import Vocab

    examples = read_jsonl(FIXTURES / "unaligned.jsonl")
    vocab = Vocab()
    db, rep = examples_to_docbin(examples, "whitespace", "expand", vocab)
    docs = list(db.get_docs(vocab))
    assert [(e.text, e.label_) for e in docs[0].ents] == [("이순신은", "PS"), ("조선의", "LC")]
    assert [(e.text, e.label_) for e in docs[2].ents] == [("서울-부산간", "LC")]
    db, rep = examples_to_docbin(examples, "whitespace", "split", vocab)
    docs = list(db.get_docs(vocab))
    assert [t.text for t in docs[2]] == ["서울", "-", "부산", "간", "도로"]
    assert [(e.text, e.label_) for e in docs[2].ents] == [("서울", "LC"), ("부산", "LC")]
    assert all(d.text == ex.text for d, ex in zip(docs, examples))


def test_label_map_parsing():
    m = parse_label_map("PS=PER, LC=LOC,QT=-")
    assert m.table == {"PS": "PER", "LC": "LOC", "QT": None}
    for bad in ("PS", "PS=PER,PS=ORG", ",", "=PER"):
        with pytest.raises(ConfigError):
            parse_label_map(bad)


# ---------------------------------------------------------------------------
# A tiny pipeline trained once for the tests below

NAMES = ["이순신", "김철수", "박영희", "최민준", "정서연", "강하늘", "윤도현", "장보고", "홍길동", "신사임당"]
PLACES = ["서울", "부산", "대구", "광주", "제주도", "인천", "울산", "전주"]
ORGS = ["삼성전자", "한국은행", "서울대학교", "현대자동차", "국회", "대한항공"]
TEMPLATES = [
    "{PS}은 {LC}에 있는 {OG}에서 일한다.",
    "어제 {LC}에서 {PS}가 {OG} 사람들을 만났다.",
    "{OG} 대표 {PS}는 {LC}로 떠났다.",
    "{PS} 씨가 {LC} 시장에서 {OG} 제품을 샀다.",
]


def synthetic(n: int, seed: int) -> list[Example]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        tpl = rnd.choice(TEMPLATES)
        fill = {"PS": rnd.choice(NAMES), "LC": rnd.choice(PLACES), "OG": rnd.choice(ORGS)}
        text, ents, pos = "", [], 0
        while pos < len(tpl):
            j = tpl.find("{", pos)
            if j < 0:
                text += tpl[pos:]
                break
            text += tpl[pos:j]
            label = tpl[j + 1 : j + 3]
            ents.append(Entity(len(text), len(text) + len(fill[label]), label, fill[label]))
            text += fill[label]
            pos = j + 4
        ex = Example(f"s{seed}-{i}", text, sorted(ents))
        validate(ex)
        out.append(ex)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("spacy-kiwi")
    best = train_spacy(
        synthetic(200, 1),
        synthetic(40, 2),
        out,
        tokenizer="kiwi",
        max_steps=60,
        seed=0,
        overrides={"training.eval_frequency": 20},
        verbose=False,
    )
    return out, best


@pytest.mark.slow
def test_train_writes_pipeline_and_report(trained):
    out, best = trained
    assert best == out / "model-best" and (best / "config.cfg").is_file()
    report = json.loads((out / "kner-spacy.json").read_text(encoding="utf-8"))
    assert report["tokenizer"] == "kiwi" and report["labels"] == ["LC", "OG", "PS"]
    assert report["alignment"]["train"]["spans"] == 600
    cfg = (best / "config.cfg").read_text(encoding="utf-8")
    assert "kner.KoreanTokenizer.v1" in cfg and 'mode = "kiwi"' in cfg


@pytest.mark.slow
def test_predict_api_offsets_and_mapping(trained):
    out, best = trained
    test = synthetic(30, 3)
    preds = predict_spacy(out, test)  # the training directory resolves to model-best
    assert [p.id for p in preds] == [t.id for t in test] and [p.text for p in preds] == [t.text for t in test]
    ents = [e for p in preds for e in p.entities]
    assert ents, "60 updates on templated data should find some entities"
    for p in preds:
        validate(p)
    assert {e.label for e in ents} <= {"PS", "LC", "OG"}
    mapped, report = predict_spacy_with_report(best, test, Mapping.load("klue", "spacy19"))
    assert {e.label for p in mapped for e in p.entities} <= {"PER", "LOC", "ORG"}
    assert sum(report["mapped"].values()) == len(ents)
    with pytest.raises(ConfigError, match="does not cover"):
        predict_spacy(best, test, parse_label_map("PS=PER"))
    fb = predict_spacy(best, test, parse_label_map("PS=PER"), fallback="-")
    assert {e.label for p in fb for e in p.entities} <= {"PER"}


def predict_args(model, inp, out) -> list[str]:
    return ["baseline", "spacy", "predict", "--model", str(model), "--input", str(inp), "--output", str(out)]


@pytest.mark.slow
def test_cli_predict_in_fresh_process(trained, tmp_path):
    # A fresh interpreter proves the saved pipeline finds kner's tokenizer through the CLI.
    out, _ = trained
    inp, pred = tmp_path / "in.jsonl", tmp_path / "pred.jsonl"
    test = synthetic(20, 4)
    write_jsonl(inp, test)
    res = kner_process(*predict_args(out, inp, pred), "--map-file", "klue-to-spacy19", timeout=120)
    assert res.returncode == 0, res.stderr
    preds = read_jsonl(pred)  # validates text[start:end] == entity.text
    assert [p.id for p in preds] == [t.id for t in test]
    assert {e.label for p in preds for e in p.entities} <= {"PER", "LOC", "ORG"}
    assert "wrote 20 examples" in res.stdout


@pytest.mark.slow
def test_cli_predict_errors(trained, tmp_path):
    out, _ = trained
    inp = tmp_path / "in.jsonl"
    write_jsonl(inp, synthetic(3, 5))
    base = predict_args(out, inp, tmp_path / "p.jsonl")
    res = run_app(*base, "--label-map", "PS=PER")
    assert res.exit_code != 0 and "does not cover" in str(res.exception)
    res = run_app(*base, "--label-map", "PS=PER", "--fallback", "MISC")
    assert res.exit_code == 0, res.output
    res = run_app(*predict_args(tmp_path / "nope", inp, tmp_path / "p.jsonl"))
    assert res.exit_code != 0 and "no spaCy pipeline" in str(res.exception)


def test_cli_train_rejects_bad_input(tmp_path):
    good = tmp_path / "t.jsonl"
    write_jsonl(good, synthetic(5, 6))
    empty = tmp_path / "e.jsonl"
    write_jsonl(empty, [Example("a", "텍스트", [])])
    res = run_app(
        "baseline",
        "spacy",
        "train",
        "--train",
        str(good),
        "--dev",
        str(good),
        "--out",
        str(tmp_path / "o"),
        "--tokenizer",
        "mecab",
    )
    assert isinstance(res.exception, ConfigError) and "mecab" in str(res.exception)
    res = run_app("baseline", "spacy", "train", "--train", str(empty), "--dev", str(good), "--out", str(tmp_path / "o"))
    assert isinstance(res.exception, DataError) and "no entities" in str(res.exception)


def test_kmou_particles_need_subword_tokens(datasets_dir):
    # The measurement behind the default tokenizer (docs/baseline.md), on a slice of real data
    # (the fixture's 206 KMOU sentences; benchmarks/corpora.py would insist on the full corpus).
    from kner.data.readers import read_dataset

    examples = read_dataset("kmou", datasets_dir / "kmou" / "corpus").examples[:400]
    spans = sum(len(ex.entities) for ex in examples)
    ws = alignment_report(examples, "whitespace")
    kiwi = alignment_report(examples, "kiwi")
    char = alignment_report(examples, "char")
    assert ws.spans == kiwi.spans == char.spans == spans > 500
    assert ws.unaligned_share > 0.4
    assert kiwi.unaligned_share < 0.05
    assert char.unaligned == 0
