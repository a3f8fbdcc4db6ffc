"""Evaluation edge cases an independent scorer found: duplicates and two-label spans (API and CLI),
KLUE's whitespace rule, and labels that occur nowhere (listed with --labels) changing scores."""

from __future__ import annotations

import json

import pytest

from helpers import kner_process
from kner.data.example import Entity, Example
from kner.evaluation.scoring import evaluate, read_for_scoring
from test_evaluation import char_bio_without_spaces

TEXT = "AAAA BBBB CCCC DDDD"


def ex(text: str, *spans: tuple[int, int, str], id: str = "s1") -> Example:
    return Example(id, text, [Entity(s, e, l, text[s:e]) for s, e, l in spans])


def scores(r) -> dict:
    """Every score of a result (not the label list or per-label rows of absent labels)."""
    d = r.to_dict()
    return {
        "micro": d["micro"],
        "macro": d["macro"],
        "char_accuracy": d["char_accuracy"],
        "exact_match": d["exact_match"],
        "klue": d["klue_char_macro_f1"],
        "tags": d["klue_char_tag_f1"],
        "per_label": {lab: d["per_label"][lab] for lab in d["macro"]["labels"]},
    }


def write(path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


# -- labels that occur nowhere ---------------------------------------------------------

GOLD = [ex(TEXT, (0, 4, "PS"), (5, 9, "LC"), id="a"), ex("서울 시청 앞", (0, 5, "LC"), id="b")]
PRED = [ex(TEXT, (0, 4, "PS"), (5, 7, "LC"), (10, 14, "OG"), id="a"), ex("서울 시청 앞", (0, 2, "LC"), id="b")]


def test_a_label_absent_on_both_sides_changes_no_score():
    plain = evaluate(GOLD, PRED)
    # QT and TI occur in neither file: KLUE's sklearn call would give their four tags F1 = 1 each and
    # lift the character macro F1 (the reported 0.656 -> 0.702).
    listed = evaluate(GOLD, PRED, labels=plain.labels + ["QT", "TI"])
    assert scores(listed) == scores(plain)
    assert 0 < plain.klue_char_macro_f1 < 1
    assert listed.labels == ["LC", "OG", "PS", "QT", "TI"] and listed.per_label["QT"].support == 0
    assert "B-QT" not in listed.klue_char_tags


def test_a_label_only_predicted_still_counts():
    # OG is predicted, never gold: it stays in the macro average and in the KLUE tags (it is an error).
    without = evaluate(GOLD, PRED, labels=["PS", "LC"])
    with_og = evaluate(GOLD, PRED, labels=["PS", "LC", "OG"])
    assert with_og.macro["labels"] == ["PS", "LC", "OG"] and with_og.macro["f1"] < without.macro["f1"]
    assert with_og.klue_char_tags["B-OG"] == 0.0


def test_cli_labels_with_an_absent_label_leave_metrics_identical(tmp_path):
    write(tmp_path / "gold.jsonl", [g.to_dict() for g in GOLD])
    write(tmp_path / "pred.jsonl", [p.to_dict() for p in PRED])
    base = ["evaluate", "--gold", str(tmp_path / "gold.jsonl"), "--pred", str(tmp_path / "pred.jsonl")]
    p1 = kner_process(*base, "--out", str(tmp_path / "one"), "--labels", "PS,LC,OG")
    p2 = kner_process(*base, "--out", str(tmp_path / "two"), "--labels", "PS,LC,OG,QT", "--labels", "TI")
    assert p1.returncode == 0 and p2.returncode == 0, p1.stderr + p2.stderr
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text(encoding="utf-8")) for d in ("one", "two"))
    for key in ("micro", "macro", "char_accuracy", "exact_match", "klue_char_macro_f1", "klue_char_tag_f1"):
        assert m1[key] == m2[key], key


# -- whitespace: KLUE drops " " and nothing else ---------------------------------------


@pytest.mark.parametrize("ws", ["\u3000", "\t", "\u00a0"])
def test_only_the_ascii_space_is_dropped_from_the_character_view(ws):
    text = f"A{ws}B C"  # the entity A<ws>B holds a non-space whitespace character
    r = evaluate([ex(text, (0, 3, "X"))], [ex(text, (0, 1, "X"))])
    # Kept: A, <ws>, B, C. Gold B-X I-X I-X O; pred B-X O O O.
    assert r.char_total == 4 and r.char_correct == 2
    assert r.klue_char_tags == {"B-X": 1.0, "I-X": 0.0, "O": pytest.approx(2 * 1 / (1 + 3))}
    assert r.klue_char_macro_f1 == pytest.approx((1 + 0 + 0.5) / 3)


def test_klue_char_f1_with_mixed_whitespace_matches_sklearn():
    from sklearn.metrics import f1_score

    text = "김\u3000철수 는\t서울 시청에서 일한다"
    gold = [ex(text, (0, 4, "PS"), (7, 9, "LC"), (10, 12, "OG"))]
    pred = [ex(text, (0, 1, "PS"), (7, 12, "LC"))]
    r = evaluate(gold, pred)

    # As KLUE's reader: every character but " " gets a tag.
    tags = [char_bio_without_spaces(gold[0]), char_bio_without_spaces(pred[0])]
    tagset = [f"{bi}-{lab}" for lab in r.labels for bi in "BI"] + ["O"]
    want = f1_score(*tags, labels=tagset, average="macro", zero_division=1)
    assert r.klue_char_macro_f1 == pytest.approx(want, abs=1e-12)
    assert r.char_total == len(text) - text.count(" ")


# -- duplicates and two labels on one span -----------------------------------------------


def test_duplicate_gold_and_predicted_entities_count_once_and_are_reported():
    gold = [ex(TEXT, (0, 4, "PS"), (0, 4, "PS"), (5, 9, "LC"))]
    pred = [ex(TEXT, (0, 4, "PS"), (5, 9, "LC"), (5, 9, "LC"), (5, 9, "LC"))]
    r = evaluate(gold, pred)
    assert (r.micro["tp"], r.micro["fp"], r.micro["fn"], r.micro["support"]) == (2, 0, 0, 2)
    assert r.duplicates == {"gold": 1, "pred": 2}
    assert "1 duplicate gold entities (same span and label) were counted once." in r.notes()
    assert "2 duplicate pred entities (same span and label) were counted once." in r.notes()
    assert r.exact_match == 1.0 and r.klue_char_macro_f1 == 1.0


def test_a_predicted_span_with_two_labels_is_two_predictions():
    gold = [ex(TEXT, (0, 4, "PS"))]
    pred = [ex(TEXT, (0, 4, "PS"), (0, 4, "OG"))]
    r = evaluate(gold, pred)
    assert (r.per_label["PS"].tp, r.per_label["OG"].fp) == (1, 1)
    assert r.per_label["OG"].fp_causes["wrong_type"] == 1 and r.per_label["PS"].fn == 0
    assert r.micro["precision"] == 0.5 and r.micro["recall"] == 1.0
    assert r.multi_label == {"pred": 1} and r.duplicates == {}
    assert "1 pred spans have more than one label; each label is scored as its own entity." in r.notes()


def test_a_gold_span_with_two_labels_is_two_gold_entities():
    gold = [ex(TEXT, (0, 4, "PS"), (0, 4, "OG"))]
    pred = [ex(TEXT, (0, 4, "OG"))]
    r = evaluate(gold, pred)
    assert r.micro["support"] == 2 and (r.micro["tp"], r.micro["fn"]) == (1, 1)
    assert r.per_label["PS"].fn_causes["wrong_type"] == 1
    assert r.multi_label == {"gold": 1}
    # Character view: one label per character, the alphabetically first (OG) on a tie.
    assert r.char_accuracy == 1.0 and r.overlaps_resolved == {"gold": 1}


def _rows_with_duplicates() -> tuple[list[dict], list[dict]]:
    gold = [
        {
            "id": "a",
            "text": TEXT,
            "entities": [
                {"start": 0, "end": 4, "label": "PS"},
                {"start": 0, "end": 4, "label": "PS"},
                {"start": 5, "end": 9, "label": "LC"},
                {"start": 5, "end": 9, "label": "OG"},
            ],
        },
        {"id": "b", "text": "서울 시청 앞", "entities": [{"start": 0, "end": 5, "label": "LC"}]},
    ]
    pred = [
        {
            "id": "a",
            "text": TEXT,
            "entities": [
                {"start": 0, "end": 4, "label": "PS"},
                {"start": 0, "end": 4, "label": "PS"},
                {"start": 5, "end": 9, "label": "LC"},
                {"start": 10, "end": 14, "label": "OG"},
                {"start": 10, "end": 14, "label": "LC"},
            ],
        },
        {
            "id": "b",
            "text": "서울 시청 앞",
            "entities": [{"start": 0, "end": 5, "label": "LC"}, {"start": 0, "end": 5, "label": "LC"}],
        },
    ]
    return gold, pred


def test_cli_evaluate_scores_duplicates_and_two_label_spans(tmp_path):
    gold, pred = _rows_with_duplicates()
    write(tmp_path / "gold.jsonl", gold)
    write(tmp_path / "pred.jsonl", pred)
    p = kner_process("evaluate", "--gold", str(tmp_path / "gold.jsonl"), "--pred", str(tmp_path / "pred.jsonl"))
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    m = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    want = evaluate(read_for_scoring(tmp_path / "gold.jsonl"), read_for_scoring(tmp_path / "pred.jsonl"))
    assert m["micro"] == want.micro
    # gold: PS, LC, OG (a), LC (b) = 4; pred: PS, LC, OG, LC (a), LC (b) = 5; TP: PS, LC (a), LC (b).
    assert (m["micro"]["tp"], m["micro"]["fp"], m["micro"]["fn"]) == (3, 2, 1)
    assert m["duplicates"] == {"gold": 1, "pred": 2} and m["multi_label"] == {"gold": 1, "pred": 1}
    assert "2 duplicate pred entities (same span and label) were counted once." in p.stdout


def test_cli_compare_scores_duplicates_and_two_label_spans(tmp_path):
    gold, pred = _rows_with_duplicates()
    write(tmp_path / "gold.jsonl", gold)
    write(tmp_path / "pred.jsonl", pred)
    p = kner_process(
        "compare",
        "--gold",
        str(tmp_path / "gold.jsonl"),
        "--pred",
        f"llm={tmp_path / 'pred.jsonl'}",
        "--out",
        str(tmp_path / "r"),
        "--sample",
        "2",
    )
    assert p.returncode == 0, p.stderr
    rep = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    assert rep["n_gold_entities"] == 4  # the duplicate gold PS counts once, as it is scored
    assert rep["systems"]["llm"]["micro"]["tp"] == 3
    assert "llm: 2 duplicate pred entities" in p.stdout


def test_cli_still_refuses_bad_offsets_with_file_and_line(tmp_path):
    gold, pred = _rows_with_duplicates()
    pred[1]["entities"].append({"start": 3, "end": 40, "label": "LC"})
    write(tmp_path / "gold.jsonl", gold)
    (tmp_path / "pred.jsonl").write_text(
        "\n" + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pred), encoding="utf-8"
    )
    p = kner_process("evaluate", "--gold", str(tmp_path / "gold.jsonl"), "--pred", str(tmp_path / "pred.jsonl"))
    assert p.returncode == 2
    line = p.stderr.strip()
    assert "\n" not in line and "pred.jsonl" in line and ":3" in line and "outside the text" in line
