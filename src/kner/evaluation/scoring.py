"""Score predicted entities against gold: entity, character and sentence level.

Definitions (docs/evaluation.md explains them with examples):

* Entity level is strict: a prediction is a true positive only when a gold
  entity has the same start, end and label. Per-label precision, recall and F1,
  the micro average (pooled counts) and the macro average (unweighted mean of
  per-label scores over the labels that occur in gold or in predictions) follow
  seqeval's ``average=None/"micro"/"macro"`` exactly, 0/0 counting as 0.
* Character level looks at every character except the space U+0020, as
  KLUE does (its data reader drops exactly the ``" "`` characters; tabs,
  ideographic spaces U+3000 and the like stay). A character covered by several
  (overlapping) spans takes the label of the one starting first, the longer
  one on a tie; spans that lose characters this way are counted in
  ``overlaps_resolved``. The per-character views are in ``kner.evaluation.chars``.
* ``klue_char_macro_f1`` reproduces the KLUE baseline's metric: every
  character gets a BIO tag, F1 is computed per tag (``B-X``, ``I-X`` for every
  label and ``O``) and averaged unweighted; a tag absent from both gold and
  prediction scores 1 (sklearn ``zero_division=1``). Only labels that occur in
  gold or predictions contribute tags, as for the macro average, so listing a
  label that occurs nowhere never changes a score.
* Duplicates: an entity given twice (same span and label) counts once and is
  counted in ``duplicates``; one span with several labels is several entities
  (each label can be a TP or an FP on its own), counted in ``multi_label``.
* Errors: every false positive and every false negative gets exactly one cause,
  so per label the FP causes sum to FP and the FN causes sum to FN.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kner.data.example import Example, numbered_jsonl, validate
from kner.errors import KnerError
from kner.evaluation.chars import Span, char_tags, klue_tag_f1

FP_CAUSES = ("wrong_boundary", "wrong_type", "wrong_boundary_type", "spurious")
FN_CAUSES = ("wrong_boundary", "wrong_type", "wrong_boundary_type", "missed")
CAUSE_NAMES = {
    "wrong_boundary": "wrong boundary",
    "wrong_type": "wrong type",
    "wrong_boundary_type": "wrong boundary+type",
    "spurious": "spurious",
    "missed": "missed",
}


def _div(num: float, den: float) -> float:
    return num / den if den else 0.0


def _f1(p: float, r: float) -> float:
    # Same expression as seqeval, so per-label scores agree to the last bits.
    return 2 * p * r / (p + r) if (p + r) else 0.0


@dataclass
class LabelScores:
    label: str
    tp: int = 0
    fp: int = 0
    fn: int = 0
    fp_causes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FP_CAUSES, 0))
    fn_causes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FN_CAUSES, 0))

    @property
    def support(self) -> int:
        return self.tp + self.fn

    @property
    def predicted(self) -> int:
        return self.tp + self.fp

    @property
    def precision(self) -> float:
        return _div(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _div(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _f1(self.precision, self.recall)

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "support": self.support,
            "predicted": self.predicted,
            "errors": {"fp": dict(self.fp_causes), "fn": dict(self.fn_causes)},
        }


@dataclass
class EvalResult:
    labels: list[str]
    per_label: dict[str, LabelScores]
    n_sentences: int
    char_correct: int
    char_total: int
    exact_matches: int
    klue_char_macro_f1: float
    klue_char_tags: dict[str, float]
    # Entities outside ``labels`` (only when labels were given), per side and label.
    ignored: dict[str, dict[str, int]]
    duplicates: dict[str, int]
    # Spans that carry more than one label, per side (each label is scored as its own entity).
    multi_label: dict[str, int]
    overlaps_resolved: dict[str, int]

    # -- averages ----------------------------------------------------------
    @property
    def micro(self) -> dict[str, Any]:
        tp = sum(s.tp for s in self.per_label.values())
        fp = sum(s.fp for s in self.per_label.values())
        fn = sum(s.fn for s in self.per_label.values())
        p, r = _div(tp, tp + fp), _div(tp, tp + fn)
        return {
            "precision": p,
            "recall": r,
            "f1": _f1(p, r),
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "support": tp + fn,
            "predicted": tp + fp,
        }

    @property
    def macro_labels(self) -> list[str]:
        """Labels the macro average runs over: those with gold support or predictions (as seqeval)."""
        return [lab for lab in self.labels if self.per_label[lab].support or self.per_label[lab].predicted]

    @property
    def macro(self) -> dict[str, Any]:
        labs = self.macro_labels
        n = len(labs)
        if not n:
            return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "labels": []}
        return {
            "precision": sum(self.per_label[l].precision for l in labs) / n,
            "recall": sum(self.per_label[l].recall for l in labs) / n,
            "f1": sum(self.per_label[l].f1 for l in labs) / n,
            "labels": labs,
        }

    @property
    def char_accuracy(self) -> float:
        return _div(self.char_correct, self.char_total)

    @property
    def exact_match(self) -> float:
        return _div(self.exact_matches, self.n_sentences)

    @property
    def error_totals(self) -> dict[str, Any]:
        fp = dict.fromkeys(FP_CAUSES, 0)
        fn = dict.fromkeys(FN_CAUSES, 0)
        for s in self.per_label.values():
            for k, v in s.fp_causes.items():
                fp[k] += v
            for k, v in s.fn_causes.items():
                fn[k] += v
        return {"fp": fp, "fn": fn}

    # -- output ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "n_sentences": self.n_sentences,
            "labels": list(self.labels),
            "per_label": {lab: self.per_label[lab].to_dict() for lab in self.labels},
            "micro": self.micro,
            "macro": self.macro,
            "char_accuracy": self.char_accuracy,
            "char_correct": self.char_correct,
            "char_total": self.char_total,
            "exact_match": self.exact_match,
            "exact_matches": self.exact_matches,
            "klue_char_macro_f1": self.klue_char_macro_f1,
            "klue_char_tag_f1": dict(self.klue_char_tags),
            "errors": self.error_totals,
            "ignored": {side: dict(c) for side, c in self.ignored.items()},
            "duplicates": dict(self.duplicates),
            "multi_label": dict(self.multi_label),
            "overlaps_resolved": dict(self.overlaps_resolved),
            "notes": self.notes(),
        }

    def to_markdown(self, title: str = "Evaluation") -> str:
        mi, ma = self.micro, self.macro
        lines = [
            f"# {title}",
            "",
            f"{self.n_sentences} sentences, {mi['support']} gold entities, {mi['predicted']} predicted.",
            "",
            "| metric | value |",
            "|---|---:|",
            f"| micro precision | {pct(mi['precision'])} |",
            f"| micro recall | {pct(mi['recall'])} |",
            f"| micro F1 | {pct(mi['f1'])} |",
            f"| macro precision | {pct(ma['precision'])} |",
            f"| macro recall | {pct(ma['recall'])} |",
            f"| macro F1 ({len(ma['labels'])} labels) | {pct(ma['f1'])} |",
            f"| character accuracy | {pct(self.char_accuracy)} |",
            f"| sentence exact match | {pct(self.exact_match)} |",
            f"| KLUE character macro F1 | {pct(self.klue_char_macro_f1)} |",
            "",
            "## Per label",
            "",
            "| label | precision | recall | F1 | TP | FP | FN | support |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for lab in self.labels:
            s = self.per_label[lab]
            lines.append(
                f"| {md_escape(lab)} | {pct(s.precision)} | {pct(s.recall)} | {pct(s.f1)} | "
                f"{s.tp} | {s.fp} | {s.fn} | {s.support} |"
            )
        lines.append(
            f"| **micro** | {pct(mi['precision'])} | {pct(mi['recall'])} | {pct(mi['f1'])} | "
            f"{mi['tp']} | {mi['fp']} | {mi['fn']} | {mi['support']} |"
        )
        lines.append(f"| **macro** | {pct(ma['precision'])} | {pct(ma['recall'])} | {pct(ma['f1'])} | | | | |")
        lines += ["", "## Errors", "", error_table_markdown(self), ""]
        notes = self.notes()
        if notes:
            lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
        lines.append("Scores in percent. Definitions: docs/evaluation.md.")
        return "\n".join(lines) + "\n"

    def notes(self) -> list[str]:
        out = []
        for side in ("gold", "pred"):
            ign = self.ignored.get(side) or {}
            if ign:
                desc = ", ".join(f"{k} {v}" for k, v in sorted(ign.items()))
                out.append(
                    f"{sum(ign.values())} {side} entities have labels outside the evaluated set and "
                    f"were ignored ({desc})."
                )
            if self.duplicates.get(side):
                out.append(
                    f"{self.duplicates[side]} duplicate {side} entities (same span and label) were counted once."
                )
            if self.multi_label.get(side):
                out.append(
                    f"{self.multi_label[side]} {side} spans have more than one label; each label is "
                    f"scored as its own entity."
                )
            if self.overlaps_resolved.get(side):
                out.append(
                    f"{self.overlaps_resolved[side]} {side} entities overlap an earlier one and lose the "
                    f"shared characters in the character-level metrics (the earlier, longer span wins)."
                )
        return out


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def error_table_markdown(result: EvalResult) -> str:
    head = ["label"] + [f"FP {CAUSE_NAMES[c]}" for c in FP_CAUSES] + [f"FN {CAUSE_NAMES[c]}" for c in FN_CAUSES]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for lab in result.labels:
        s = result.per_label[lab]
        if not (s.fp or s.fn):
            continue
        lines.append(
            "| "
            + " | ".join(
                [md_escape(lab)] + [str(s.fp_causes[c]) for c in FP_CAUSES] + [str(s.fn_causes[c]) for c in FN_CAUSES]
            )
            + " |"
        )
    tot = result.error_totals
    lines.append(
        "| **total** | "
        + " | ".join([str(tot["fp"][c]) for c in FP_CAUSES] + [str(tot["fn"][c]) for c in FN_CAUSES])
        + " |"
    )
    return "\n".join(lines)


# -- reading -----------------------------------------------------------------


def read_for_scoring(path: str | Path) -> list[Example]:
    """Canonical JSONL as ``read_jsonl`` reads it, except that a duplicate entity or a span with two
    labels is not an error: scoring has a rule for both (see the module docstring). Every entity's
    offsets and surface text are still checked, with file and line in the error."""
    out = []
    for lineno, ex in numbered_jsonl(path, validate_examples=False):
        for e in ex.entities:  # one at a time: validate() refuses repeated spans, which are legal here
            validate(Example(ex.id, ex.text, [e]), path, lineno)
        out.append(ex)
    return out


# -- pairing -----------------------------------------------------------------


def pair_examples(gold: list[Example], pred: list[Example]) -> list[tuple[Example, Example]]:
    """Pair by ``Example.id`` in gold order; every id must be on both sides, once, with the same text."""
    if not gold:
        raise KnerError("no gold examples to evaluate")

    def index(examples: list[Example], side: str) -> dict[str, Example]:
        out: dict[str, Example] = {}
        for ex in examples:
            if ex.id in out:
                raise KnerError(f"{side} has duplicate id {ex.id!r}; ids must be unique to pair gold and predictions")
            out[ex.id] = ex
        return out

    g, p = index(gold, "gold"), index(pred, "predictions")
    missing = [i for i in g if i not in p]
    extra = [i for i in p if i not in g]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} gold ids have no prediction (first: {', '.join(map(repr, missing[:5]))})")
        if extra:
            parts.append(f"{len(extra)} predicted ids are not in gold (first: {', '.join(map(repr, extra[:5]))})")
        raise KnerError("gold and predictions do not cover the same sentences: " + "; ".join(parts))
    pairs = []
    for i, gex in g.items():
        pex = p[i]
        if pex.text != gex.text:
            raise KnerError(
                f"id {i!r}: predicted text differs from gold text (gold {gex.text[:40]!r}, pred {pex.text[:40]!r})"
            )
        pairs.append((gex, pex))
    return pairs


# -- entity matching and error causes ------------------------------------------


def _overlaps(a: Span, b: Span) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _cause(span: Span, others: set[Span], fallback: str) -> str:
    """Why ``span`` has no exact counterpart among ``others``; checked in this order."""
    same_span = [o for o in others if o[0] == span[0] and o[1] == span[1]]
    if same_span:  # exact span with the same label would have matched
        return "wrong_type"
    overlapping = [o for o in others if _overlaps(span, o)]
    if any(o[2] == span[2] for o in overlapping):
        return "wrong_boundary"
    if overlapping:
        return "wrong_boundary_type"
    return fallback


def _spans(
    ex: Example, keep: set[str] | None, side: str, ignored: Counter[str], dups: Counter[str], multi: Counter[str]
) -> set[Span]:
    out: set[Span] = set()
    for e in ex.entities:
        if keep is not None and e.label not in keep:
            ignored[e.label] += 1
            continue
        key = (e.start, e.end, e.label)
        if key in out:
            dups[side] += 1
            continue
        out.add(key)
    per_span = Counter((s, e) for s, e, _ in out)
    multi[side] += sum(1 for n in per_span.values() if n > 1)
    return out


# -- main entry ---------------------------------------------------------------------


def evaluate(gold: list[Example], pred: list[Example], labels: list[str] | None = None) -> EvalResult:
    """Score ``pred`` against ``gold``; see the module docstring for every definition.

    ``labels`` fixes the evaluated label set and its display order; entities
    with other labels are ignored and counted in ``EvalResult.ignored``.
    Without it, every label seen in gold or predictions is evaluated.
    """
    pairs = pair_examples(gold, pred)
    keep = None
    if labels is not None:
        labels = list(dict.fromkeys(labels))
        keep = set(labels)
    ignored: dict[str, Counter[str]] = {"gold": Counter(), "pred": Counter()}
    dups: Counter[str] = Counter()
    multi: Counter[str] = Counter()
    span_pairs = []
    for gex, pex in pairs:
        span_pairs.append(
            (
                gex,
                _spans(gex, keep, "gold", ignored["gold"], dups, multi),
                _spans(pex, keep, "pred", ignored["pred"], dups, multi),
            )
        )
    if labels is None:
        seen = {s[2] for _, g, p in span_pairs for s in (g | p)}
        labels = sorted(seen)
    per = {lab: LabelScores(lab) for lab in labels}

    char_correct = char_total = exact = 0
    overlaps: Counter[str] = Counter()
    gold_tags: Counter[str] = Counter()
    pred_tags: Counter[str] = Counter()
    tp_tags: Counter[str] = Counter()
    for gex, g, p in span_pairs:
        for s in g & p:
            per[s[2]].tp += 1
        for s in p - g:
            per[s[2]].fp += 1
            per[s[2]].fp_causes[_cause(s, g, "spurious")] += 1
        for s in g - p:
            per[s[2]].fn += 1
            per[s[2]].fn_causes[_cause(s, p, "missed")] += 1
        exact += g == p

        g_chars, g_hidden = char_tags(gex.text, g)
        p_chars, p_hidden = char_tags(gex.text, p)
        overlaps["gold"] += g_hidden
        overlaps["pred"] += p_hidden
        for (gt, gl), (pt, pl) in zip(g_chars, p_chars):
            char_total += 1
            char_correct += gl == pl
            gold_tags[gt] += 1
            pred_tags[pt] += 1
            if gt == pt:
                tp_tags[gt] += 1

    # Tags of labels that occur nowhere would each add an F1 of 1 (zero_division=1): leave them out, as
    # the macro average does, so `--labels` with an unused label cannot raise the score.
    present = [lab for lab in labels if per[lab].support or per[lab].predicted]
    tagset = [f"{bi}-{lab}" for lab in present for bi in ("B", "I")] + ["O"]
    tag_f1 = klue_tag_f1(gold_tags, pred_tags, tp_tags, tagset)
    return EvalResult(
        labels=labels,
        per_label=per,
        n_sentences=len(pairs),
        char_correct=char_correct,
        char_total=char_total,
        exact_matches=exact,
        klue_char_macro_f1=sum(tag_f1.values()) / len(tag_f1),
        klue_char_tags=tag_f1,
        ignored={k: Counter(v) for k, v in ignored.items() if v},
        duplicates={k: v for k, v in dups.items() if v},
        multi_label={k: v for k, v in multi.items() if v},
        overlaps_resolved={k: v for k, v in overlaps.items() if v},
    )
