import json
from pathlib import Path

import pytest

from helpers import kner_process, run_app
from kner.data.example import read_jsonl
from kner.errors import KnerError

FIX = Path(__file__).parent / "fixtures" / "readers"


def invoke(*args):
    return run_app("data", *args)


def test_convert_reports_counts_and_problems(tmp_path):
    out, probs = tmp_path / "k.jsonl", tmp_path / "p.tsv"
    r = invoke("convert", "kmou", FIX / "kmou", "-o", out, "--problems", probs)
    assert r.exit_code == 0, r.output
    assert "read 4 sentences, 8 entities from 2 file(s)" in r.output
    assert "5 problems, 1 skipped" in r.output and "bio-mismatch: 2" in r.output
    rows = probs.read_text(encoding="utf-8").splitlines()
    assert rows[0] == "path\tline\tsentence_id\tkind\treason" and len(rows) == 6
    assert any("00001_NER:4" in row and "unparseable" in row for row in rows)
    exs = read_jsonl(out)
    assert [e.label for e in exs[0].entities] == ["POH", "TIM"] and exs[0].meta["doc"] == "00001_NER"


def test_convert_with_scheme_map_and_trimmed_particles(tmp_path):
    out = tmp_path / "n.jsonl"
    r = invoke("convert", "naver", FIX / "naver_sample.txt", "-o", out, "--trim-particles", "--scheme-map", "spacy19")
    assert r.exit_code == 0, r.output
    assert "particles trimmed" in r.output
    assert "mapped 8 entities to spacy19, dropped 2" in r.output and "CVL -> (dropped): 2" in r.output
    exs = read_jsonl(out)
    assert {e.label for ex in exs for e in ex.entities} == {"ORG", "LOC", "PER"}
    assert exs[1].entities[0].text == "김연아"


def test_convert_with_map_file_needs_every_label_or_a_fallback(tmp_path):
    tsv = tmp_path / "m.tsv"
    tsv.write_text("PS\tPER\nOG\tORG\n", encoding="utf-8")
    r = invoke("convert", "klue", FIX / "klue_sample.tsv", "-o", tmp_path / "a.jsonl", "--map-file", tsv)
    assert r.exit_code != 0 and isinstance(r.exception, KnerError) and "QT" in str(r.exception)
    r = invoke(
        "convert", "klue", FIX / "klue_sample.tsv", "-o", tmp_path / "a.jsonl", "--map-file", tsv, "--fallback", "MISC"
    )
    assert r.exit_code == 0, r.output
    assert "fallback 3" in r.output
    labels = [e.label for ex in read_jsonl(tmp_path / "a.jsonl") for e in ex.entities]
    assert labels == ["PER", "ORG", "MISC", "PER", "MISC", "MISC"]


def test_convert_reader_options(tmp_path):
    r = invoke(
        "convert",
        "conll",
        FIX / "conll_char.txt",
        "-o",
        tmp_path / "c.jsonl",
        "-O",
        "level=char",
        "-O",
        "space_token=_",
    )
    assert r.exit_code == 0, r.output
    assert read_jsonl(tmp_path / "c.jsonl")[0].text == "이순신 장군"


def test_stats_table(tmp_path):
    invoke("convert", "kmou", FIX / "kmou", "-o", tmp_path / "k.jsonl")
    r = invoke("stats", tmp_path / "k.jsonl")
    assert r.exit_code == 0, r.output
    assert "sentences" in r.output and "entities per label" in r.output
    assert all(lab in r.output for lab in ("PER", "POH", "TIM", "LOC", "ORG"))


def test_stats_with_tokenizer(tmp_path, llama_dir):
    invoke("convert", "kmou", FIX / "kmou", "-o", tmp_path / "k.jsonl")
    r = invoke("stats", tmp_path / "k.jsonl", "--tokenizer", llama_dir, "--scheme", "kmou")
    assert r.exit_code == 0, r.output
    for row in ("sentence text", "answer (tags)", "prompt without answer", "prompt with answer"):
        assert row in r.output


def test_split_writes_three_files(tmp_path):
    src = tmp_path / "all.jsonl"
    lines = [
        json.dumps({"id": f"{d}-{s}", "text": "서울", "entities": [], "meta": {"doc": f"doc{d}"}})
        for d in range(20)
        for s in range(5)
    ]
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = invoke("split", src, "-o", tmp_path / "out", "--ratios", "0.6,0.2,0.2", "--seed", "3")
    assert r.exit_code == 0, r.output
    parts = {k: read_jsonl(tmp_path / "out" / f"{k}.jsonl") for k in ("train", "dev", "test")}
    assert [len(v) for v in parts.values()] == [60, 20, 20]
    docs = [{e.meta["doc"] for e in v} for v in parts.values()]
    assert not (docs[0] & docs[1] or docs[0] & docs[2] or docs[1] & docs[2])
    assert "train: 12 documents, 60 sentences" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["convert", "kmou", "/nonexistent/kmou", "-o", "x.jsonl"], "no such file or folder"),
        (["convert", "tsv", ".", "-o", "x.jsonl"], "unknown data format"),
        (["split", "missing.jsonl", "-o", "out", "--ratios", "0.5,0.5"], "ratios"),
        (["convert", "kmou", str(FIX / "kmou"), "-o", "x.jsonl", "--trim-particles"], "naver format only"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    p = kner_process("data", *args, cwd=tmp_path)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
