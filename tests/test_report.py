"""The comparison report: numbers agree with ``evaluate``, the HTML is self-contained and renders."""

from __future__ import annotations

import base64
import json
import random
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser

import pytest

from helpers import kner_process
from klue_data import KLUE, load_klue  # noqa: E402
from kner.data.example import Entity, Example, validate, write_jsonl
from kner.errors import KnerError
from kner.evaluation.render_html import highlight
from kner.evaluation.render_markdown import markup
from kner.evaluation.report import compare
from kner.evaluation.scoring import evaluate


def noisy(examples: list[Example], seed: int, p: float = 0.3) -> list[Example]:
    """Drop or relabel a fraction ``p`` of the entities."""
    rng = random.Random(seed)
    out = []
    for x in examples:
        ents = []
        for e in x.entities:
            r = rng.random()
            if r < p / 2:
                continue
            if r < p:
                e = Entity(e.start, e.end, "OG" if e.label != "OG" else "PS", e.text)
            ents.append(e)
        out.append(Example(x.id, x.text, ents))
    return out


@pytest.fixture(scope="module")
def klue() -> list[Example]:
    if not KLUE.exists():
        pytest.skip(f"KLUE-NER data not found at {KLUE}")
    return load_klue(120)


@pytest.fixture(scope="module")
def report_dir(klue, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    systems = {"llm": noisy(klue, 1), "spacy": noisy(klue, 2, 0.5)}
    rep = compare(klue, systems, out, sample=5, seed=0)
    return out, rep, systems


def test_report_numbers_equal_evaluate(klue, report_dir):
    out, rep, systems = report_dir
    assert set(rep["files"]) == {"json", "markdown", "html", "chart"}
    on_disk = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert on_disk == {k: v for k, v in rep.items() if k != "files"}
    for name, preds in systems.items():
        want = evaluate(klue, preds, rep["labels"]).to_dict()
        assert on_disk["systems"][name] == json.loads(json.dumps(want))
    assert rep["systems"]["llm"]["micro"]["f1"] > rep["systems"]["spacy"]["micro"]["f1"]
    md = (out / "report.md").read_text(encoding="utf-8")
    for name in systems:
        f1 = rep["systems"][name]["per_label"]["PS"]["f1"]
        assert f"{100 * f1:.2f}" in md
    assert "| llm P | llm R | llm F1 | llm TP | llm FP | llm FN |" in md


def test_html_is_self_contained(report_dir):
    out, rep, _ = report_dir
    page = (out / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"https?://|<link|<script|@import|url\(", page)
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 1 and srcs[0].startswith("data:image/png;base64,")
    assert base64.b64decode(srcs[0].split(",", 1)[1]) == (out / "f1_by_label.png").read_bytes()

    class Check(HTMLParser):
        tables = 0

        def handle_starttag(self, tag, attrs):
            self.tables += tag == "table"

    c = Check()
    c.feed(page)
    assert c.tables >= 3
    for s in rep["disagreements"]["sentences"]:
        assert s["id"] in page


def test_chart_is_a_real_png(report_dir):
    from PIL import Image

    out, _, _ = report_dir
    with Image.open(out / "f1_by_label.png") as im:
        assert im.format == "PNG" and im.width > 600 and im.height > 300
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20


def test_disagreement_sample_is_seeded_and_only_disagreements(klue, tmp_path):
    same = noisy(klue, 5)
    systems = {"a": same, "b": same, "c": noisy(klue, 6)}
    r1 = compare(klue, systems, tmp_path / "1", sample=4, seed=3)
    r2 = compare(klue, systems, tmp_path / "2", sample=4, seed=3)
    r3 = compare(klue, systems, tmp_path / "3", sample=4, seed=4)
    ids = [s["id"] for s in r1["disagreements"]["sentences"]]
    assert ids == [s["id"] for s in r2["disagreements"]["sentences"]]
    assert ids != [s["id"] for s in r3["disagreements"]["sentences"]]
    assert len(ids) == 4 and r1["disagreements"]["total"] > 4
    order = [x.id for x in klue]
    assert ids == sorted(ids, key=order.index)  # shown in gold order
    for s in r1["disagreements"]["sentences"]:
        ents = {n: o["entities"] for n, o in s["systems"].items()}
        assert ents["a"] != ents["c"]

    # Agreeing systems: no disagreement even though both are wrong.
    r = compare(klue, {"a": same, "b": same}, tmp_path / "4")
    assert r["disagreements"]["total"] == 0 and "No sentence" in (tmp_path / "4" / "report.md").read_text()
    # One system: sentences where it differs from gold.
    r = compare(klue, {"a": same}, tmp_path / "5", sample=1000)
    wrong = sum(
        {(e.start, e.end, e.label) for e in g.entities} != {(e.start, e.end, e.label) for e in p.entities}
        for g, p in zip(klue, same)
    )
    assert r["disagreements"]["total"] == r["disagreements"]["shown"] == wrong


def test_user_text_is_escaped(tmp_path):
    text = '<script>alert("x")</script> & 홍길동'
    gold = [Example("x<1>", text, [Entity(30, 33, "PS", "홍길동")])]
    validate(gold[0])
    compare(gold, {"s<b>": [Example("x<1>", text, [Entity(0, 8, "PS", "<script>")])]}, tmp_path)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;" in page and "s&lt;b&gt;" in page


def test_highlight_keeps_text_and_marks_wrong_spans():
    text = "서울대학교 병원"
    ents = [
        {"start": 0, "end": 5, "label": "OG", "text": "서울대학교"},
        {"start": 0, "end": 2, "label": "LC", "text": "서울"},
    ]
    h = highlight(text, ents, {"OG": "#fff", "LC": "#eee"}, gold={(0, 5, "OG")})
    visible = re.sub(r"<sup[^>]*>.*?</sup>", "", h)
    assert re.sub(r"<[^>]+>", "", visible) == text
    assert h.count('class="ent wrong"') == 1  # the nested LC piece; OG is correct
    assert markup(text, ents) == "<서울대학교:OG> 병원  (+ overlapping: 서울:LC@0)"


def test_mismatched_system_names_the_system(klue, tmp_path):
    with pytest.raises(KnerError, match="system 'bad'"):
        compare(klue[:3], {"bad": klue[:2]}, tmp_path)
    with pytest.raises(KnerError):
        compare(klue[:3], {}, tmp_path)


def test_cli_compare(tmp_path, klue):
    write_jsonl(tmp_path / "gold.jsonl", klue[:30])
    write_jsonl(tmp_path / "a.jsonl", noisy(klue[:30], 1))
    write_jsonl(tmp_path / "b.jsonl", noisy(klue[:30], 2))
    args = [
        "compare",
        "--gold",
        str(tmp_path / "gold.jsonl"),
        "--pred",
        f"llm={tmp_path / 'a.jsonl'}",
        "--pred",
        str(tmp_path / "b.jsonl"),
        "--out",
        str(tmp_path / "r"),
        "--sample",
        "3",
    ]
    p = kner_process(*args)
    assert p.returncode == 0, p.stderr
    rep = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    assert list(rep["systems"]) == ["llm", "b"]  # a bare path is named after its file
    assert rep["disagreements"]["shown"] == 3
    assert "llm" in p.stdout and "report.html" in p.stdout
    p = kner_process(*args, "--pred", f"llm={tmp_path / 'b.jsonl'}")
    assert p.returncode == 2 and "given twice" in p.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_html_renders_in_headless_chromium(report_dir, tmp_path):
    from PIL import Image

    out, _, _ = report_dir
    shot = tmp_path / "shot.png"
    profile = tempfile.mkdtemp(dir=tmp_path)
    p = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            (out / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists(), p.stderr[-2000:]
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        assert rgb.size == (1280, 2000)
        colors = rgb.getcolors(maxcolors=1 << 20)
        # A blank or error page has a handful of colors; the tables, chart and highlights give thousands.
        assert colors is None or len(colors) > 500
        # The chart (blue bars, #4e79a7) made it onto the page.
        assert any(abs(r - 0x4E) < 12 and abs(g - 0x79) < 12 and abs(b - 0xA7) < 12 for _, (r, g, b) in colors or [])
