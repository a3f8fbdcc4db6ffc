"""Reading and writing user files (kner.textio): encodings, BOM/CRLF, output paths checked before
work, and texts no model can take (lone surrogates) skipped and reported instead of sinking a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_kner, tiny_model_folder
from kner.data.example import Entity, Example, read_jsonl, write_jsonl
from kner.errors import ConfigError, DataError
from kner.textio import atomic_write, check_output, input_encoding, numbered_lines, read_text, text_problem

KMOU = Path(__file__).resolve().parent / "fixtures" / "readers" / "kmou"
SURROGATE_LINE = '{"id": "b", "text": "깨진 \\ud800 글자"}'  # a JSON escape: the file itself is UTF-8


def one_line_error(res, code: int = 2) -> str:
    """The CLI's answer to a user error: exit ``code``, one ``error:`` line, no traceback."""
    assert res.exit_code == code, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.output
    return errors[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


# -- reading -----------------------------------------------------------------------------------


def test_bom_crlf_and_lone_cr_are_read_as_plain_lines(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes("\ufeff이순신\r\n서울\r\n\r\n끝\r마지막".encode("utf-8"))
    assert list(numbered_lines(p)) == [(1, "이순신"), (2, "서울"), (3, ""), (4, "끝"), (5, "마지막")]
    assert read_text(p) == "이순신\n서울\n\n끝\n마지막"
    q = tmp_path / "b.txt"  # a BOM in another encoding is dropped too
    q.write_bytes("\ufeff이순신\r\n".encode("utf-16"))
    assert list(numbered_lines(q, "utf-16")) == [(1, "이순신")]


def test_decode_error_names_file_line_and_the_likely_encoding(tmp_path):
    p = tmp_path / "cp.txt"
    p.write_bytes("abc\n서울\n".encode() + "부산 해운대\n".encode("cp949"))
    with pytest.raises(DataError) as err:
        list(numbered_lines(p))
    assert err.value.line == 3 and err.value.path == str(p)
    assert str(err.value).startswith(f"{p}:3: not UTF-8 text") and "try --encoding cp949" not in str(err.value)
    # Mixed UTF-8 and CP949 decodes as neither: the generic hint.
    assert "give the file's encoding with --encoding" in str(err.value)
    q = tmp_path / "cp2.txt"
    q.write_bytes("첫 줄\n둘째 줄\n".encode("cp949"))
    with pytest.raises(
        DataError,
        match=r"cp2.txt:1: not UTF-8 text .*it decodes as CP949/EUC-KR: "
        r"try --encoding cp949",
    ):
        list(numbered_lines(q))
    with input_encoding("euc-kr"):
        lines = numbered_lines(q)  # the encoding is fixed when called
    assert list(lines) == [(1, "첫 줄"), (2, "둘째 줄")]
    with pytest.raises(ConfigError, match="unknown encoding 'cp-nope'"):
        with input_encoding("cp-nope"):
            pass


def test_folder_and_missing_file_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="is a folder; a file was expected"):
        list(numbered_lines(tmp_path))
    with pytest.raises(DataError, match="file not found"):
        read_text(tmp_path / "nope.txt")


def test_jsonl_with_bom_and_crlf_and_lone_surrogates_round_trip(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + '{"id": "a", "text": "서울"}\r\n\r\n'.encode() + SURROGATE_LINE.encode() + b"\r\n")
    exs = read_jsonl(p)
    assert [(e.id, e.text) for e in exs] == [("a", "서울"), ("b", "깨진 \ud800 글자")]
    out = tmp_path / "out.jsonl"
    write_jsonl(out, exs)
    raw = out.read_bytes().decode("utf-8")  # valid UTF-8: the surrogate is an escape
    assert '"서울"' in raw and "\\ud800" in raw
    assert [(e.id, e.text) for e in read_jsonl(out)] == [(e.id, e.text) for e in exs]


def test_text_problem():
    assert text_problem("이순신") is None and text_problem("") is None
    why = text_problem("ab\ud83d")
    assert why == (
        "not valid Unicode: character 3 is a lone surrogate U+D83D (half of a UTF-16 pair, e.g. an emoji cut in two)"
    )
    assert text_problem(3) == "not a string (int)"


# -- writing -----------------------------------------------------------------------------------


def test_check_output_refuses_before_creating_anything(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a folder; give a file name"):
        check_output(tmp_path)
    with pytest.raises(ConfigError, match=r"file.txt is a file, not a folder"):
        check_output(f / "sub" / "out.jsonl")
    with pytest.raises(ConfigError, match="is a file; a folder is expected"):
        check_output(f, folder=True)
    assert check_output(tmp_path / "new" / "deeper" / "out.jsonl") and not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_atomic_write_keeps_the_old_file_and_no_temp_on_failure(tmp_path):
    p = tmp_path / "out.jsonl"
    p.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(p) as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert p.read_text() == "old\n" and leftovers(tmp_path) == [] and len(list(tmp_path.iterdir())) == 1
    with atomic_write(p) as f:
        f.write("new\n")
    assert p.read_text() == "new\n" and len(list(tmp_path.iterdir())) == 1


# -- the data commands -------------------------------------------------------------------------


def cp949_kmou(tmp_path) -> Path:
    folder = tmp_path / "kmou_cp949"
    folder.mkdir()
    for src in sorted(KMOU.glob("*.txt")):
        (folder / src.name).write_bytes(src.read_text(encoding="utf-8-sig").encode("cp949"))
    return folder


def test_convert_cp949_kmou_equals_the_utf8_result(tmp_path):
    folder = cp949_kmou(tmp_path)
    want, got = tmp_path / "utf8.jsonl", tmp_path / "cp949.jsonl"
    assert run_kner("data", "convert", "kmou", KMOU, "-o", want).exit_code == 0
    res = run_kner("data", "convert", "kmou", folder, "-o", got, "--encoding", "cp949")
    assert res.exit_code == 0, res.output

    def strip_source(p):  # meta.source names the file read, which differs
        return [
            {**d, "meta": {k: v for k, v in d["meta"].items() if k != "source"}}
            for d in map(json.loads, p.read_text(encoding="utf-8").splitlines())
        ]

    assert strip_source(got) == strip_source(want) and len(strip_source(want)) > 3
    err = one_line_error(run_kner("data", "convert", "kmou", folder, "-o", tmp_path / "x.jsonl"))
    first = sorted(folder.glob("*.txt"))[0]
    assert err.startswith(f"error: {first}:")
    line = int(err.split(f"{first}:")[1].split(":")[0])
    raw = first.read_bytes().split(b"\n")[line - 1]
    assert not raw.isascii() and all(ln.isascii() for ln in first.read_bytes().split(b"\n")[: line - 1])
    assert err.endswith("it decodes as CP949/EUC-KR: try --encoding cp949")
    assert not (tmp_path / "x.jsonl").exists() and leftovers(tmp_path) == []


def test_convert_empty_input_and_bad_output_are_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    err = one_line_error(run_kner("data", "convert", "kmou", empty, "-o", tmp_path / "e.jsonl"))
    assert err == f"error: {empty}: no sentences read from 1 file(s); is it empty, or not in the kmou format?"
    assert not (tmp_path / "e.jsonl").exists()
    err = one_line_error(run_kner("data", "convert", "kmou", KMOU, "-o", tmp_path))
    assert err == f"error: output {tmp_path} is a folder; give a file name"
    assert leftovers(tmp_path) == []


def test_stats_split_evaluate_on_cp949_or_a_folder(tmp_path):
    gold = [
        Example("a", "이순신은 장군이다.", [Entity(0, 3, "PER", "이순신")], {"doc": "d1"}),
        Example("b", "서울에 간다.", [Entity(0, 2, "GPE", "서울")], {"doc": "d2"}),
    ]
    utf8 = tmp_path / "gold.jsonl"
    write_jsonl(utf8, gold)
    cp = tmp_path / "gold_cp949.jsonl"
    cp.write_bytes(utf8.read_text(encoding="utf-8").encode("cp949"))
    hint = "it decodes as CP949/EUC-KR: try --encoding cp949"
    for args in (
        ["data", "stats", cp],
        ["data", "split", cp, "-o", tmp_path / "sp"],
        ["evaluate", "--gold", cp, "--pred", utf8, "--out", tmp_path / "ev"],
        ["compare", "--gold", utf8, "--pred", f"x={cp}", "--out", tmp_path / "cmp"],
    ):
        err = one_line_error(run_kner(*args))
        assert err.startswith(f"error: {cp}:1: not UTF-8 text") and err.endswith(hint), err
    for args in (
        ["data", "stats", tmp_path],
        ["data", "split", tmp_path, "-o", tmp_path / "sp"],
        ["evaluate", "--gold", tmp_path, "--pred", utf8, "--out", tmp_path / "ev"],
    ):
        assert one_line_error(run_kner(*args)) == f"error: {tmp_path}: is a folder; a file was expected here"
    res = run_kner("data", "stats", cp, "--encoding", "cp949")
    assert res.exit_code == 0 and "sentences" in res.output
    res = run_kner("evaluate", "--gold", cp, "--pred", utf8, "--out", tmp_path / "ev", "--encoding", "cp949")
    assert res.exit_code != 0  # --encoding applies to every input of the command: utf8 is not cp949 here
    res = run_kner("evaluate", "--gold", cp, "--pred", cp, "--out", tmp_path / "ev", "--encoding", "cp949")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["micro"]["f1"] == 1.0
    # An --out that is a file: refused before anything is read or written.
    err = one_line_error(run_kner("data", "split", utf8, "-o", cp))
    assert err == f"error: output {cp} is a file; a folder is expected here"
    assert leftovers(tmp_path) == []


# -- kner predict --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny random full model with a character tokenizer (kner.model.scratch), as `kner export` writes it."""
    return tiny_model_folder(
        tmp_path_factory.mktemp("kner_io") / "out", ["이순신은 조선의 장군이다. 서울 부산 깨진 글자"]
    )


def test_predict_skips_a_lone_surrogate_and_reports_its_line(model_folder, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(
        '{"id": "a", "text": "이순신은 장군이다."}\n\n' + SURROGATE_LINE + '\n{"id": "c", "text": "서울"}\n',
        encoding="utf-8",
    )
    dst = tmp_path / "preds.jsonl"
    res = run_kner("predict", "-m", model_folder, "-i", src, "-o", dst, "--max-new-tokens", 4, "--no-progress")
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    why = "not valid Unicode: character 4 is a lone surrogate U+D800"
    assert f"warning: skipped (no entities, meta.error in the output): {src}:3: {why}" in res.output
    assert f"error: 1 of 3 texts failed: {src}:3: {why}" in res.output
    preds = read_jsonl(dst)
    assert [(p.id, "error" in p.meta) for p in preds] == [("a", False), ("b", True), ("c", False)]
    assert preds[1].text == "깨진 \ud800 글자" and preds[1].entities == [] and preds[1].meta["error"].startswith(why)
    assert leftovers(tmp_path) == []


def test_predict_plain_text_with_bom_and_crlf(model_folder, tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes("\ufeff이순신은 장군이다.\r\n\r\n서울\r\n".encode("utf-8"))
    dst = tmp_path / "preds.jsonl"
    res = run_kner("predict", "-m", model_folder, "-i", src, "-o", dst, "--max-new-tokens", 4, "--no-progress")
    assert res.exit_code == 0, res.output
    preds = read_jsonl(dst)
    assert [(p.id, p.text) for p in preds] == [("1", "이순신은 장군이다."), ("2", ""), ("3", "서울")]
    for p in preds:
        assert all(p.text[e.start : e.end] == e.text for e in p.entities)
    cp = tmp_path / "cp.txt"
    cp.write_bytes("이순신은 장군이다.\r\n서울\r\n".encode("cp949"))
    err = one_line_error(run_kner("predict", "-m", model_folder, "-i", cp, "-o", dst, "--no-progress"))
    assert err.startswith(f"error: {cp}:1: not UTF-8 text") and err.endswith("try --encoding cp949")
    res = run_kner(
        "predict",
        "-m",
        model_folder,
        "-i",
        cp,
        "-o",
        dst,
        "--max-new-tokens",
        4,
        "--no-progress",
        "--encoding",
        "cp949",
    )
    assert res.exit_code == 0, res.output
    assert [p.text for p in read_jsonl(dst)] == ["이순신은 장군이다.", "서울"]


def test_predict_checks_output_and_input_before_loading_the_model(tmp_path, monkeypatch):
    from kner.inference import Extractor

    def never(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Extractor, "load", classmethod(never))
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "text": "서울"}\n{"id": "a", "text": "부산"}\n', encoding="utf-8")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for bad, msg in (
        (tmp_path, f"output {tmp_path} is a folder; give a file name"),
        (blocker / "p.jsonl", f"cannot write output {blocker / 'p.jsonl'}: {blocker} is a file, not a folder"),
    ):
        err = one_line_error(run_kner("predict", "-m", tmp_path / "no-model", "-i", src, "-o", bad, "--no-progress"))
        assert err == f"error: {msg}"
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    err = one_line_error(run_kner("predict", "-m", "no-model", "-i", empty, "-o", tmp_path / "p.jsonl"))
    assert err == f"error: {empty}: no texts to predict: the input is empty"
    # Duplicate ids: a warning naming them, then the work goes on (to the model load, refused here).
    res = run_kner("predict", "-m", "no-model", "-i", src, "-o", tmp_path / "p.jsonl", "--no-progress")
    assert (
        f"warning: 1 id(s) appear more than once (id 'a' at {src}:1, {src}:2); `kner evaluate` pairs "
        f"predictions with gold by id and will refuse them"
    ) in res.output
    assert isinstance(res.exception, AssertionError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "empty.txt", "in.jsonl"]


# -- the server ----------------------------------------------------------------------------------


def test_server_answers_422_naming_the_text_with_a_lone_surrogate():
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from kner.serve import BackgroundServer, ServeSettings, create_app

    calls = []

    def extractor(texts):
        calls.append(list(texts))
        return [[] for _ in texts]

    with BackgroundServer(create_app(extractor, ServeSettings(), model_name="fake")) as srv:
        body = '{"texts": ["서울", "깨진 \\ud800", "부산"]}'.encode()
        r = httpx.post(srv.url + "/extract", content=body, headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 422, r.text
        assert r.json() == {
            "error": "texts[1] cannot be processed: not valid Unicode: character 4 is a lone "
            "surrogate U+D800 (half of a UTF-16 pair, e.g. an emoji cut in two)",
            "index": 1,
        }
        r = httpx.post(
            srv.url + "/extract",
            content=b'{"text": "\\udc00"}',
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert r.status_code == 422 and r.json()["index"] == 0
        assert calls == []  # refused before the queue
        r = httpx.post(srv.url + "/extract", json={"texts": ["서울"]}, timeout=30)
        assert r.status_code == 200 and calls == [["서울"]]


def test_extractor_skips_a_lone_surrogate_and_says_so(model_folder, caplog):
    from kner.inference import Extractor

    ex = Extractor.load(model_folder, max_new_tokens=4)
    preds = ex.predict(["서울", "\ud800", "", "부산"])
    assert [p.error for p in preds] == [None, text_problem("\ud800"), None, None]
    assert ex.last_stats.failed == 1 and ex.last_stats.empty == 1 and ex.last_stats.pieces == 2
    with caplog.at_level("WARNING", logger="kner.inference.extractor"):
        assert ex(["\ud800"]) == [[]]
    assert "1 of 1 text(s) cannot be processed and got no entities (text 1: not valid Unicode" in caplog.text
