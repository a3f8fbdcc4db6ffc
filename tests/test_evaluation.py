"""Entity, character and sentence metrics: cross-checked against seqeval and sklearn on
perturbed KLUE-NER sentences, plus hand-computed cases for the error causes and accuracy."""

from __future__ import annotations

import json
import random

import pytest

from helpers import kner_process
from klue_data import load_klue  # noqa: E402
from kner.data.example import Entity, Example, write_jsonl
from kner.errors import KnerError
from kner.evaluation.scoring import FN_CAUSES, FP_CAUSES, evaluate


@pytest.fixture(scope="module")
def klue() -> list[Example]:
    return load_klue(300)  # all 206 of the fixture's


def ex(text: str, *spans: tuple[int, int, str], id: str = "s1") -> Example:
    return Example(id, text, [Entity(s, e, l, text[s:e]) for s, e, l in spans])


def perturb(examples: list[Example], seed: int) -> list[Example]:
    """Non-overlapping noisy predictions: shifted boundaries, changed labels, drops, spurious spans."""
    rng = random.Random(seed)
    labels = sorted({e.label for x in examples for e in x.entities}) + ["ZZ"]  # ZZ: a label gold never uses
    out = []
    for x in examples:
        n = len(x.text)
        cands = []
        for e in x.entities:
            r = rng.random()
            s, t, lab = e.start, e.end, e.label
            if r < 0.15:
                continue
            if r < 0.35:
                s = min(max(0, s + rng.choice([-2, -1, 1])), t - 1)
            elif r < 0.5:
                t = max(min(n, t + rng.choice([-1, 1, 2])), s + 1)
            elif r < 0.65:
                lab = rng.choice(labels)
            cands.append((s, t, lab))
        for _ in range(rng.choice([0, 0, 1, 2])):
            s = rng.randrange(n)
            cands.append((s, min(n, s + rng.randint(1, 4)), rng.choice(labels)))
        kept, end = [], -1
        for s, t, lab in sorted(cands):
            if s >= end:  # seqeval's BIO cannot hold overlapping spans
                kept.append((s, t, lab))
                end = t
        out.append(Example(x.id, x.text, [Entity(s, t, lab, x.text[s:t]) for s, t, lab in kept]))
    return out


def iob2(x: Example) -> list[str]:
    tags = ["O"] * len(x.text)
    for e in x.entities:
        tags[e.start] = "B-" + e.label
        for i in range(e.start + 1, e.end):
            tags[i] = "I-" + e.label
    return tags


def char_bio_without_spaces(x: Example) -> list[str]:
    """KLUE's character view: " " dropped (only U+0020, as KLUE's reader); a span whose first character is
    a space starts at the next one."""
    tags = ["O"] * len(x.text)
    for e in x.entities:
        inside = [i for i in range(e.start, e.end) if x.text[i] != " "]
        for j, i in enumerate(inside):
            tags[i] = ("I-" if j else "B-") + e.label
    return [t for t, ch in zip(tags, x.text) if ch != " "]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("strict", [False, True])
def test_entity_scores_match_seqeval(klue, seed, strict):
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    pred = perturb(klue, seed)
    res = evaluate(klue, pred)
    y_true = [iob2(x) for x in klue]
    y_pred = [iob2(x) for x in pred]
    kw = {"mode": "strict", "scheme": IOB2} if strict else {}

    def seq(avg):
        return tuple(
            fn(y_true, y_pred, average=avg, zero_division=0, **kw) for fn in (precision_score, recall_score, f1_score)
        )

    p, r, f = seq(None)
    # seqeval orders labels alphabetically over gold and predicted types.
    seq_labels = sorted({t[2:] for s in y_true + y_pred for t in s if t != "O"})
    assert res.labels == seq_labels and "ZZ" in res.labels  # a pred-only label is scored too
    for i, lab in enumerate(seq_labels):
        s = res.per_label[lab]
        assert s.precision == pytest.approx(p[i], abs=1e-9)
        assert s.recall == pytest.approx(r[i], abs=1e-9)
        assert s.f1 == pytest.approx(f[i], abs=1e-9)
    for avg, ours in (("micro", res.micro), ("macro", res.macro)):
        assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx(seq(avg), abs=1e-9)
    # The perturbation must actually exercise the metric: neither perfect nor empty.
    assert 0.3 < res.micro["f1"] < 0.95


def test_klue_char_macro_f1_matches_sklearn(klue):
    from sklearn.metrics import f1_score

    pred = perturb(klue, 7)
    res = evaluate(klue, pred)
    gold_tags, pred_tags = [], []
    for g, p in zip(klue, pred):
        for tags, x in ((gold_tags, g), (pred_tags, p)):
            tags.extend(char_bio_without_spaces(x))
    tagset = [f"{bi}-{lab}" for lab in res.labels for bi in "BI"] + ["O"]
    want = f1_score(gold_tags, pred_tags, labels=tagset, average="macro", zero_division=1)
    assert res.klue_char_macro_f1 == pytest.approx(want, abs=1e-9)
    assert res.char_total == len(gold_tags)
    correct = sum(a.split("-")[-1] == b.split("-")[-1] for a, b in zip(gold_tags, pred_tags))
    assert res.char_accuracy == pytest.approx(correct / len(gold_tags), abs=1e-12)


def test_errors_reconcile_with_counts(klue):
    res = evaluate(klue, perturb(klue, 3))
    for s in res.per_label.values():
        assert sum(s.fp_causes.values()) == s.fp
        assert sum(s.fn_causes.values()) == s.fn
    tot = res.error_totals
    assert all(tot["fp"][c] > 0 for c in FP_CAUSES) and all(tot["fn"][c] > 0 for c in FN_CAUSES)


def test_perfect_prediction_scores_one(klue):
    res = evaluate(klue, klue)
    assert res.micro["f1"] == res.macro["f1"] == res.char_accuracy == res.exact_match == 1.0
    assert res.klue_char_macro_f1 == 1.0
    assert res.micro["support"] == sum(len(x.entities) for x in klue)


# -- hand-computed cases -----------------------------------------------------------

TEXT = "AAAA BBBB CCCC DDDD EEEE FFFF"


def test_error_breakdown_by_hand():
    gold = [ex(TEXT, (0, 4, "PER"), (5, 9, "ORG"), (10, 14, "LOC"), (15, 19, "PER"), (20, 24, "DAT"))]
    pred = [
        ex(
            TEXT,
            (0, 4, "PER"),  # correct
            (5, 9, "LOC"),  # same span, other label: wrong type on both sides
            (10, 12, "LOC"),  # same label, overlapping: wrong boundary on both sides
            (15, 17, "ORG"),  # overlapping, other label: wrong boundary+type
            (25, 29, "ORG"),
        )
    ]  # overlaps no gold: spurious; gold DAT overlaps no pred: missed
    r = evaluate(gold, pred)
    per = r.per_label
    assert r.labels == ["DAT", "LOC", "ORG", "PER"]
    assert (per["PER"].tp, per["PER"].fp, per["PER"].fn) == (1, 0, 1)
    assert per["PER"].fn_causes["wrong_boundary_type"] == 1
    assert per["ORG"].fn_causes["wrong_type"] == 1
    assert per["ORG"].fp_causes == {"wrong_boundary": 0, "wrong_type": 0, "wrong_boundary_type": 1, "spurious": 1}
    assert per["LOC"].fp_causes == {"wrong_boundary": 1, "wrong_type": 1, "wrong_boundary_type": 0, "spurious": 0}
    assert per["LOC"].fn_causes["wrong_boundary"] == 1
    assert per["DAT"].fn_causes["missed"] == 1
    assert r.error_totals == {
        "fp": {"wrong_boundary": 1, "wrong_type": 1, "wrong_boundary_type": 1, "spurious": 1},
        "fn": {"wrong_boundary": 1, "wrong_type": 1, "wrong_boundary_type": 1, "missed": 1},
    }
    assert r.micro["precision"] == pytest.approx(1 / 5) and r.micro["recall"] == pytest.approx(1 / 5)
    # macro over the 4 labels: PER P=1 R=.5; ORG P=0 R=0; LOC 0; DAT P=0 (no preds) R=0
    assert r.macro["precision"] == pytest.approx(1 / 4)
    assert r.macro["recall"] == pytest.approx(0.5 / 4)
    assert r.macro["f1"] == pytest.approx((2 / 3) / 4)
    assert r.exact_match == 0.0


def test_char_accuracy_and_exact_match_by_hand():
    gold = [ex("ab cd", (0, 5, "X"), id="a"), ex("xyz", (0, 1, "Y"), id="b")]
    pred = [ex("ab cd", (0, 2, "X"), id="a"), ex("xyz", (0, 1, "Y"), id="b")]
    r = evaluate(gold, pred)
    # space excluded: a b c d x y z = 7 characters, c and d wrong
    assert (r.char_correct, r.char_total) == (5, 7)
    assert r.exact_match == 0.5 and r.exact_matches == 1


def test_klue_char_f1_by_hand():
    gold = [ex("abcd", (0, 2, "X"))]
    pred = [ex("abcd", (0, 1, "X"))]
    # tags: gold B-X I-X O O, pred B-X O O O. F1: B-X 1, I-X 0, O 2*2/(2+3) = .8
    assert evaluate(gold, pred).klue_char_macro_f1 == pytest.approx((1 + 0 + 0.8) / 3)
    # A listed label absent from both sides adds no tags (in KLUE's sklearn call they would score 1 each).
    r = evaluate(gold, pred, labels=["X", "Y"])
    assert r.klue_char_macro_f1 == pytest.approx((1 + 0 + 0.8) / 3)
    assert set(r.klue_char_tags) == {"B-X", "I-X", "O"}


def test_overlapping_gold_characters_go_to_the_earlier_span():
    gold = [ex("abcdef", (0, 4, "X"), (2, 6, "Y"))]
    pred = [ex("abcdef", (0, 4, "X"), (4, 6, "Y"))]
    r = evaluate(gold, pred)
    # Character view of gold is X X X X Y Y (Y starts with B at 'e'), identical to pred's.
    assert r.char_accuracy == 1.0 and r.klue_char_macro_f1 == 1.0
    assert r.overlaps_resolved == {"gold": 1}
    assert r.per_label["Y"].fp_causes["wrong_boundary"] == 1
    assert r.per_label["Y"].fn_causes["wrong_boundary"] == 1
    assert any("overlap" in n for n in r.notes())


def test_adjacent_spans_of_one_label_stay_two_entities():
    gold = [ex("abcd", (0, 2, "X"), (2, 4, "X"))]
    pred = [ex("abcd", (0, 4, "X"))]
    r = evaluate(gold, pred)
    assert r.char_accuracy == 1.0 and r.klue_char_macro_f1 < 1.0  # B at 'c' is missed
    assert (r.per_label["X"].tp, r.per_label["X"].fp, r.per_label["X"].fn) == (0, 1, 2)


def test_empty_prediction_scores_zero_not_nan():
    gold = [ex(TEXT, (0, 4, "PER"))]
    r = evaluate(gold, [ex(TEXT)])
    assert r.micro == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "tp": 0,
        "fp": 0,
        "fn": 1,
        "support": 1,
        "predicted": 0,
    }
    r = evaluate([ex(TEXT)], [ex(TEXT)])
    assert r.labels == [] and r.macro["f1"] == 0.0 and r.exact_match == 1.0


def test_labels_restrict_order_and_report_ignored():
    gold = [ex(TEXT, (0, 4, "PER"), (5, 9, "ORG"))]
    pred = [ex(TEXT, (0, 4, "PER"), (5, 9, "ORG"), (10, 14, "MISC"))]
    r = evaluate(gold, pred, labels=["PER", "LOC", "ORG"])
    assert r.labels == ["PER", "LOC", "ORG"]
    assert r.macro["labels"] == ["PER", "ORG"]  # LOC has neither support nor predictions
    assert r.micro["precision"] == 1.0
    assert r.ignored == {"pred": {"MISC": 1}}
    assert "MISC 1" in r.to_markdown()


def test_duplicate_predictions_count_once_and_are_reported():
    gold = [ex(TEXT, (0, 4, "PER"))]
    pred = [ex(TEXT, (0, 4, "PER"), (0, 4, "PER"))]
    r = evaluate(gold, pred)
    assert r.micro["precision"] == 1.0 and r.duplicates == {"pred": 1}


@pytest.mark.parametrize(
    "pred, message",
    [
        ([ex(TEXT, id="s1")], "1 gold ids have no prediction (first: 's2')"),
        ([ex(TEXT, id="s1"), ex(TEXT, id="s2"), ex(TEXT, id="s3")], "1 predicted ids are not in gold (first: 's3')"),
        ([ex(TEXT, id="s1"), ex(TEXT + "!", id="s2")], "id 's2': predicted text differs from gold text"),
        ([ex(TEXT, id="s1"), ex(TEXT, id="s1")], "predictions has duplicate id 's1'"),
    ],
)
def test_pairing_errors_name_the_problem(pred, message):
    gold = [ex(TEXT, id="s1"), ex(TEXT, id="s2")]
    with pytest.raises(KnerError) as err:
        evaluate(gold, pred)
    assert message in str(err.value)


def test_pairs_by_id_not_by_order():
    gold = [ex(TEXT, (0, 4, "PER"), id="a"), ex(TEXT, (5, 9, "ORG"), id="b")]
    pred = [ex(TEXT, (5, 9, "ORG"), id="b"), ex(TEXT, (0, 4, "PER"), id="a")]
    assert evaluate(gold, pred).micro["f1"] == 1.0


def test_outputs_are_json_and_markdown(klue):
    r = evaluate(klue[:50], perturb(klue[:50], 0))
    d = json.loads(json.dumps(r.to_dict()))
    assert d["micro"]["tp"] == r.micro["tp"]
    assert set(d["per_label"]) == set(r.labels)
    assert d["per_label"]["PS"]["errors"]["fn"].keys() == set(FN_CAUSES)
    md = r.to_markdown()
    for lab in r.labels:
        assert f"| {lab} |" in md
    assert "KLUE character macro F1" in md and "| **total** |" in md


# -- command line -------------------------------------------------------------------


def test_cli_evaluate_writes_metrics(tmp_path, klue):
    gold, pred = klue[:40], perturb(klue[:40], 1)
    write_jsonl(tmp_path / "gold.jsonl", gold)
    write_jsonl(tmp_path / "run" / "pred.jsonl", pred)
    p = kner_process("evaluate", "--gold", str(tmp_path / "gold.jsonl"), "--pred", str(tmp_path / "run" / "pred.jsonl"))
    assert p.returncode == 0, p.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["micro"]["f1"] == pytest.approx(evaluate(gold, pred).micro["f1"])
    assert (tmp_path / "run" / "metrics.md").read_text().startswith("# Evaluation")
    assert "micro" in p.stdout and "KLUE" in p.stdout and "wrong boundary" in p.stdout

    out = tmp_path / "custom"
    p = kner_process(
        "evaluate",
        "--gold",
        str(tmp_path / "gold.jsonl"),
        "--pred",
        str(tmp_path / "run" / "pred.jsonl"),
        "--out",
        str(out),
        "--labels",
        "PS,LC",
        "--labels",
        "OG",
    )
    assert p.returncode == 0, p.stderr
    assert json.loads((out / "metrics.json").read_text())["labels"] == ["PS", "LC", "OG"]


def test_cli_evaluate_reports_mismatch_in_one_line(tmp_path):
    write_jsonl(tmp_path / "gold.jsonl", [ex(TEXT, id="a")])
    write_jsonl(tmp_path / "pred.jsonl", [ex(TEXT, id="b")])
    p = kner_process("evaluate", "--gold", str(tmp_path / "gold.jsonl"), "--pred", str(tmp_path / "pred.jsonl"))
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "no prediction" in p.stderr
    assert not (tmp_path / "metrics.json").exists()
