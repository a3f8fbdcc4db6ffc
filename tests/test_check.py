"""`kner data check` / kner.data.check: every finding kind, exit codes, and `kner run` stopping after prepare."""

import json
import logging
import unicodedata
from pathlib import Path

import pytest
import yaml

from helpers import run_app
from kner.data.check import check_files, check_folder, check_splits
from kner.data.example import Entity, Example
from kner.errors import ConfigError, DataError

NAMES = ["김민준", "이서연", "박지훈", "최수아", "정하늘", "강도윤"]
PLACES = ["서울", "부산", "대구", "광주", "전주", "강릉"]


def ex(i: int, prefix: str = "s", doc: str | None = None, label2: str = "LOC") -> Example:
    """A made-up sentence with a PER and a second entity; its text is unique per (prefix, i)."""
    name, place = NAMES[i % 6], PLACES[(i // 6) % 6]
    text = f"{name} 씨는 {prefix}{i}번째 날 {place}에 도착했다."
    s = text.index(place)
    return Example(
        f"{prefix}:{i}",
        text,
        [Entity(0, len(name), "PER", name), Entity(s, s + len(place), label2, place)],
        {"doc": doc or f"{prefix}-doc{i // 5}"},
    )


def rows(examples) -> list[dict]:
    return [e.to_dict() for e in examples]


def write(folder: Path, **splits) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, recs in splits.items():
        (folder / f"{name}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8"
        )
    return folder


def clean(tmp_path: Path, **override) -> Path:
    splits = {
        "train": rows(ex(i, "t") for i in range(80)),
        "dev": rows(ex(i, "d") for i in range(12)),
        "test": rows(ex(i, "e") for i in range(12)),
    }
    splits.update(override)
    return write(tmp_path / "split", **splits)


def kinds(report) -> dict:
    return {(f.split, f.kind): f.severity for f in report.findings}


def check(*args):
    return run_app("data", "check", *args, catch_exceptions=False)


def test_clean_split_passes_with_counts(tmp_path):
    rep = check_folder(clean(tmp_path))
    assert rep.ok and rep.findings == []
    assert {n: s.sentences for n, s in rep.splits.items()} == {"train": 80, "dev": 12, "test": 12}
    assert dict(rep.splits["train"].entities) == {"PER": 80, "LOC": 80} and rep.splits["train"].documents == 16
    r = check(tmp_path / "split")
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1] == "check passed: 0 errors, 0 warnings"


def test_empty_test_split_fails_naming_test(tmp_path):
    r = check(clean(tmp_path, test=[]))
    assert r.exit_code == 1
    assert "error   test: empty split (0 sentences)" in r.output
    assert r.output.strip().splitlines()[-1] == "check FAILED: 1 error, 0 warnings"


def test_missing_file_is_an_error_not_also_empty(tmp_path):
    folder = clean(tmp_path)
    (folder / "dev.jsonl").unlink()
    rep = check_folder(folder)
    assert kinds(rep) == {("dev", "missing"): "error"}
    assert rep.errors[0].line() == f"dev: file not found: {folder / 'dev.jsonl'}"


def test_tiny_split_is_a_warning_and_exits_0(tmp_path):
    r = check(clean(tmp_path, dev=rows(ex(i, "d") for i in range(3))))
    assert r.exit_code == 0, r.output
    assert "warning dev: tiny split: 3 sentence(s), 3.2% of 95" in r.output
    # Under 1% of all sentences is tiny too, however many sentences that is.
    big = check_splits({"train": [ex(i, "t") for i in range(2000)], "test": [ex(i, "e") for i in range(15)]})
    assert kinds(big) == {("test", "tiny"): "warning"}


def test_invalid_entity_is_an_error_with_file_and_line(tmp_path):
    bad = rows(ex(i, "t") for i in range(80))
    bad[4]["entities"][0]["text"] = "홍길동"  # does not match text[0:3]
    bad[6]["entities"][1]["end"] = 999  # outside the text
    folder = clean(tmp_path, train=bad)
    rep = check_folder(folder)
    f = rep.errors[0]
    assert (f.kind, f.split, f.count) == ("invalid-entity", "train", 2)
    assert f"{folder / 'train.jsonl'}:5: entity text '홍길동' does not match text[0:3] = '정하늘'" in f.message
    assert check(folder).exit_code == 1


def test_overlapping_entities_are_reported_not_refused(tmp_path):
    recs = rows(ex(i, "t") for i in range(80))
    recs[2]["entities"].append({"start": 0, "end": 5, "label": "ORG", "text": recs[2]["text"][:5]})
    rep = check_folder(clean(tmp_path, train=recs))
    assert kinds(rep) == {("train", "overlap"): "warning"}
    assert rep.warnings[0].examples == ("t:2",) and rep.ok


def test_duplicate_ids_error_in_test_warning_elsewhere(tmp_path):
    train = rows(ex(i, "t") for i in range(80))
    train[1]["id"] = train[0]["id"]
    test = rows(ex(i, "e") for i in range(12))
    test[5]["id"] = test[3]["id"]
    rep = check_folder(clean(tmp_path, train=train, test=test))
    assert kinds(rep) == {("train", "duplicate-id"): "warning", ("test", "duplicate-id"): "error"}
    assert rep.errors[0].examples == ("e:3",)


def test_labels_missing_from_train_are_warned(tmp_path):
    rep = check_folder(clean(tmp_path, test=rows(ex(i, "e", label2="GPE") for i in range(12))))
    assert kinds(rep) == {("test", "unseen-label"): "warning"}
    assert "label(s) not in train: GPE (12)" in rep.warnings[0].message


def test_identical_texts_across_splits_are_leakage(tmp_path):
    test = rows(ex(i, "e") for i in range(12))
    # Same sentence as train's t:7, with doubled spaces and in NFD: still the same text.
    test[0]["text"] = unicodedata.normalize("NFD", ex(7, "t").text.replace(" ", "  ", 1))
    test[0]["entities"] = []
    test[1] = {**ex(7, "t").to_dict(), "id": "e:1"}
    rep = check_folder(clean(tmp_path, test=test))
    leak = next(f for f in rep.findings if f.kind == "leak")
    assert (leak.split, leak.count) == ("test", 2) and leak.severity == "warning"
    assert leak.examples == ("e:0=t:7", "e:1=t:7")
    assert "identical to sentences of train" in leak.message and "1 distinct text" in leak.message


def test_non_nfc_text_names_what_nfc_changes(tmp_path):
    test = rows(ex(i, "e") for i in range(12))
    test[2]["text"] = unicodedata.normalize("NFD", test[2]["text"])  # offsets shift: no entities
    test[2]["entities"] = []
    dev = rows(ex(i, "d") for i in range(12))
    dev[0]["text"] += " \uf981"  # CJK compatibility ideograph 女, as in KMOU
    rep = check_folder(clean(tmp_path, dev=dev, test=test))
    msgs = {f.split: f.message for f in rep.findings if f.kind == "not-nfc"}
    assert "U+F981" in msgs["dev"] and "jamo" not in msgs["dev"]
    assert "1 with decomposed Hangul (jamo)" in msgs["test"]
    assert rep.ok


def test_empty_text_and_no_entities(tmp_path):
    dev = [{**e.to_dict(), "entities": []} for e in (ex(i, "d") for i in range(12))]
    dev[0]["text"] = "   "
    rep = check_folder(clean(tmp_path, dev=dev))
    assert kinds(rep) == {("dev", "no-entities"): "warning", ("dev", "empty-text"): "warning"}


@pytest.fixture(scope="module")
def char_tokenizer(tmp_path_factory):
    from kner.model.scratch import train_tokenizer

    texts = [e.text for e in (ex(i, "t") for i in range(36))]
    tok = train_tokenizer(texts, kind="char", min_count=1)
    folder = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(folder)
    return tok, folder


def test_too_long_examples_use_training_encoding(tmp_path, char_tokenizer):
    tok, folder = char_tokenizer
    train = [ex(i, "t") for i in range(80)]
    train[3].text += " 가" * 1200  # one character per token: far over 1,024 tokens with the prompt
    rep = check_splits({"train": train, "test": [ex(i, "e") for i in range(12)]}, tok)
    assert kinds(rep) == {("train", "too-long"): "warning"}
    assert (
        rep.warnings[0].examples == ("t:3",)
        and "1 of 80 sentence(s) longer than max_seq_len=1024" in rep.warnings[0].message
    )
    # Every training example too long: training would have nothing to learn from.
    rep = check_splits({"train": train[:5], "test": [ex(i, "e") for i in range(12)]}, tok, max_seq_len=16)
    assert kinds(rep)[("train", "too-long")] == "error" and kinds(rep)[("test", "too-long")] == "warning"
    r = check(clean(tmp_path), "--tokenizer", folder, "--max-seq-len", 16)
    assert r.exit_code == 1 and "train: 80 of 80 sentence(s) longer than max_seq_len=16" in r.output


def test_named_files_and_json_output(tmp_path):
    folder = clean(tmp_path)
    out = tmp_path / "findings.json"
    held = write(tmp_path / "held", sample=rows(ex(i, "t") for i in range(3)))
    r = check(folder / "train.jsonl", f"test={held / 'sample.jsonl'}", "--json", out)
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["ok"] is True and list(data["splits"]) == ["train", "test"]
    assert {(f["split"], f["kind"]) for f in data["findings"]} == {("test", "tiny"), ("test", "leak")}
    assert data["verdict"] == "check passed: 0 errors, 2 warnings"
    # Two files with the same stem need names; a folder does not mix with files.
    r = run_app("data", "check", str(folder / "train.jsonl"), str(folder / "train.jsonl"))
    assert isinstance(r.exception, ConfigError) and "two files for split 'train'" in str(r.exception)
    r = run_app("data", "check", str(folder), str(folder / "dev.jsonl"))
    assert isinstance(r.exception, ConfigError) and "give one split folder alone" in str(r.exception)
    r = run_app("data", "check", str(tmp_path / "nope.jsonl"))
    assert isinstance(r.exception, DataError) and str(r.exception) == f"{tmp_path / 'nope.jsonl'}: file not found"
    rep = check_files({"a": folder / "dev.jsonl", "b": folder / "test.jsonl"})
    assert rep.notes == ["no split named train: labels unseen in training were not checked"]


# ---- kner run: the check after prepare ---------------------------------------------------------------------


def _config(tmp_path: Path, ratios) -> Path:
    data = tmp_path / "all.jsonl"
    data.write_text(
        "".join(json.dumps(ex(i, "x").to_dict(), ensure_ascii=False) + "\n" for i in range(60)), encoding="utf-8"
    )
    cfg = {
        "name": "check",
        "data": {"format": "jsonl", "path": str(data), "split": {"ratios": ratios}},
        "model": {"base": "no/such-model"},
    }  # never reached: the run stops before training
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return p


def test_run_stops_after_prepare_on_an_empty_split(tmp_path):
    from kner.pipeline import run

    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"data check failed, test: empty split \(0 sentences\)"):
        run(_config(tmp_path, [0.9, 0.1, 0.0]), out)
    assert (out / "prepare" / "test.jsonl").is_file() and not (out / "train").exists()
    # The prepare stage is done and skipped on a rerun; the check still stops it.
    with pytest.raises(DataError, match="test: empty split"):
        run(_config(tmp_path, [0.9, 0.1, 0.0]), out)


def test_run_logs_warnings_and_goes_on(tmp_path, caplog):
    from kner.pipeline import run

    with caplog.at_level(logging.WARNING, logger="kner.pipeline"):
        summary = run(_config(tmp_path, [0.8, 0.1, 0.1]), tmp_path / "run", stop_after="prepare")
    assert [e["stage"] for e in summary["stages"]] == ["prepare"]
    assert any("data check: dev: tiny split: 5 sentence(s)" in m for m in caplog.messages)
