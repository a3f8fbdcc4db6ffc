"""Side-by-side comparison of several systems against one gold set.

``compare`` writes four files into ``out_dir``: ``report.json`` (everything,
machine-readable), ``report.md``, ``report.html`` (self-contained: inline CSS,
the chart embedded as a base64 PNG, no external assets, so it can be mailed or
attached to an issue) and ``f1_by_label.png``.
"""

from __future__ import annotations

import base64
import html
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from kner.data.example import Example
from kner.errors import KnerError
from kner.evaluation.scoring import (
    CAUSE_NAMES,
    FN_CAUSES,
    FP_CAUSES,
    EvalResult,
    error_table_markdown,
    evaluate,
    md_escape,
    pair_examples,
    pct,
)
from kner.textio import write_text

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

# Pastel backgrounds that keep black Hangul readable; assigned by label order.
PALETTE = [
    "#ffd6a5",
    "#caffbf",
    "#9bf6ff",
    "#bdb2ff",
    "#ffc6ff",
    "#fdffb6",
    "#a0c4ff",
    "#ffadad",
    "#d0f4de",
    "#e4c1f9",
    "#fcf6bd",
    "#a9def9",
    "#f1c0e8",
    "#cfbaf0",
    "#b9fbc0",
    "#f7d6e0",
]
CHART_COLORS = [
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
]
HANGUL_FONTS = (
    "NanumGothic",
    "Noto Sans CJK KR",
    "Noto Sans KR",
    "Malgun Gothic",
    "AppleGothic",
    "UnDotum",
    "Baekmuk Gulim",
    "Source Han Sans KR",
)


def compare(
    gold: list[Example],
    systems: dict[str, list[Example]],
    out_dir: str | Path,
    sample: int = 20,
    seed: int = 0,
    labels: list[str] | None = None,
    title: str = "NER comparison",
) -> dict[str, Any]:
    """Evaluate every system on ``gold`` with one shared label list and write the report files.

    Returns the content of ``report.json`` plus ``files`` (name -> path).
    ``sample`` sentences where the systems disagree (with one system: where it
    differs from gold) are drawn with ``random.Random(seed)`` and shown in gold order.
    """
    if not systems:
        raise KnerError("compare needs at least one system")
    if sample < 0:
        raise KnerError("sample must be 0 or more")
    if labels is None:
        seen = {e.label for ex in gold for e in ex.entities}
        for preds in systems.values():
            seen |= {e.label for ex in preds for e in ex.entities}
        labels = sorted(seen)
    results = {}
    for name, preds in systems.items():
        try:
            results[name] = evaluate(gold, preds, labels)
        except KnerError as err:
            raise KnerError(f"system {name!r}: {err}") from None
    labels = list(results[next(iter(results))].labels)

    dis = disagreements(gold, systems, labels)
    rng = random.Random(seed)
    picked = sorted(rng.sample(range(len(dis)), min(sample, len(dis))))
    report = {
        "title": title,
        "n_sentences": len(gold),
        # As scored: in the evaluated labels, a duplicate counted once (the same for every system).
        "n_gold_entities": next(iter(results.values())).micro["support"],
        "labels": labels,
        "systems": {name: r.to_dict() for name, r in results.items()},
        "disagreements": {"total": len(dis), "shown": len(picked), "seed": seed, "sentences": [dis[i] for i in picked]},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "json": out / "report.json",
        "markdown": out / "report.md",
        "html": out / "report.html",
        "chart": out / "f1_by_label.png",
    }
    png = f1_chart(results, labels, files["chart"])
    write_text(files["json"], json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    write_text(files["markdown"], to_markdown(report, results))
    write_text(files["html"], to_html(report, results, png))
    report["files"] = {k: str(v) for k, v in files.items()}
    return report


def headline_table(report: dict[str, Any]) -> Table:
    """One row per system (micro and macro P, R, F1, KLUE character F1) from the ``report.json``
    content, as a rich ``Table``; :func:`print_headline` prints it."""
    # Two-line headers and no vertical rules keep it within 80 columns; a long system name folds onto
    # a second line rather than pushing the scores into "…".
    t = Table(
        title=f"{escape(report['title'])}: {report['n_sentences']} sentences, {report['n_gold_entities']} gold "
        f"entities (scores in %)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    t.add_column("\nsystem", overflow="fold")
    for avg in ("micro", "macro"):
        for c in ("P", "R", "F1"):
            t.add_column(f"{avg}\n{c}", justify="right", no_wrap=True)
    t.add_column("KLUE\nchar F1", justify="right", no_wrap=True)
    for name, r in report["systems"].items():
        mi, ma = r["micro"], r["macro"]
        t.add_row(
            escape(name),
            pct(mi["precision"]),
            pct(mi["recall"]),
            pct(mi["f1"]),
            pct(ma["precision"]),
            pct(ma["recall"]),
            pct(ma["f1"]),
            pct(r["klue_char_macro_f1"]),
        )
    return t


def print_headline(report: dict[str, Any], console: Console | None = None) -> None:
    """The summary ``kner compare`` and ``kner run`` end with. Not on a terminal (a log file), the
    table gets the width it needs instead of the 80 columns rich assumes; rich adds no colour codes there."""
    con = console if console is not None else Console()
    table = headline_table(report)
    if not con.is_terminal:
        con.width = max(con.width, Measurement.get(con, con.options.update_width(1000), table).maximum)
    con.print(table)


# -- disagreements -------------------------------------------------------------------


def _ents(ex: Example, keep: set[str]) -> list[dict[str, Any]]:
    return [e.to_dict() for e in sorted(set(ex.entities)) if e.label in keep]


def disagreements(gold: list[Example], systems: dict[str, list[Example]], labels: list[str]) -> list[dict[str, Any]]:
    """Sentences where the systems' entity sets differ (one system: where it differs from gold)."""
    keep = set(labels)
    paired = {name: dict((g.id, p) for g, p in pair_examples(gold, preds)) for name, preds in systems.items()}
    out = []
    for g in gold:
        gset = {(e.start, e.end, e.label) for e in g.entities if e.label in keep}
        sets = {
            name: {(e.start, e.end, e.label) for e in paired[name][g.id].entities if e.label in keep}
            for name in systems
        }
        distinct = {frozenset(s) for s in sets.values()}
        if len(distinct) == 1 and (len(sets) > 1 or next(iter(distinct)) == gset):
            continue
        out.append(
            {
                "id": g.id,
                "text": g.text,
                "gold": _ents(g, keep),
                "systems": {
                    name: {
                        "entities": _ents(paired[name][g.id], keep),
                        "correct": s == gset,
                        "fp": len(s - gset),
                        "fn": len(gset - s),
                    }
                    for name, s in sets.items()
                },
            }
        )
    return out


# -- chart ------------------------------------------------------------------------------


def _hangul_font() -> str | None:
    from matplotlib import font_manager  # noqa: PLC0415  lazy: matplotlib only for the chart

    names = {f.name for f in font_manager.fontManager.ttflist}
    return next((n for n in HANGUL_FONTS if n in names), None)


def f1_chart(results: dict[str, EvalResult], labels: list[str], path: Path) -> bytes:
    """Grouped bars: F1 per label (then micro and macro) per system. Returns the PNG bytes."""
    # lazy: matplotlib (pyplot: a fraction of a second) only for the chart; Agg before pyplot is imported
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    groups = labels + ["micro", "macro"]
    names = list(results)
    rc: dict[RcKeyType, Any] = {"axes.unicode_minus": False}
    font = _hangul_font()
    if font:
        rc["font.family"] = [font, "DejaVu Sans"]
    with plt.rc_context(rc):
        width = min(0.8 / max(len(names), 1), 0.35)
        fig_w = min(max(6.0, 0.45 * len(groups) * max(len(names), 2) + 2), 24.0)
        fig, ax = plt.subplots(figsize=(fig_w, 4.2), dpi=110)
        for j, name in enumerate(names):
            r = results[name]
            vals = [100 * r.per_label[lab].f1 for lab in labels] + [100 * r.micro["f1"], 100 * r.macro["f1"]]
            xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(groups))]
            ax.bar(xs, vals, width=width * 0.95, label=name, color=CHART_COLORS[j % len(CHART_COLORS)])
        if labels:
            ax.axvline(len(labels) - 0.5, color="#999999", linewidth=0.8, linestyle=":")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, rotation=45 if len(groups) > 12 else 0, ha="right" if len(groups) > 12 else "center")
        ax.set_ylim(0, 105)
        ax.set_ylabel("F1 (%)")
        ax.set_title("Entity F1 by label (strict match)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        # Outside on the right: below the axes it collides with rotated tick labels.
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.tight_layout()
        fig.savefig(path, format="png")
        plt.close(fig)
    return path.read_bytes()


# -- markdown --------------------------------------------------------------------------


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
    L += ["", "## Where the systems disagree", "", _disagreement_intro(d, len(names)), ""]
    for s in d["sentences"]:
        L += [f"### {md_escape(s['id'])}", "", f"- gold: {_code(markup(s['text'], s['gold']))}"]
        for n, o in s["systems"].items():
            verdict = "✓" if o["correct"] else f"✗ {o['fp']} FP, {o['fn']} FN"
            L.append(f"- {md_escape(n)}: {_code(markup(s['text'], o['entities']))} {verdict}")
        L.append("")
    return "\n".join(L).rstrip() + "\n"


def _disagreement_intro(d: dict[str, Any], n_systems: int) -> str:
    what = "the systems' entity sets differ" if n_systems > 1 else "the system's output differs from gold"
    if not d["total"]:
        return f"No sentence where {what}."
    return (
        f"{d['total']} sentences where {what}; {d['shown']} shown, drawn at random (seed {d['seed']}), in gold order."
    )


# -- HTML ------------------------------------------------------------------------------------

CSS = """
body{font-family:-apple-system,"Segoe UI","Noto Sans KR","Nanum Gothic","Malgun Gothic",sans-serif;
 margin:24px auto;max-width:1200px;color:#222;padding:0 16px;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #d8d8d8;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f3f4f6}td.l,th.l{text-align:left}
tr.avg td{background:#fafafa;font-weight:600}
td.best{font-weight:700;color:#0a6a0a}
th.sys{text-align:center;background:#e8eef7}
img.chart{max-width:100%;border:1px solid #eee}
.legend span.ent{margin-right:6px}
.sent{border:1px solid #e3e3e3;border-radius:6px;padding:8px 12px;margin:10px 0}
.sent .id{font-size:12px;color:#666;font-family:monospace}
.row{display:flex;gap:10px;margin:3px 0;align-items:baseline}
.who{flex:0 0 110px;font-size:12px;font-weight:600;color:#444;overflow:hidden;text-overflow:ellipsis}
.txt{flex:1;font-size:15px}
.verdict{flex:0 0 110px;font-size:12px;text-align:right}
.ok{color:#0a6a0a}.bad{color:#b00020}
span.ent{border-radius:3px;padding:1px 1px}
span.ent.wrong{outline:2px dashed #d00;outline-offset:-1px}
sup.lab{font-size:10px;font-weight:700;color:#333;margin-left:1px}
.missed{font-size:12px;color:#b00020;margin-left:120px}
details{margin:6px 0}summary{cursor:pointer;color:#345}
"""


def _color(labels: list[str]) -> dict[str, str]:
    return {lab: PALETTE[i % len(PALETTE)] for i, lab in enumerate(labels)}


def highlight(text: str, ents: list[dict[str, Any]], colors: dict[str, str], gold: set[Any] | None = None) -> str:
    """Text with entities as colored spans. Overlaps are cut at every boundary and each piece takes
    the innermost entity's color; with ``gold`` given, entities not in it get a dashed red outline."""
    cuts = sorted({0, len(text)} | {e["start"] for e in ents} | {e["end"] for e in ents})
    out = []
    for a, b in zip(cuts, cuts[1:]):
        piece = html.escape(text[a:b])
        cover = [e for e in ents if e["start"] <= a and b <= e["end"]]
        if cover:
            e = min(cover, key=lambda e: (e["end"] - e["start"], -e["start"]))
            wrong = gold is not None and (e["start"], e["end"], e["label"]) not in gold
            out.append(
                f'<span class="ent{" wrong" if wrong else ""}" '
                f'style="background:{colors.get(e["label"], "#ddd")}" '
                f'title="{html.escape(e["label"])} [{e["start"]},{e["end"]})">{piece}</span>'
            )
        else:
            out.append(piece)
        for e in ents:
            if e["end"] == b:
                out.append(f'<sup class="lab">{html.escape(e["label"])}</sup>')
    return "".join(out)


def to_html(report: dict[str, Any], results: dict[str, EvalResult], png: bytes) -> str:
    esc = html.escape
    names = list(results)
    labels = report["labels"]
    colors = _color(labels)
    H = [
        "<!DOCTYPE html>",
        '<html lang="ko"><head><meta charset="utf-8">',
        f"<title>{esc(report['title'])}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(report['title'])}</h1>",
        f'<p class="meta">{report["n_sentences"]} sentences, {report["n_gold_entities"]} gold entities; systems: '
        f"{esc(', '.join(names))}. Scores in percent; entity matching is strict (same start, end and label).</p>",
        "<h2>Summary</h2><table><tr><th class=l>system</th><th>micro P</th><th>micro R</th><th>micro F1</th>"
        "<th>macro P</th><th>macro R</th><th>macro F1</th><th>char acc</th><th>exact match</th>"
        "<th>KLUE char F1</th></tr>",
    ]
    best_micro = max(r.micro["f1"] for r in results.values())
    for n, r in results.items():
        mi, ma = r.micro, r.macro
        cls = ' class="best"' if len(names) > 1 and mi["f1"] == best_micro else ""
        H.append(
            f"<tr><td class=l>{esc(n)}</td><td>{pct(mi['precision'])}</td><td>{pct(mi['recall'])}</td>"
            f"<td{cls}>{pct(mi['f1'])}</td><td>{pct(ma['precision'])}</td><td>{pct(ma['recall'])}</td>"
            f"<td>{pct(ma['f1'])}</td><td>{pct(r.char_accuracy)}</td><td>{pct(r.exact_match)}</td>"
            f"<td>{pct(r.klue_char_macro_f1)}</td></tr>"
        )
    H.append("</table>")
    H.append(f'<img class="chart" alt="F1 by label" src="data:image/png;base64,{base64.b64encode(png).decode()}">')

    H.append("<h2>Per label</h2><table><tr><th class=l rowspan=2>label</th><th rowspan=2>support</th>")
    H += [f'<th class="sys" colspan=6>{esc(n)}</th>' for n in names]
    H.append("</tr><tr>" + "<th>P</th><th>R</th><th>F1</th><th>TP</th><th>FP</th><th>FN</th>" * len(names) + "</tr>")
    for lab in labels:
        f1s = [results[n].per_label[lab].f1 for n in names]
        best = max(f1s)
        chip = f'<span class="ent" style="background:{colors[lab]}">{esc(lab)}</span>'
        H.append(f"<tr><td class=l>{chip}</td><td>{results[names[0]].per_label[lab].support}</td>")
        for n in names:
            s = results[n].per_label[lab]
            cls = ' class="best"' if len(names) > 1 and s.f1 == best and best > 0 else ""
            H.append(
                f"<td>{pct(s.precision)}</td><td>{pct(s.recall)}</td><td{cls}>{pct(s.f1)}</td>"
                f"<td>{s.tp}</td><td>{s.fp}</td><td>{s.fn}</td>"
            )
        H.append("</tr>")
    H.append(f'<tr class="avg"><td class=l>micro</td><td>{results[names[0]].micro["support"]}</td>')
    for n in names:
        m = results[n].micro
        H.append(
            f"<td>{pct(m['precision'])}</td><td>{pct(m['recall'])}</td><td>{pct(m['f1'])}</td>"
            f"<td>{m['tp']}</td><td>{m['fp']}</td><td>{m['fn']}</td>"
        )
    H.append('</tr><tr class="avg"><td class=l>macro</td><td></td>')
    for n in names:
        m = results[n].macro
        H.append(
            f"<td>{pct(m['precision'])}</td><td>{pct(m['recall'])}</td><td>{pct(m['f1'])}</td>"
            "<td></td><td></td><td></td>"
        )
    H.append("</tr></table>")

    H.append(
        "<h2>Errors</h2><p>Every false positive (FP) and false negative (FN) has exactly one cause: "
        "<b>wrong boundary</b> (overlaps an entity of the same label), <b>wrong type</b> (same span, other "
        "label), <b>wrong boundary+type</b> (overlaps only entities of other labels), <b>spurious</b> "
        "(prediction overlapping no gold entity), <b>missed</b> (gold entity overlapping no prediction).</p>"
    )
    H.append(
        '<table><tr><th class=l rowspan=2>system</th><th class="sys" colspan=4>FP</th>'
        '<th class="sys" colspan=4>FN</th></tr><tr>'
        + "".join(f"<th>{CAUSE_NAMES[c]}</th>" for c in FP_CAUSES)
        + "".join(f"<th>{CAUSE_NAMES[c]}</th>" for c in FN_CAUSES)
        + "</tr>"
    )

    def cause_row(name: str, fp: dict[str, int], fn: dict[str, int]) -> str:
        return (
            f"<tr><td class=l>{esc(name)}</td>"
            + "".join(f"<td>{fp[c]}</td>" for c in FP_CAUSES)
            + "".join(f"<td>{fn[c]}</td>" for c in FN_CAUSES)
            + "</tr>"
        )

    for n, r in results.items():
        t = r.error_totals
        H.append(cause_row(n, t["fp"], t["fn"]))
    H.append("</table>")
    for n, r in results.items():
        H.append(
            f"<details><summary>{esc(n)}: errors by label</summary><table><tr><th class=l>label</th>"
            + "".join(f"<th>FP {CAUSE_NAMES[c]}</th>" for c in FP_CAUSES)
            + "".join(f"<th>FN {CAUSE_NAMES[c]}</th>" for c in FN_CAUSES)
            + "</tr>"
        )
        for lab in labels:
            s = r.per_label[lab]
            if s.fp or s.fn:
                H.append(cause_row(lab, s.fp_causes, s.fn_causes))
        H.append("</table></details>")
    notes = [(n, note) for n, r in results.items() for note in r.notes()]
    if notes:
        H.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}: {esc(x)}</li>" for n, x in notes) + "</ul>")

    d = report["disagreements"]
    H.append(
        f"<h2>Where the systems disagree</h2><p>{esc(_disagreement_intro(d, len(names)))} "
        "Entities a system got wrong have a dashed red outline; gold entities it missed are listed "
        "under its line.</p>"
    )
    H.append(
        '<p class="legend">'
        + " ".join(f'<span class="ent" style="background:{colors[lab]}">{esc(lab)}</span>' for lab in labels)
        + "</p>"
    )
    for s in d["sentences"]:
        gset = {(e["start"], e["end"], e["label"]) for e in s["gold"]}
        H.append(
            f'<div class="sent"><div class="id">{esc(s["id"])}</div>'
            f'<div class="row"><div class="who">gold</div>'
            f'<div class="txt">{highlight(s["text"], s["gold"], colors)}</div><div class="verdict"></div></div>'
        )
        for n, o in s["systems"].items():
            verdict = (
                '<span class="ok">✓ correct</span>'
                if o["correct"]
                else f'<span class="bad">✗ {o["fp"]} FP, {o["fn"]} FN</span>'
            )
            H.append(
                f'<div class="row"><div class="who" title="{esc(n)}">{esc(n)}</div>'
                f'<div class="txt">{highlight(s["text"], o["entities"], colors, gset)}</div>'
                f'<div class="verdict">{verdict}</div></div>'
            )
            found = {(e["start"], e["end"], e["label"]) for e in o["entities"]}
            missed = [e for e in s["gold"] if (e["start"], e["end"], e["label"]) not in found]
            if missed:
                H.append(
                    '<div class="missed">missed: '
                    + ", ".join(f'{esc(e["text"])}<sup class="lab">{esc(e["label"])}</sup>' for e in missed)
                    + "</div>"
                )
        H.append("</div>")
    H.append('<p class="meta">Definitions of every metric: docs/evaluation.md in the kner repository.</p>')
    H.append("</body></html>")
    return "\n".join(H) + "\n"
