from collections import Counter
from pathlib import Path

import pytest

from kner.data.example import Entity, Example, validate, write_jsonl
from kner.data.readers import FORMATS, native_scheme, read_dataset
from kner.data.readers.bio import decode, split_tag
from kner.data.readers.markup import MarkupError, parse_markup
from kner.data.schemes import Mapping, load_scheme, map_examples
from kner.errors import ConfigError, DataError

FIX = Path(__file__).parent / "fixtures" / "readers"


def ents(ex: Example) -> list[tuple[str, str, int]]:
    return [(e.label, e.text, e.start) for e in ex.entities]


def kinds(res) -> Counter:
    return res.problem_counts()


# ---- markup and BIO building blocks --------------------------------------------------------------


@pytest.mark.parametrize(
    "markup, text, spans",
    [
        ("<<2>:NOH> 문제", "<2> 문제", [("<2>", "NOH")]),  # entity made of brackets
        ("영화 <<트럼보:POH>>가", "영화 <트럼보>가", [("트럼보", "POH")]),  # literal brackets around a tag
        ("[가다]<7><KT:ORG> 경기", "[가다]<7>KT 경기", [("KT", "ORG")]),
        ("<이 기사는 <신동아:POH>｜", "<이 기사는 신동아｜", [("신동아", "POH")]),  # unclosed literal '<'
        ("<A->B:ORG>", "A->B", [("A->B", "ORG")]),  # '>' inside an entity
        ("<12:30:TIM>", "12:30", [("12:30", "TIM")]),  # colon inside an entity
        ("<<서울:LOC> 시청:ORG>", "서울 시청", [("서울", "LOC"), ("서울 시청", "ORG")]),  # nested
        ("a -> b: c", "a -> b: c", []),
        ("비율 3:1>", "비율 3:1>", []),  # ':1>' is not a label
    ],
)
def test_parse_markup(markup, text, spans):
    m = parse_markup(markup, {"NOH", "POH", "ORG", "TIM", "LOC"})
    assert m.text == text
    assert [(m.text[s:e], lab) for s, e, lab in m.spans] == spans


def test_parse_markup_reports_repaired_and_unreadable_tags():
    m = parse_markup("<한:LC><일:;LC>월드컵", {"LC"})
    assert m.text == "한일월드컵" and [lab for _, _, lab in m.spans] == ["LC", "LC"]
    assert [k for k, _ in m.notes] == ["malformed-tag"]
    with pytest.raises(MarkupError, match="no opening"):
        parse_markup("x:LC> y", {"LC"})


def test_decode_repairs_i_without_b_and_reads_bioes():
    tags = [split_tag(t) for t in ["I-PER", "I-PER", "O", "B-LOC", "I-ORG", "S-DAT", "B-X", "E-X", "E-Y"]]
    spans, repairs = decode(tags)
    assert spans == [(0, 2, "PER"), (3, 4, "LOC"), (4, 5, "ORG"), (5, 6, "DAT"), (6, 8, "X"), (8, 9, "Y")]
    assert [i for i, _ in repairs] == [0, 4, 8]
    assert split_tag("PER_B", sep="_", label_first=True).label == "PER"
    assert split_tag("B-Medication/Vaccine").label == "Medication/Vaccine"
    assert split_tag("PER") is None


# ---- fixtures, one per format ------------------------------------------------------------------------


def test_kmou_fixture_folder():
    res = read_dataset("kmou", FIX / "kmou")
    assert res.files == 2  # README.md in the folder is not a corpus file
    assert [ex.id for ex in res.examples] == ["00001_NER:1", "00001_NER:2", "00001_NER:3", "00002_NER:1"]
    a, b, c, d = res.examples
    assert a.text == "영화 <트럼보>가 12:30에 개봉했다." and ents(a) == [("POH", "트럼보", 4), ("TIM", "12:30", 10)]
    assert ents(b) == [("PER", "바라라", 0), ("ORG", "중국", 5)]  # markup wins over BIO; span trimmed
    assert ents(c) == [("LOC", "서울", 0), ("ORG", "서울 시청", 0)]  # nested spans survive
    assert a.meta == {"doc": "00001_NER", "source": "00001_NER.txt:1"} and d.meta["doc"] == "00002_NER"
    assert res.skipped == 1
    assert kinds(res) == Counter({"bio-mismatch": 2, "whitespace-trimmed": 1, "raw-mismatch": 1, "unparseable": 1})
    bad = [p for p in res.problems if p.kind == "unparseable"][0]
    assert bad.sentence_id == "00001_NER:4" and bad.line == 51 and "no opening" in bad.reason
    for ex in res.examples:
        validate(ex)


def test_kmou_wrong_column_count_is_an_error(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("## 1\n## 가\n## <가:PER>\n가\t가\tNNP\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_dataset("kmou", p)
    assert err.value.line == 4 and str(p) in str(err.value) and "4 tab-separated" in str(err.value)
    p.write_text("## 1\n## 가\n가\t가\tNNP\tB-PER\n", encoding="utf-8")
    with pytest.raises(DataError, match="three header lines"):
        read_dataset("kmou", p)
    p.write_text("## 1\n## 가\n## <가:PER>\n가\t가\tNNP\tB-XYZ\n", encoding="utf-8")
    with pytest.raises(DataError, match="unknown BIO tag"):
        read_dataset("kmou", p)


def test_klp2016_fixture_crlf_and_lemmas():
    res = read_dataset("klp2016", FIX / "klp2016" / "ner.sample")
    a, b = res.examples
    assert ents(a) == [("PS", "한석규", 0)]
    assert b.text == "지난 22일 서울에서 <확인>을 했다" and ents(b) == [("DT", "지난 22일", 0), ("LC", "서울", 7)]
    assert res.problems == []  # '지나'+'ㄴ' lemma matches '지난'; literal <확인> is text
    assert b.meta == {"doc": "ner.sample", "source": "ner.sample:10"}


def test_klue_fixture_fallback_to_characters():
    res = read_dataset("klue", FIX / "klue_sample.tsv")
    assert len(res.examples) == 3 and res.skipped == 0
    a, b, c = res.examples
    assert a.id == "klue-fixture_00000-wikitree" and a.meta["doc"] == a.id
    assert ents(a) == [("PS", "이순신", 0), ("OG", "조선", 5)]
    # Broken markup: KLUE's character lines (which read the stray tag as text) are used.
    assert b.text == "19, 20기:QT>로 시로랑" and ents(b) == [("QT", "19", 0), ("PS", "시로", 13)]
    assert c.text == "한일월드컵에서 만나요" and ents(c) == [("LC", "한", 0), ("LC", "일", 1)]
    assert kinds(res) == Counter({"unparseable": 1, "malformed-tag": 1, "chars-mismatch": 1})


def test_naver_fixture_keeps_particles_by_default():
    res = read_dataset("naver", FIX / "naver_sample.txt")
    assert [ex.text for ex in res.examples][:3] == [
        "예산결산특별위원회의 위원장은 서울에서 회의를 열었다",
        "김연아도 강원도 평창으로 갔다",
        "우루과이가 강원도 대표와 한은 총재를 만났다",
    ]  # a word index of 1 starts a sentence without a blank line
    assert ents(res.examples[0]) == [
        ("ORG", "예산결산특별위원회의", 0),
        ("CVL", "위원장은", 11),
        ("LOC", "서울에서", 16),
    ]
    assert ents(res.examples[3]) == [("ORG", "한국 은행에", 3)]
    assert kinds(res) == Counter({"i-without-b": 1})
    assert res.problems[0].line == 19


def test_naver_trim_particles_kiwi():
    pytest.importorskip("kiwipiepy")
    res = read_dataset("naver", FIX / "naver_sample.txt", trim_particles="kiwi")
    got = [ents(ex) for ex in res.examples]
    assert got[0] == [("ORG", "예산결산특별위원회", 0), ("CVL", "위원장", 11), ("LOC", "서울", 16)]
    assert got[1] == [("PER", "김연아", 0), ("LOC", "강원도 평창", 5)]
    assert got[2] == [("LOC", "우루과이", 0), ("LOC", "강원도", 6), ("ORG", "한은", 14), ("CVL", "총재", 17)]
    assert res.notes["particles trimmed (kiwi)"] == 8


def test_naver_trim_particles_list_and_its_documented_limit():
    res = read_dataset("naver", FIX / "naver_sample.txt", trim_particles="list")
    got = [ents(ex) for ex in res.examples]
    assert got[1] == [("PER", "김연아", 0), ("LOC", "강원도 평창", 5)]
    # 한은 keeps its 은 (two characters must remain); 강원도 loses 도: the list cannot tell, kiwi can.
    assert got[2] == [("LOC", "우루과이", 0), ("LOC", "강원", 6), ("ORG", "한은", 14), ("CVL", "총재", 17)]
    with pytest.raises(ConfigError):
        read_dataset("naver", FIX / "naver_sample.txt", trim_particles="maybe")


def test_naver_bad_lines(tmp_path):
    p = tmp_path / "n.txt"
    p.write_text("1\t서울\tLOC_B\n2\t가다\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_dataset("naver", p)
    assert err.value.line == 2
    p.write_text("1\t서울\tXYZ_B\n", encoding="utf-8")
    with pytest.raises(DataError, match="unknown tag"):
        read_dataset("naver", p)


def test_multiconer_versions():
    v1 = read_dataset("multiconer", FIX / "multiconer_v1.conll")
    assert v1.scheme == "multiconer_v1"
    assert ents(v1.examples[0]) == [("GRP", "방탄소년단은", 0), ("CORP", "삼성전자", 7), ("PROD", "갤럭시", 12)]
    assert v1.examples[0].meta["domain"] == "ko" and v1.examples[0].id == "3b7e1c9a-0000-4000-8000-000000000001"
    assert kinds(v1) == Counter({"i-without-b": 1})
    v2 = read_dataset("multiconer", FIX / "multiconer_v2.conll")
    assert v2.scheme == "multiconer_v2"
    assert ents(v2.examples[0])[1] == ("Medication/Vaccine", "코로나19 백신", 4)
    with pytest.raises(DataError, match="not a MultiCoNER v1 label"):
        read_dataset("multiconer", FIX / "multiconer_v2.conll", version=1)
    assert native_scheme("multiconer", version="1") == "multiconer_v1"


def test_conll_word_and_char_levels(tmp_path):
    w = read_dataset("conll", FIX / "conll_word.txt")
    assert [ents(ex) for ex in w.examples] == [
        [("PER", "이순신", 0), ("ORG", "조선 수군", 8)],
        [("LOC", "서울 특별시", 0)],
        [("LOC", "부산", 0)],
    ]
    assert [ex.meta["doc"] for ex in w.examples] == ["conll_word.txt#1", "conll_word.txt#1", "conll_word.txt#2"]
    c = read_dataset("conll", FIX / "conll_char.txt", level="char", space_token="_")
    assert c.examples[0].text == "이순신 장군" and ents(c.examples[0]) == [("PS", "이순신", 0)]
    p = tmp_path / "bad.conll"
    p.write_text("서울 NNP B-LOC\n시청 I-LOC\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_dataset("conll", p)
    assert err.value.line == 2 and "columns" in str(err.value)


def test_jsonl_round_trip(tmp_path):
    ex = Example("a", "이순신은 장군", [Entity(0, 3, "PER", "이순신")])
    write_jsonl(tmp_path / "x.jsonl", [ex])
    res = read_dataset("jsonl", tmp_path / "x.jsonl")
    assert res.examples[0].entities == ex.entities
    assert res.examples[0].meta == {"doc": "x.jsonl:a", "source": "x.jsonl:1"}


def test_registry_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown data format"):
        read_dataset("conllu", tmp_path)
    with pytest.raises(ConfigError, match="no option"):
        read_dataset("kmou", FIX / "kmou", level="char")
    with pytest.raises(DataError, match="no kmou files"):
        read_dataset("kmou", tmp_path)
    with pytest.raises(DataError, match="no such file"):
        read_dataset("kmou", tmp_path / "missing")
    assert set(FORMATS) == {
        "kmou",
        "klp2016",
        "klue",
        "naver",
        "multiconer",
        "conll",
        "jsonl",
        "doccano",
        "labelstudio",
        "prodigy",
        "spacy",
        "hf",
    }


@pytest.mark.parametrize("scheme", ["naver", "multiconer_v1", "multiconer_v2", "kmou", "klue", "klp2016"])
def test_every_native_label_has_a_spacy19_row(scheme):
    sch, target, m = load_scheme(scheme), load_scheme("spacy19"), Mapping.load(scheme, "spacy19")
    assert set(m.table) == set(sch.names)
    assert all(dst is None or dst in target.names for dst in m.table.values())
    ambiguous = [src for src, dst in m.table.items() if dst is None]
    assert all(src in m.reasons for src in ambiguous)  # every drop says why


def test_reader_labels_match_schemes():
    from kner.data.readers import klp2016, klue, kmou, multiconer, naver

    for mod_labels, scheme in [
        (kmou.LABELS, "kmou"),
        (klp2016.LABELS, "klp2016"),
        (klue.LABELS, "klue"),
        (naver.LABELS, "naver"),
        (multiconer.V1, "multiconer_v1"),
        (multiconer.V2, "multiconer_v2"),
    ]:
        assert set(mod_labels) == set(load_scheme(scheme).names)


# ---- the KMOU fixture corpus (15 files of the real corpus, byte for byte; full counts: test_real_data.py)


@pytest.fixture(scope="module")
def kmou(datasets_dir):
    return read_dataset("kmou", datasets_dir / "kmou" / "corpus")


def test_kmou_corpus_counts(kmou):
    assert kmou.files == 15
    assert len(kmou.examples) == 206 and kmou.skipped == 0
    assert sum(len(ex.entities) for ex in kmou.examples) == 622
    assert len({ex.meta["doc"] for ex in kmou.examples}) == 15
    assert len({ex.id for ex in kmou.examples}) == 206
    assert kinds(kmou) == Counter({"bio-mismatch": 3, "whitespace-trimmed": 1})
    assert [(p.sentence_id, p.line) for p in kmou.problems] == [
        ("00002_NER:9", 520),
        ("00006_NER:6", 187),
        ("00011_NER:8", 368),
        ("00016_NER:9", 281),
    ]
    labels = Counter(e.label for ex in kmou.examples for e in ex.entities)
    assert labels["PER"] == 171 and labels["TIM"] == 2 and set(labels) == set(load_scheme("kmou").names)
    for ex in kmou.examples:
        validate(ex)


def test_kmou_mapping_to_spacy19(kmou):
    mapped, rep = map_examples(kmou.examples, Mapping.load("kmou", "spacy19"))
    assert sum(rep.mapped.values()) == 622 and not rep.dropped
    assert rep.mapped[("DUR", "DATE")] == 16 and rep.mapped[("POH", "MISC")] == 80


def test_read_marked_notes_say_where_each_disagreement_was_seen():
    from kner.data.readers.markup import read_marked

    tokens = [(10, "이순신", split_tag("I-PER")), (11, " ", split_tag("O")), (12, "장군", split_tag("B-PER"))]
    mk = read_marked("<이순신:PER> 장군", {"PER"}, raw="이순신 장굼", tokens=tokens, unit="morphemes")
    assert mk.text == "이순신 장군" and [(e.label, e.text) for e in mk.entities] == [("PER", "이순신")]
    assert [(kind, where) for kind, _, where in mk.notes] == [
        ("raw-mismatch", "raw"),
        ("i-without-b", 10),
        ("bio-mismatch", "sentence"),
    ]
    assert "column 6" in mk.notes[0][1] and "BIO PER '장군' [4,6)" in mk.notes[2][1]
    lemmas = [(1, "지나", split_tag("B-DT")), (2, "ㄴ", split_tag("I-DT"))]
    assert read_marked("<지난:DT>", {"DT"}, tokens=lemmas, unit="lemmas").notes == []
