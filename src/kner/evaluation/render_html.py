"""``report.html``: the comparison report as one self-contained page (inline CSS, the chart as a base64 PNG)."""

from __future__ import annotations

import base64
import html
from typing import Any

from kner.evaluation.disagreements import disagreement_intro
from kner.evaluation.scoring import CAUSE_NAMES, FN_CAUSES, FP_CAUSES, EvalResult, pct

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
        f"<h2>Where the systems disagree</h2><p>{esc(disagreement_intro(d, len(names)))} "
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
