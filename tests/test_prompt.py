"""The instruction format: exact template, tag rendering with escapes, tolerant parsing, left-to-right alignment."""

import pytest

from kner.data.example import Entity
from kner.data.schemes import load_scheme
from kner.errors import ConfigError
from kner.model.prompt import PromptFormat, parse_tags, render_tags

SPACY = load_scheme("spacy19")


def test_default_prompt_is_the_studys_template():
    p = PromptFormat().prompt("이순신은 조선의 장군이다.", SPACY)
    lines = p.split("\n")
    assert lines[0] == "### Instruction:"
    assert (
        lines[1] == "다음 아래 문장에서 개체명을 추출하려 합니다. 개체명은 아래 규칙(spacy를 따름)으로 태깅시켜 주세요."
    )
    assert lines[2:21] == [f"- {l.name}: {l.en}" for l in SPACY.labels] and lines[2] == "- PER: Person"
    assert lines[21:] == [
        "아래 문장들에서 개체명을 추출하세요.",
        "",
        "### Text:",
        "이순신은 조선의 장군이다.",
        "",
        "### Tags:",
        "",
    ]
    assert [l.name for l in SPACY.labels] == [
        "PER",
        "ORG",
        "GPE",
        "LOC",
        "FAC",
        "QUANTITY",
        "ORDINAL",
        "CARDINAL",
        "DATE",
        "TIME",
        "MONEY",
        "PERCENT",
        "PRODUCT",
        "EVENT",
        "WORK_OF_ART",
        "LANGUAGE",
        "LAW",
        "NORP",
        "MISC",
    ]


def test_prefix_is_shared_and_scheme_specific():
    pf = PromptFormat()
    pre1, suf1 = pf.parts(SPACY)
    assert pf.prompt("가", SPACY) == pre1 + "가" + suf1
    pre2, _ = pf.parts(load_scheme("klue"))
    assert "- PS: Person" in pre2 and "- PER:" not in pre2


def test_template_must_end_with_the_answer():
    with pytest.raises(ConfigError):
        PromptFormat(template="{instruction}{output_tags}{input_text}")


def test_render_orders_by_appearance_and_escapes():
    text = "A<B> 와 10:30 그리고 a\\b"
    ents = [Entity(17, 20, "MISC", "a\\b"), Entity(0, 4, "ORG", "A<B>"), Entity(7, 12, "TIME", "10:30")]
    out = render_tags(ents)
    assert out == "<ORG:A\\<B\\>> <TIME:10:30> <MISC:a\\\\b>"
    assert parse_tags(out, text, SPACY).entities == sorted(ents)


def test_parser_tolerates_spacing_newlines_aliases_and_a_missing_final_bracket():
    text = "이순신은 조선의 장군이다."
    r = parse_tags("  <PERSON : 이순신>\n\n<organization:조선", text, SPACY)
    assert r.entities == [Entity(0, 3, "PER", "이순신"), Entity(5, 7, "ORG", "조선")]
    assert r.ok


def test_unknown_labels_and_hallucinated_text_are_reported_not_raised():
    r = parse_tags("<FOO:이순신> <PER:세종> 잡음 <PER:조선>", "이순신은 조선의 장군이다.", SPACY)
    assert r.unknown_labels == {"FOO": 1}
    assert [t.text for t in r.unaligned] == ["세종"]
    assert r.garbage == ["잡음"]
    assert r.entities == [Entity(5, 7, "PER", "조선")]
    assert not r.ok and len(r.problems()) == 3


def test_repeated_surfaces_take_successive_occurrences():
    text = "일본과 중국, 그리고 일본."
    r = parse_tags("<GPE:일본> <GPE:중국> <GPE:일본>", text, SPACY)
    assert [e.start for e in r.entities] == [0, 4, 12]


def test_nested_spans_align_inside_the_previous_entity():
    text = "서울대학교 학생"
    gold = [Entity(0, 2, "LOC", "서울"), Entity(0, 5, "ORG", "서울대학교")]
    assert parse_tags(render_tags(gold), text, SPACY).entities == gold


def test_empty_output_means_no_entities():
    assert parse_tags("", "아무 개체도 없다.", SPACY).entities == []
    assert render_tags([]) == ""
