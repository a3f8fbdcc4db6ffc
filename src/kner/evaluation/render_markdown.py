"""``report.md``: the comparison report as GitHub markdown."""

from __future__ import annotations

from typing import Any

from kner.evaluation.disagreements import disagreement_intro
from kner.evaluation.scoring import (
    CAUSE_NAMES,
    FN_CAUSES,
    FP_CAUSES,
    EvalResult,
    error_table_markdown,
    md_escape,
    pct,
)


def markup(text: str, ents: list[dict[str, Any]]) -> str:
    """KLUE-style ``<surface:LABEL>`` inline markup; spans overlapping an earlier one are listed after."""
    parts, pos, extra = [], 0, []
    for e in sorted(ents, key=lambda e: (e["start"], -e["end"])):
        if e["start"] < pos:
            extra.append(f"{e['text']}:{e['label']}@{e['start']}")
            continue
        parts.append(text[pos : e["start"]])
        parts.append(f"<{text[e['start'] : e['end']]}:{e['label']}>")
        pos = e["end"]
    parts.append(text[pos:])
    s = "".join(parts)
    return s + (f"  (+ overlapping: {', '.join(extra)})" if extra else "")


def _code(s: str) -> str:
    fence = "``" if "`" in s else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def to_markdown(report: dict[str, Any], results: dict[str, EvalResult]) -> str:
    names = list(results)
    labels = report["labels"]
    L = [
        f"# {report['title']}",
        "",
        f"{report['n_sentences']} sentences, {report['n_gold_entities']} gold entities, "
        f"systems: {', '.join(names)}. Scores in percent; entity matching is strict "
        f"(same start, end and label). Definitions: docs/evaluation.md.",
        "",
        "## Summary",
        "",
        "| system | micro P | micro R | micro F1 | macro P | macro R | macro F1 "
        "| char acc | exact match | KLUE char F1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, r in results.items():
        mi, ma = r.micro, r.macro
        L.append(
            f"| {md_escape(n)} | {pct(mi['precision'])} | {pct(mi['recall'])} | {pct(mi['f1'])} | "
            f"{pct(ma['precision'])} | {pct(ma['recall'])} | {pct(ma['f1'])} | {pct(r.char_accuracy)} | "
            f"{pct(r.exact_match)} | {pct(r.klue_char_macro_f1)} |"
        )
    L += ["", "![F1 by label](f1_by_label.png)", "", "## Per label", ""]
    head = ["label", "support"]
    for n in names:
        head += [f"{n} P", f"{n} R", f"{n} F1", f"{n} TP", f"{n} FP", f"{n} FN"]
    L.append("| " + " | ".join(md_escape(h) for h in head) + " |")
    L.append("|---" + "|---:" * (len(head) - 1) + "|")
    for lab in labels + ["micro", "macro"]:
        support = (
            results[names[0]].micro["support"]
            if lab in ("micro", "macro")
            else results[names[0]].per_label[lab].support
        )
        row = [f"**{lab}**" if lab in ("micro", "macro") else md_escape(lab), "" if lab == "macro" else str(support)]
        for n in names:
            r = results[n]
            if lab == "micro":
                m = r.micro
                row += [pct(m["precision"]), pct(m["recall"]), pct(m["f1"]), str(m["tp"]), str(m["fp"]), str(m["fn"])]
            elif lab == "macro":
                m = r.macro
                row += [pct(m["precision"]), pct(m["recall"]), pct(m["f1"]), "", "", ""]
            else:
                s = r.per_label[lab]
                row += [pct(s.precision), pct(s.recall), pct(s.f1), str(s.tp), str(s.fp), str(s.fn)]
        L.append("| " + " | ".join(row) + " |")
    L += [
        "",
        "## Errors",
        "",
        "Every false positive (FP) and false negative (FN) has exactly one cause; FP causes sum to FP, "
        "FN causes to FN.",
        "",
        "| system | "
        + " | ".join(f"FP {CAUSE_NAMES[c]}" for c in FP_CAUSES)
        + " | "
        + " | ".join(f"FN {CAUSE_NAMES[c]}" for c in FN_CAUSES)
        + " |",
        "|---" + "|---:" * (len(FP_CAUSES) + len(FN_CAUSES)) + "|",
    ]
    for n, r in results.items():
        t = r.error_totals
        L.append(
            f"| {md_escape(n)} | "
            + " | ".join(str(t["fp"][c]) for c in FP_CAUSES)
            + " | "
            + " | ".join(str(t["fn"][c]) for c in FN_CAUSES)
            + " |"
        )
    for n, r in results.items():
        L += ["", f"### {md_escape(n)}: errors by label", "", error_table_markdown(r)]
    notes = [(n, note) for n, r in results.items() for note in r.notes()]
    if notes:
        L += ["", "## Notes", ""] + [f"- {md_escape(n)}: {note}" for n, note in notes]
    d = report["disagreements"]
    L += ["", "## Where the systems disagree", "", disagreement_intro(d, len(names)), ""]
    for s in d["sentences"]:
        L += [f"### {md_escape(s['id'])}", "", f"- gold: {_code(markup(s['text'], s['gold']))}"]
        for n, o in s["systems"].items():
            verdict = "✓" if o["correct"] else f"✗ {o['fp']} FP, {o['fn']} FN"
            L.append(f"- {md_escape(n)}: {_code(markup(s['text'], o['entities']))} {verdict}")
        L.append("")
    return "\n".join(L).rstrip() + "\n"
