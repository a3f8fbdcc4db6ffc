"""Annotation-tool readers (doccano, Label Studio, Prodigy, spaCy DocBin, HF datasets) and writers.

Each reader test builds a file the way the tool itself stores it, from a few
hundred made-up sentences, and compares texts and entities exactly; each
writer is checked by a round trip (write, read back with the reader of the
same name, compare).
"""

import json
import random
from pathlib import Path

import pytest

from helpers import run_app
from kner.data.example import Entity, Example, read_jsonl, write_jsonl
from kner.data.readers import read_dataset
from kner.data.readers.annotation import chars_to_utf16
from kner.data.readers.writers import write
from kner.errors import ConfigError, DataError

PS = ["김민수", "이서연", "박지훈", "최유진", "정하늘", "한 지민"]
LC = ["서울", "부산", "제주도", "강릉", "대전역", "영동고속도로"]
OG = ["한국해양대학교", "삼성전자", "국회", "서울시청", "유엔 안보리"]
DT = ["3월 5일", "2019년", "어제", "지난해"]
TEMPLATES = [
    "{PS} 씨는 {DT} {LC}에서 {OG} 관계자를 만났다.",
    "{OG} 측은 {LC} 지점을 새로 열었다고 {DT} 밝혔다.",
    "{PS}, {PS} 두 사람이 {LC} 시내를 걸었다 😀 정말 좋았다.",
    "🎉 {DT} {OG} 행사에 {PS} 씨가 왔다.",
    "{LC} 날씨는 맑음.",
    "특별한 일은 없었다.",
]
_FIELD = {"PS": PS, "LC": LC, "OG": OG, "DT": DT}


def corpus(n: int = 300, seed: int = 4) -> list[Example]:
    """Made-up sentences with entities (some with emoji before them, so UTF-16 offsets differ)."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        tpl = TEMPLATES[i % len(TEMPLATES)]
        text, ents = "", []
        for part in tpl.replace("}", "{").split("{"):
            if part in _FIELD:
                word = rnd.choice(_FIELD[part])
                ents.append(Entity(len(text), len(text) + len(word), part, word))
                text += word
            else:
                text += part
        out.append(Example(f"s{i}", text, sorted(ents), {"doc": f"d{i // 10}"}))
    return out


def spans(examples) -> list[tuple[str, list[tuple[int, int, str, str]]]]:
    return [(ex.text, [(e.start, e.end, e.label, e.text) for e in ex.entities]) for ex in examples]


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def invoke(*args):
    return run_app("data", *args)


# ---------------------------------------------------------------------------- doccano


def doccano_rows(examples, form: str):
    rows = []
    for k, ex in enumerate(examples):
        m = chars_to_utf16(ex.text)  # doccano's editor counts UTF-16 code units
        if form == "label":
            rows.append(
                {
                    "id": 100 + k,
                    "text": ex.text,
                    "Comments": [],
                    "label": [[m[e.start], m[e.end], e.label] for e in ex.entities],
                }
            )
        else:
            rows.append(
                {
                    "id": 100 + k,
                    "text": ex.text,
                    "relations": [],
                    "Comments": [],
                    "entities": [
                        {"id": 9000 + j, "label": e.label, "start_offset": m[e.start], "end_offset": m[e.end]}
                        for j, e in enumerate(ex.entities)
                    ],
                }
            )
    return rows


@pytest.mark.parametrize("form", ["label", "entities"])
def test_doccano_export_reads_exactly(tmp_path, form):
    gold = corpus()
    assert any(chars_to_utf16(ex.text)[-1] != len(ex.text) for ex in gold)  # the emoji case is exercised
    res = read_dataset("doccano", jsonl(tmp_path / "admin.jsonl", doccano_rows(gold, form)))
    assert spans(res.examples) == spans(gold)
    assert not res.problems and res.skipped == 0
    assert res.examples[3].id == "103" and res.examples[3].meta == {"doc": "admin.jsonl:103", "source": "admin.jsonl:4"}
    assert res.notes["texts with characters outside the BMP (offsets read as UTF-16 code units)"] == 100


def test_doccano_chars_offsets_and_problems(tmp_path):
    text = "😀 서울 시청에서  김민수를 만났다."
    f = jsonl(
        tmp_path / "d.jsonl",
        [
            {"id": 1, "text": text, "label": [[2, 4, "LC"], [2, 7, "OG"], [9, 14, "PS"], [20, 40, "DT"]]},
            {"id": 2, "text": "빈 문장", "label": []},
            {"id": 3, "label": [[0, 1, "X"]]},
            {"id": 4, "text": "좋다", "label": [["a", 1, "X"], [0, 1, ""]]},
        ],
    )
    res = read_dataset("doccano", f, offsets="chars")
    ex = res.examples[0]
    assert [(e.label, e.text) for e in ex.entities] == [("LC", "서울"), ("OG", "서울 시청"), ("PS", "김민수")]
    got = {(p.line, p.kind) for p in res.problems}
    assert got == {
        (1, "offset-out-of-range"),
        (1, "overlap"),
        (1, "whitespace-trimmed"),
        (3, "no-text"),
        (4, "bad-span"),
    }
    assert res.skipped == 1 and len(res.examples) == 3 and res.examples[1].entities == []
    assert all(p.path == str(f) for p in res.problems)


def test_doccano_invalid_json_names_the_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "a", "label": []}\n{"text": "b", "label": [\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_dataset("doccano", f)
    assert err.value.line == 2 and "bad.jsonl:2" in str(err.value)


# ---------------------------------------------------------------------------- Label Studio


def ls_result(ex, labels_key="labels"):
    return [
        {
            "id": f"r{j}",
            "from_name": "label",
            "to_name": "text",
            "type": "labels",
            "value": {"start": e.start, "end": e.end, "text": e.text, labels_key: [e.label]},
        }
        for j, e in enumerate(ex.entities)
    ]


def test_labelstudio_export_reads_exactly_and_chooses_one_annotation(tmp_path):
    gold = corpus()
    tasks = []
    for k, ex in enumerate(gold):
        task = {
            "id": 1 + k,
            "data": {"text": ex.text},
            "predictions": [],
            "annotations": [
                {
                    "id": 10 * k + 1,
                    "was_cancelled": False,
                    "ground_truth": False,
                    "updated_at": "2024-05-01T10:00:00Z",
                    "result": ls_result(ex)
                    + [{"type": "choices", "value": {"choices": ["ok"]}, "from_name": "c", "to_name": "text"}],
                }
            ],
        }
        if k % 3 == 0:  # an older annotation and a cancelled newer one: neither is used
            task["annotations"].insert(
                0, {"id": 10 * k + 2, "was_cancelled": False, "updated_at": "2024-04-01T10:00:00Z", "result": []}
            )
            task["annotations"].append(
                {"id": 10 * k + 3, "was_cancelled": True, "updated_at": "2024-06-01T10:00:00Z", "result": []}
            )
        tasks.append(task)
    f = tmp_path / "project-1-at-2024.json"
    f.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")  # Label Studio writes one line
    res = read_dataset("labelstudio", f)
    assert spans(res.examples) == spans(gold)
    assert not res.problems and res.skipped == 0
    assert res.notes["tasks with several annotations (used the ground truth one, else the latest)"] == 100
    assert res.notes["results that are not spans (choices, relations, ...) ignored"] == 300
    assert res.examples[0].id == "1" and res.examples[0].meta["doc"] == f"{f.name}:1"


def test_labelstudio_utf16_offsets_predictions_and_problem_lines(tmp_path):
    text = "😀 서울에서 김민수를 만났다."
    tasks = [
        # offsets counted in UTF-16 code units (the emoji is two): value.text shows which reading is right
        {
            "id": 7,
            "data": {"text": text},
            "annotations": [
                {
                    "id": 1,
                    "result": [
                        {"type": "labels", "value": {"start": 3, "end": 5, "text": "서울", "labels": ["LC"]}},
                        {"type": "labels", "value": {"start": 8, "end": 11, "text": "김민수", "labels": ["PS"]}},
                    ],
                }
            ],
        },
        {
            "id": 8,
            "data": {"text": "부산에 갔다."},
            "annotations": [
                {
                    "id": 2,
                    "result": [{"type": "labels", "value": {"start": 0, "end": 2, "text": "대구", "labels": ["LC"]}}],
                }
            ],
        },
        {
            "id": 9,
            "data": {"text": "예측만 있다."},
            "annotations": [],
            "predictions": [
                {
                    "model_version": "v1",
                    "result": [{"type": "labels", "value": {"start": 0, "end": 2, "text": "예측", "labels": ["X"]}}],
                }
            ],
        },
        {"id": 10, "data": {"text": "취소됨"}, "annotations": [{"id": 3, "was_cancelled": True, "result": []}]},
    ]
    f = tmp_path / "ls.json"
    f.write_text(json.dumps(tasks, ensure_ascii=False, indent=2), encoding="utf-8")
    lines = f.read_text(encoding="utf-8").splitlines()
    start = {
        t["id"]: next(i + 1 for i, ln in enumerate(lines) if ln == "  {" and f'"id": {t["id"]},' in lines[i + 1])
        for t in tasks
    }
    res = read_dataset("labelstudio", f)
    assert [(e.start, e.end, e.text) for e in res.examples[0].entities] == [(2, 4, "서울"), (7, 10, "김민수")]
    assert res.notes["spans with UTF-16 offsets converted to characters"] == 2
    probs = {(p.sentence_id, p.line, p.kind) for p in res.problems}
    assert probs == {
        ("task 8", start[8], "span-text-mismatch"),
        ("task 9", start[9], "unannotated"),
        ("task 10", start[10], "cancelled"),
    }
    assert res.skipped == 2 and [ex.id for ex in res.examples] == ["7", "8"]
    with_preds = read_dataset("labelstudio", f, predictions=True)
    assert [e.text for e in with_preds.examples[2].entities] == ["예측"] and with_preds.skipped == 1


def test_labelstudio_json_min_keeps_the_latest_annotation(tmp_path):
    rows = [
        {
            "id": 1,
            "text": "서울에 갔다.",
            "label": [{"start": 0, "end": 2, "text": "서울", "labels": ["LC"]}],
            "annotator": 1,
            "annotation_id": 5,
            "updated_at": "2024-01-02",
        },
        {
            "id": 1,
            "text": "서울에 갔다.",
            "label": [{"start": 0, "end": 2, "text": "서울", "labels": ["OG"]}],
            "annotator": 2,
            "annotation_id": 6,
            "updated_at": "2024-01-01",
        },
        {"id": 2, "text": "아무것도 없다."},
    ]
    f = tmp_path / "min.json"
    f.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    res = read_dataset("labelstudio", f)
    assert [[e.label for e in ex.entities] for ex in res.examples] == [["LC"], []]
    assert res.notes["JSON-MIN annotations left out for a later one of the same task"] == 1


def test_labelstudio_not_an_array(tmp_path):
    f = tmp_path / "x.json"
    f.write_text('\n{"id": 1}', encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_dataset("labelstudio", f)
    assert err.value.line == 2 and "JSON array" in str(err.value)


# ---------------------------------------------------------------------------- Prodigy


def test_prodigy_export_reads_exactly_and_counts_answers(tmp_path):
    gold = corpus()
    rows = []
    for k, ex in enumerate(gold):
        answer = "accept" if k % 10 else ("reject" if k % 20 else "ignore")
        rows.append(
            {
                "text": ex.text,
                "_input_hash": k,
                "_task_hash": -k,
                "tokens": [],
                "spans": [
                    {"start": e.start, "end": e.end, "label": e.label, "token_start": 0, "token_end": 0}
                    for e in ex.entities
                ],
                "meta": {"id": ex.id},
                "answer": answer,
                "_view_id": "ner_manual",
            }
        )
    rows.append({"text": "누가 보냈나", "spans": [], "answer": "maybe"})
    f = jsonl(tmp_path / "ner_news.jsonl", rows)
    res = read_dataset("prodigy", f)
    kept = [ex for k, ex in enumerate(gold) if k % 10]
    assert spans(res.examples) == spans(kept) and [e.id for e in res.examples] == [e.id for e in kept]
    assert res.notes["tasks answered 'reject' left out"] == 15 and res.notes["tasks answered 'ignore' left out"] == 15
    [p] = res.problems
    assert (p.line, p.kind, res.skipped) == (301, "unknown-answer", 1)


# ---------------------------------------------------------------------------- spaCy DocBin


def test_spacy_docbin_reads_doc_ents_exactly(tmp_path):
    import spacy
    from spacy.tokens import DocBin

    nlp = spacy.blank("xx")
    db, stored = DocBin(), []
    for ex in corpus():
        doc = nlp.make_doc(ex.text)
        ents = [sp for e in ex.entities if (sp := doc.char_span(e.start, e.end, label=e.label)) is not None]
        doc.set_ents(spacy.util.filter_spans(ents))
        db.add(doc)
        stored.append((doc.text, [(e.start_char, e.end_char, e.label_, e.text) for e in doc.ents]))
    assert sum(len(s) for _, s in stored) > 500
    f = tmp_path / "train.spacy"
    db.to_disk(f)
    res = read_dataset("spacy", f)
    assert spans(res.examples) == stored and not res.problems
    assert res.examples[4].id == "train.spacy:5" and res.examples[4].meta["source"] == "train.spacy:5"


def test_spacy_docbin_trims_whitespace_tokens_and_rejects_other_files(tmp_path):
    from spacy.tokens import Doc, DocBin
    from spacy.vocab import Vocab

    vocab = Vocab()
    doc = Doc(vocab, words=["서울", " ", "시청"], spaces=[False, False, False])
    doc.set_ents([doc.char_span(0, 3, label="LC")])
    db = DocBin()
    db.add(Doc(vocab, words=["a"]))
    db.add(doc)
    f = tmp_path / "x.spacy"
    db.to_disk(f)
    res = read_dataset("spacy", f)
    assert [(e.start, e.end) for e in res.examples[1].entities] == [(0, 2)]
    [p] = res.problems
    assert (p.line, p.kind, p.sentence_id) == (2, "whitespace-trimmed", "x.spacy:2")
    bad = tmp_path / "bad.spacy"
    bad.write_bytes(b"not a docbin")
    with pytest.raises(DataError, match="not a spaCy DocBin"):
        read_dataset("spacy", bad)


# ---------------------------------------------------------------------------- Hugging Face datasets


KLUE_NAMES = ["B-DT", "I-DT", "B-LC", "I-LC", "B-OG", "I-OG", "B-PS", "I-PS", "B-QT", "I-QT", "B-TI", "I-TI", "O"]


def klue_like(examples):
    """KLUE's ``ner`` config layout: one character a token, spaces included, BIO over characters."""
    label = {"PS": "PS", "LC": "LC", "OG": "OG", "DT": "DT"}
    rows = {"sentence": [], "tokens": [], "ner_tags": []}
    for ex in examples:
        tags = ["O"] * len(ex.text)
        for e in ex.entities:
            tags[e.start] = f"B-{label[e.label]}"
            for i in range(e.start + 1, e.end):
                tags[i] = f"I-{label[e.label]}"
        rows["sentence"].append(ex.text)
        rows["tokens"].append(list(ex.text))
        rows["ner_tags"].append([KLUE_NAMES.index(t) for t in tags])
    return rows


def test_hf_klue_layout_reads_exactly(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

    gold = corpus()
    feats = Features(
        {
            "sentence": Value("string"),
            "tokens": Sequence(Value("string")),
            "ner_tags": Sequence(ClassLabel(names=KLUE_NAMES)),
        }
    )
    dd = DatasetDict(
        {
            "train": Dataset.from_dict(klue_like(gold[:200]), features=feats),
            "validation": Dataset.from_dict(klue_like(gold[200:]), features=feats),
        }
    )
    dd.save_to_disk(str(tmp_path / "klue_ner"))
    with pytest.raises(ConfigError, match="train, validation"):
        read_dataset("hf", tmp_path / "klue_ner")
    res = read_dataset("hf", tmp_path / "klue_ner", split="validation")
    assert spans(res.examples) == spans(gold[200:]) and not res.problems
    assert "level char (auto: every token is one character)" in res.notes
    assert res.examples[0].id == "validation:0"


def test_hf_word_tokens_string_tags_and_bad_rows(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Sequence, Value

    names = ["O", "B-PER", "I-PER", "B-LOC"]
    feats = Features(
        {"id": Value("string"), "tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=names))}
    )
    ds = Dataset.from_dict(
        {
            "id": ["a", "b", "c"],
            "tokens": [["이순신", "장군", "은", "한산도", "에"], ["홍", "길동"], ["x"]],
            "ner_tags": [[1, 2, 0, 3, 0], [2, 2], [-1]],
        },
        features=feats,
    )
    ds.save_to_disk(str(tmp_path / "words"))
    res = read_dataset("hf", tmp_path / "words")
    assert [(ex.text, [(e.label, e.text) for e in ex.entities]) for ex in res.examples] == [
        ("이순신 장군 은 한산도 에", [("PER", "이순신 장군"), ("LOC", "한산도")]),
        ("홍 길동", [("PER", "홍 길동")]),
    ]
    assert {(p.line, p.sentence_id, p.kind) for p in res.problems} == {(1, "b", "i-without-b"), (2, "c", "unknown-tag")}
    assert res.skipped == 1 and "level word (auto: multi-character tokens)" in res.notes
    with pytest.raises(DataError, match="no such folder"):
        read_dataset("hf", tmp_path / "missing" / "folder")


# ---------------------------------------------------------------------------- writers: round trips


@pytest.mark.parametrize(
    "fmt,opts,read_opts",
    [
        ("doccano", {}, {}),
        ("doccano", {"form": "entities"}, {}),
        ("doccano", {"offsets": "chars"}, {"offsets": "chars"}),
        ("labelstudio", {}, {}),
        ("labelstudio", {"predictions": True}, {"predictions": True}),
        ("prodigy", {}, {}),
        ("spacy", {}, {}),
        ("conll", {}, {"level": "char", "space_token": "_"}),
    ],
)
def test_writer_round_trip(tmp_path, fmt, opts, read_opts):
    gold = corpus()
    out = tmp_path / {"spacy": "out.spacy", "labelstudio": "out.json"}.get(fmt, "out.jsonl")
    notes = write(fmt, gold, out, **opts)
    res = read_dataset(fmt, out, **read_opts)
    assert spans(res.examples) == spans(gold)
    assert not res.problems and not notes
    if fmt in ("doccano", "labelstudio", "prodigy"):
        assert [ex.meta["doc"] for ex in res.examples] == [ex.meta["doc"] for ex in gold]


def test_conll_word_level_and_what_formats_cannot_hold(tmp_path):
    ex = Example(
        "a",
        "서울 시청에서 김민수를",
        [Entity(0, 2, "LC", "서울"), Entity(0, 7, "OG", "서울 시청에서"), Entity(8, 11, "PS", "김민수")],
    )
    notes = write("conll", [ex], tmp_path / "w.conll", level="word")
    assert (tmp_path / "w.conll").read_text(encoding="utf-8") == "서울 B-OG\n시청에서 I-OG\n김민수를 B-PS\n\n"
    assert notes == {
        "entities left out: they overlap an earlier one (BIO cannot nest)": 1,
        "entities widened to whole words (level=word)": 1,
    }
    notes = write("spacy", [ex], tmp_path / "x.spacy")
    assert notes["entities left out: they overlap an earlier one (spaCy entities cannot nest)"] == 1
    back = read_dataset("spacy", tmp_path / "x.spacy").examples[0]
    assert back.text == ex.text and [e.text for e in back.entities] == ["서울 시청에서", "김민수"]
    with pytest.raises(DataError, match="space token"):
        write("conll", [Example("u", "a_b")], tmp_path / "u.conll")
    with pytest.raises(ConfigError, match="no option level"):
        write("doccano", [ex], tmp_path / "d.jsonl", level="char")


# ---------------------------------------------------------------------------- CLI


def test_cli_convert_each_format_and_export_back(tmp_path):
    gold = corpus(60)
    src = tmp_path / "gold.jsonl"
    write_jsonl(src, gold)
    files = {
        "doccano": "d.jsonl",
        "labelstudio": "l.json",
        "prodigy": "p.jsonl",
        "spacy": "s.spacy",
        "conll": "c.conll",
    }
    for fmt, name in files.items():
        r = invoke("export", fmt, src, "-o", tmp_path / name)
        assert r.exit_code == 0, r.output
        assert f"wrote 60 examples, {sum(len(e.entities) for e in gold)} entities" in r.output
        extra = ["-O", "level=char", "-O", "space_token=_"] if fmt == "conll" else []
        r = invoke("convert", fmt, tmp_path / name, "-o", tmp_path / f"{fmt}.jsonl", *extra)
        assert r.exit_code == 0, r.output
        assert "read 60 sentences" in r.output and "0 problems, 0 skipped" in r.output
        assert spans(read_jsonl(tmp_path / f"{fmt}.jsonl")) == spans(gold)
    r = invoke("export", "doccano", src, "-o", tmp_path / "x.jsonl", "-O", "form=triples")
    assert r.exit_code != 0 and "form must be 'label' or 'entities'" in str(r.exception)


def test_cli_convert_hf_and_a_problem_row(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Sequence, Value

    feats = Features(
        {
            "sentence": Value("string"),
            "tokens": Sequence(Value("string")),
            "ner_tags": Sequence(ClassLabel(names=KLUE_NAMES)),
        }
    )
    Dataset.from_dict(klue_like(corpus(30)), features=feats).save_to_disk(str(tmp_path / "hfds"))
    r = invoke("convert", "hf", tmp_path / "hfds", "-o", tmp_path / "h.jsonl")
    assert r.exit_code == 0, r.output
    assert "read 30 sentences" in r.output and spans(read_jsonl(tmp_path / "h.jsonl")) == spans(corpus(30))
    bad = jsonl(
        tmp_path / "bad.jsonl", [{"text": "서울", "label": [[0, 2, "LC"]]}, {"text": "부산", "label": [[0, 9, "LC"]]}]
    )
    r = invoke("convert", "doccano", bad, "-o", tmp_path / "b.jsonl", "--problems", tmp_path / "p.tsv")
    assert r.exit_code == 0, r.output
    assert "offset-out-of-range: 1" in r.output and "problems written to" in r.output
    rows = (tmp_path / "p.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[1].startswith(f"{bad}\t2\t2\toffset-out-of-range\t")


def test_labelstudio_folder_reads_its_json_exports(tmp_path):
    (tmp_path / "README.md").write_text("exports\n", encoding="utf-8")
    (tmp_path / "a.json").write_text(
        json.dumps(
            [
                {
                    "id": 1,
                    "data": {"text": "서울"},
                    "annotations": [
                        {
                            "id": 1,
                            "result": [
                                {"type": "labels", "value": {"start": 0, "end": 2, "text": "서울", "labels": ["LC"]}}
                            ],
                        }
                    ],
                }
            ],
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    res = read_dataset("labelstudio", tmp_path)
    assert [(ex.text, [e.label for e in ex.entities]) for ex in res.examples] == [("서울", ["LC"])] and res.files == 1
