"""Field data: NAVER in every published layout, MultiCoNER test and v1 files, splits of independent sentences.

Every NAVER sentence here is made up (the corpus's licence keeps its text out of
the repository); the layouts follow the real files: the challenge's
``index<TAB>word<TAB>TAG`` train_data and KoBERT-NER's ``words<TAB>tags`` lines
in both tag spellings.
"""

import json
import logging
import random

import pytest

from helpers import kner_process, run_app
from kner.cli.predict import read_inputs
from kner.data.example import Example, read_jsonl, write_jsonl
from kner.data.readers import read_dataset
from kner.data.splits import doc_of, split_by_document
from kner.errors import ConfigError, DataError

# Made-up sentence material: (word, label) with None outside any entity; multi-word entities are lists.
_PEOPLE = ["김하늘", "박도윤", "이서연", "최민준", "정유진"]
_PLACES = [["강원도", "평창"], ["부산"], ["제주도"], ["서울"]]
_ORGS = [["한빛", "전자"], ["새솔", "은행"], ["누리", "재단"]]
_FILLER = ["오늘", "새로운", "계획을", "발표했다", "함께", "회의를", "열었다", "지난", "주말에", "만났다", "."]


def naver_sentences(n=1000, seed=7):
    """n made-up sentences as [(word, tag in NAVER's own spelling: PER_B, PER_I, -)]."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        sent = []
        for _ in range(rng.randint(1, 3)):
            kind = rng.choice(["PER", "LOC", "ORG", None, None])
            if kind == "PER":
                words = [rng.choice(_PEOPLE) + rng.choice(["", "은", "이", "의"])]
            elif kind == "LOC":
                words = list(rng.choice(_PLACES))
                words[-1] += rng.choice(["", "에서", "으로"])
            elif kind == "ORG":
                words = list(rng.choice(_ORGS))
            else:
                words = [rng.choice(_FILLER)]
            sent += [(w, f"{kind}_{'B' if i == 0 else 'I'}" if kind else "-") for i, w in enumerate(words)]
        sent += [(rng.choice(_FILLER), "-"), (".", "-")]
        out.append(sent)
    return out


def write_naver(path, sents, layout):
    """layout: 'index' (the challenge's train_data), 'underscore' (KoBERT-NER, PER_B / -), 'dash' (PER-B / O)."""
    lines = []
    for sent in sents:
        if layout == "index":
            lines += [f"{i}\t{w}\t{t}" for i, (w, t) in enumerate(sent, 1)] + [""]
        else:
            tags = [t if layout == "underscore" else ("O" if t == "-" else t.replace("_", "-")) for _, t in sent]
            lines.append(" ".join(w for w, _ in sent) + "\t" + " ".join(tags))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def spans(res):
    return [(ex.text, [(e.start, e.end, e.label) for e in ex.entities]) for ex in res.examples]


# ---- NAVER -----------------------------------------------------------------------------------------


def test_naver_three_layouts_give_the_same_examples(tmp_path):
    sents = naver_sentences()
    got = {
        lay: read_dataset("naver", write_naver(tmp_path / f"{lay}.txt", sents, lay))
        for lay in ("index", "underscore", "dash")
    }
    ref = spans(got["index"])
    assert len(ref) == 1000 and sum(len(e) for _, e in ref) > 1000
    for lay, res in got.items():
        assert spans(res) == ref, lay
        assert not res.problems and res.skipped == 0
        # Independent sentences: each is its own document, so a split can spread them.
        assert len({doc_of(ex) for ex in res.examples}) == 1000
    assert got["index"].notes["sentences in NAVER layout 'index<TAB>word<TAB>tag' lines"] == 1000
    assert got["dash"].notes["sentences in NAVER layout 'words<TAB>tags', one sentence per line"] == 1000
    ex = got["dash"].examples[0]
    assert ex.id == "dash.txt:1" and ex.meta == {"doc": "dash.txt:1", "source": "dash.txt:1"}
    assert got["index"].examples[1].meta["source"] == f"index.txt:{len(sents[0]) + 2}"


def test_naver_one_file_converts_and_splits_into_three_non_empty_parts(tmp_path):
    src = write_naver(tmp_path / "train_data", naver_sentences(), "index")
    r = run_app("data", "convert", "naver", src, "-o", tmp_path / "n.jsonl")
    assert r.exit_code == 0, r.output
    assert "read 1000 sentences" in r.output and "'index<TAB>word<TAB>tag' lines: 1000" in r.output
    r = run_app("data", "split", tmp_path / "n.jsonl", "-o", tmp_path / "s")
    assert r.exit_code == 0, r.output
    sizes = {k: len(read_jsonl(tmp_path / "s" / f"{k}.jsonl")) for k in ("train", "dev", "test")}
    assert sizes == {"train": 800, "dev": 100, "test": 100}


def test_naver_messages_use_the_files_own_tag_spelling(tmp_path):
    sents = [
        [("그는", "-"), ("한빛", "ORG_I"), ("전자에", "ORG_I"), ("갔다", "-")],
        [("김하늘", "PER_B"), ("새솔", "ORG_I")],
    ]
    for lay, i_tag, b_tag in (
        ("index", "ORG_I", "ORG_B"),
        ("underscore", "ORG_I", "ORG_B"),
        ("dash", "ORG-I", "ORG-B"),
    ):
        res = read_dataset("naver", write_naver(tmp_path / f"{lay}.txt", sents, lay))
        reasons = [p.reason for p in res.problems]
        assert reasons == [
            f"{i_tag!r} without {b_tag!r}; started a new ORG entity",
            f"{i_tag!r} after {b_tag.replace('ORG', 'PER')!r} without {b_tag!r}; started a new ORG entity",
        ], lay
        assert not any("I-ORG" in r or "B-ORG" in r for r in reasons)
        assert [p.kind for p in res.problems] == ["i-without-b"] * 2
    assert [p.line for p in read_dataset("naver", tmp_path / "index.txt").problems] == [2, 7]
    assert [p.line for p in read_dataset("naver", tmp_path / "dash.txt").problems] == [1, 2]


def test_naver_line_layout_errors_name_the_line(tmp_path):
    p = tmp_path / "n.tsv"
    p.write_text("김하늘 갔다\tPER_B -\n부산 에서 만났다\tLOC_B -\n", encoding="utf-8")
    with pytest.raises(DataError, match="3 words but 2 tags") as err:
        read_dataset("naver", p)
    assert err.value.line == 2
    p.write_text("김하늘 갔다\tPER-B O\n부산\tPLACE-B\n", encoding="utf-8")
    with pytest.raises(DataError, match="unknown tag 'PLACE-B'") as err:
        read_dataset("naver", p)
    assert err.value.line == 2
    p.write_text("김하늘 갔다\tPER-B O\n1\t부산\tLOC_B\n", encoding="utf-8")  # layouts mixed in one file
    with pytest.raises(DataError, match="2 tab-separated columns") as err:
        read_dataset("naver", p)
    assert err.value.line == 2
    p.write_text("그냥 문장 하나\n", encoding="utf-8")
    with pytest.raises(DataError, match="not a NAVER line .*detected from the first line"):
        read_dataset("naver", p)


def test_naver_trim_punct(tmp_path):
    p = tmp_path / "n.tsv"
    p.write_text(
        "\n".join(
            [
                "▲김하늘 박도윤, 오늘 출발\tPER_B PER_I - -",
                "'새솔 이야기' 상영 (주)한빛전자 에\tAFW_B AFW_I - ORG_B -",
                "‘믹스트존’이 아니라 [누리재단 -5명 4%\tCVL_B - ORG_B NUM_B NUM_B",
                "C++ 「부산」 , 끝\tTRM_B LOC_B NUM_B -",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    plain = read_dataset("naver", p)
    assert [e.text for ex in plain.examples for e in ex.entities][:2] == ["▲김하늘 박도윤,", "'새솔 이야기'"]
    res = read_dataset("naver", p, trim_punct=True, trim_particles="list")
    assert [[e.text for e in ex.entities] for ex in res.examples] == [
        ["김하늘 박도윤"],
        ["새솔 이야기", "(주)한빛전자"],
        ["믹스트존", "누리재단", "-5명", "4%"],
        ["C++", "부산", ","],
    ]
    assert res.notes["entity-edge punctuation trimmed"] == 5
    assert [(p.kind, p.line) for p in res.problems] == [("punct-only-entity", 4)]
    for ex in res.examples:
        for e in ex.entities:
            assert ex.text[e.start : e.end] == e.text


def test_convert_trim_punct_flag(tmp_path):
    p = tmp_path / "n.tsv"
    p.write_text("“김하늘”, 부산에서\tPER_B LOC_B\n", encoding="utf-8")
    r = run_app("data", "convert", "naver", p, "-o", tmp_path / "n.jsonl", "--trim-punct", "--trim-particles")
    assert r.exit_code == 0, r.output
    assert "entity-edge punctuation trimmed: 1" in r.output and "particles trimmed" in r.output
    assert [e.text for e in read_jsonl(tmp_path / "n.jsonl")[0].entities] == ["김하늘", "부산"]
    r = run_app("data", "convert", "multiconer", p, "-o", tmp_path / "m.jsonl", "--trim-punct")
    assert isinstance(r.exception, ConfigError) and "naver format only" in str(r.exception)


def test_folder_read_passes_over_files_that_are_not_data(tmp_path):
    d = tmp_path / "naver-ner"
    d.mkdir()
    write_naver(d / "train.tsv", naver_sentences(20), "dash")
    write_naver(d / "test.tsv", naver_sentences(5, seed=8), "dash")
    (d / "README.md").write_text("# NAVER NER\n\nsplit from train_data\n", encoding="utf-8")
    (d / "LICENSE").write_text("licence text\n", encoding="utf-8")
    (d / "label.txt").write_text("O\nPER-B\nPER-I\n", encoding="utf-8")  # KoBERT-NER's label list
    (d / "prepare.py").write_text("print('hi')\n", encoding="utf-8")
    (d / ".DS_Store").write_bytes(b"\x00\x01")
    res = read_dataset("naver", d)
    assert res.files == 2 and len(res.examples) == 25
    note = [k for k in res.notes if k.startswith("files passed over")]
    assert len(note) == 1 and res.notes[note[0]] == 5
    assert "README.md" in note[0] and "label.txt" in note[0]
    r = run_app("data", "convert", "naver", d, "-o", tmp_path / "n.jsonl")
    assert r.exit_code == 0, r.output
    assert (
        "files passed over as not data (.DS_Store, LICENSE, README.md, label.txt, prepare.py; "
        "name a file to read it anyway): 5" in r.output
    )
    assert len(read_dataset("naver", d / "train.tsv").examples) == 20  # a file named directly is read
    empty = tmp_path / "docs"
    empty.mkdir()
    (empty / "README.md").write_text("x\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"passed over as not data: README.md"):
        read_dataset("naver", empty)


# ---- splits ----------------------------------------------------------------------------------------


def test_split_refuses_an_empty_split_and_exits_2(tmp_path):
    # What the old NAVER reader wrote: every sentence of the file in one document.
    exs = [Example(f"train_data:{i}", "김하늘 갔다", [], {"doc": "train_data"}) for i in range(1, 1001)]
    with pytest.raises(ConfigError, match="would leave dev and test empty.*1 document.*own document"):
        split_by_document(exs)
    write_jsonl(tmp_path / "old.jsonl", exs)
    p = kner_process("data", "split", tmp_path / "old.jsonl", "-o", tmp_path / "s")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.startswith("error: splitting 0.8, 0.1, 0.1 would leave dev and test empty")
    assert not (tmp_path / "s").exists()
    # Only test empty: 2 documents for 3 splits.
    two = [Example(str(i), "가", [], {"doc": "ab"[i % 2]}) for i in range(100)]
    with pytest.raises(ConfigError, match="would leave test empty: the 100 sentences are in 2 document"):
        split_by_document(two, (0.5, 0.3, 0.2))


def test_split_ratio_zero_is_an_empty_split_on_purpose():
    exs = [Example(str(i), "가") for i in range(100)]
    parts = split_by_document(exs, (0.9, 0.1, 0))
    assert [len(parts[k]) for k in ("train", "dev", "test")] == [90, 10, 0]
    with pytest.raises(ConfigError, match="no sentences to split"):
        split_by_document([])


def test_split_warns_about_a_split_under_one_percent(caplog):
    exs = [Example(str(i), "가") for i in range(1000)]
    with caplog.at_level(logging.WARNING, logger="kner.data.splits"):
        parts = split_by_document(exs, (0.985, 0.01, 0.005))
    assert len(parts["test"]) == 5
    assert [r.getMessage() for r in caplog.records] == [
        "test gets 5 of 1000 sentences (0.50%, under 1%): scores on it will be noisy"
    ]


def test_split_warning_reaches_the_cli(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [Example(str(i), "가") for i in range(1000)])
    p = kner_process("data", "split", tmp_path / "a.jsonl", "-o", tmp_path / "s", "--ratios", "0.985,0.01,0.005")
    assert p.returncode == 0, p.stderr
    assert "test gets 5 of 1000 sentences" in p.stderr


# ---- MultiCoNER ------------------------------------------------------------------------------------

BLIND = """# id 0a0b0c0d-1111-4000-8000-000000000001
김하늘 _ _
부산에서 _ _
. _ _


# id 0a0b0c0d-1111-4000-8000-000000000002
( _ _
새솔 _ _
) _ _
"""


def test_multiconer_blind_test_file_reads_as_texts(tmp_path):
    p = tmp_path / "ko_test.conll"
    p.write_text(BLIND, encoding="utf-8")
    res = read_dataset("multiconer", p)
    assert [(ex.id, ex.text, ex.entities) for ex in res.examples] == [
        ("0a0b0c0d-1111-4000-8000-000000000001", "김하늘 부산에서 .", []),
        ("0a0b0c0d-1111-4000-8000-000000000002", "( 새솔 )", []),
    ]
    assert not res.problems and "domain" not in res.examples[0].meta
    assert res.notes["sentences from a blind test file (no tags; read as texts without entities)"] == 2
    exs, note = read_inputs(p, "multiconer")[:2]  # what `kner predict -f multiconer` reads
    assert [e.text for e in exs] == ["김하늘 부산에서 .", "( 새솔 )"] and note is None
    r = run_app("data", "convert", "multiconer", p, "-o", tmp_path / "t.jsonl")
    assert r.exit_code == 0, r.output
    assert "read 2 sentences, 0 entities" in r.output
    p.write_text(BLIND.replace("새솔 _ _", "새솔 _ _ B-GRP"), encoding="utf-8")
    with pytest.raises(DataError, match=r"expected 'token _ _' \(3 columns, a blind test file\), got 4") as err:
        read_dataset("multiconer", p)
    assert err.value.line == 9


def test_multiconer_duplicate_ids_are_reported_and_made_unique(tmp_path):
    sent = "# id {}\tdomain={}\n김하늘 _ _ B-PER\n갔다 _ _ O\n\n"
    ids = ["aa", "bb", "aa", "aa", "aa-2", "cc"]
    p = tmp_path / "dup.conll"
    p.write_text("".join(sent.format(i, "train") for i in ids), encoding="utf-8")
    res = read_dataset("multiconer", p)
    assert [ex.id for ex in res.examples] == ["aa", "bb", "aa-2", "aa-3", "aa-2-2", "cc"]
    assert [ex.meta["doc"] for ex in res.examples] == [ex.id for ex in res.examples]
    dups = [(pr.line, pr.sentence_id, pr.reason) for pr in res.problems]
    assert dups[:2] == [
        (9, "aa-2", "id aa already used at line 1; this sentence is aa-2"),
        (13, "aa-3", "id aa already used at line 1; this sentence is aa-3"),
    ]
    assert len(dups) == 3 and {pr.kind for pr in res.problems} == {"duplicate-id"}
    assert res.examples[0].meta["domain"] == "train"
    out = tmp_path / "dup.jsonl"
    r = run_app("data", "convert", "multiconer", p, "-o", out, "-O", "version=1")
    assert r.exit_code == 0, r.output
    assert "duplicate-id: 3" in r.output and "id aa already used at line 1" in r.output
    r = run_app("evaluate", "--gold", out, "--pred", out, "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text(encoding="utf-8"))["micro"]["f1"] == 1.0


def test_multiconer_v1_korean_file_as_released(tmp_path):
    # The shape of KO-Korean/ko_train.conll (SemEval 2022): header with domain=ko, punctuation tokens
    # (including '#' and '_' as tokens), sentences ending with or without blank lines, CRLF line ends.
    text = (
        "# id 11111111-aaaa-4000-8000-000000000001\tdomain=ko\n"
        "# _ _ O\n1 _ _ O\n_ _ _ O\n김하늘 _ _ B-PER\n( _ _ O\n새솔 _ _ B-CORP\n전자 _ _ I-CORP\n) _ _ O\n"
        ". _ _ O\n\n\n"
        "# id 11111111-aaaa-4000-8000-000000000002\tdomain=ko\n"
        '부산\u00a0광역시 _ _ B-LOC\n" _ _ O\n누리 _ _ B-CW\n" _ _ O\n'
        "# id 11111111-aaaa-4000-8000-000000000003\tdomain=ko\n"
        "끝 _ _ O\n"
    )
    p = tmp_path / "ko_dev.conll"
    p.write_bytes(text.replace("\n", "\r\n").encode("utf-8"))
    res = read_dataset("multiconer", p)
    assert res.scheme == "multiconer_v1" and not res.problems and res.skipped == 0
    assert [ex.text for ex in res.examples] == ["# 1 _ 김하늘 ( 새솔 전자 ) .", '부산\u00a0광역시 " 누리 "', "끝"]
    assert [[(e.label, e.text) for e in ex.entities] for ex in res.examples] == [
        [("PER", "김하늘"), ("CORP", "새솔 전자")],
        [("LOC", "부산\u00a0광역시"), ("CW", "누리")],
        [],
    ]
    assert {ex.meta["domain"] for ex in res.examples} == {"ko"}
    assert [ex.meta["source"] for ex in res.examples] == ["ko_dev.conll:1", "ko_dev.conll:13", "ko_dev.conll:18"]


def test_ids_repeated_across_the_files_of_a_folder_are_made_unique(tmp_path):
    # Two files of one folder, each numbering its sentences from the same ids: evaluation pairs by id.
    sent = "# id {}\tdomain=ko\n김하늘 _ _ B-PER\n갔다 _ _ O\n\n"
    (tmp_path / "a.conll").write_text(sent.format("s1") + sent.format("s2"), encoding="utf-8")
    (tmp_path / "b.conll").write_text(sent.format("s1"), encoding="utf-8")
    res = read_dataset("multiconer", tmp_path)
    assert [ex.id for ex in res.examples] == ["s1", "s2", "s1-2"]
    assert [(pr.path, pr.line, pr.reason) for pr in res.problems] == [
        (str(tmp_path / "b.conll"), 1, "id s1 already used at a.conll:1; this sentence is s1-2")
    ]
