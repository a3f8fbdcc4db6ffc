"""HTML for the demo page: entities drawn by spaCy's displaCy, rendered on the server."""

from __future__ import annotations

import html

# displaCy colours spaCy's own label names (PERSON, GPE, ...); kner's schemes use
# others (PER, LOC, ...), which would all come out grey without a palette.
PALETTE = [
    "#7aecec",
    "#bfeeb7",
    "#feca74",
    "#ff9561",
    "#aa9cfc",
    "#c887fb",
    "#9cc9cc",
    "#ffeb80",
    "#ff8197",
    "#f0d0ff",
    "#bfe1d9",
    "#e4e7d2",
    "#ddd6a0",
    "#c2f0ff",
    "#ffd1a3",
    "#d0f0c0",
    "#f5c6cb",
    "#cfd8dc",
    "#e6ee9c",
]


def label_colors(labels: list[str]) -> dict[str, str]:
    return {html.escape(lab): PALETTE[i % len(PALETTE)] for i, lab in enumerate(labels)}


def render_entities(text: str, entities: list[dict], colors: dict[str, str] | None = None) -> str:
    """displaCy ``ent`` markup (``<mark class="entity">``) for one text and its entity dicts.

    Overlapping entities cannot be drawn in this style; later ones that overlap an
    earlier one are left out of the drawing (the JSON API still returns them).
    """
    from spacy import displacy  # noqa: PLC0415  lazy: spaCy takes seconds to import; only the demo page draws

    ents, end = [], 0
    for e in sorted(entities, key=lambda e: (e["start"], -e["end"])):
        if e["start"] < end or e["end"] <= e["start"]:
            continue
        # displaCy escapes the text but writes labels verbatim.
        ents.append({"start": e["start"], "end": e["end"], "label": html.escape(str(e["label"]))})
        end = e["end"]
    doc = {"text": text, "ents": ents, "title": None}
    return displacy.render(doc, style="ent", manual=True, page=False, jupyter=False, options={"colors": colors or {}})


PAGE = """<!DOCTYPE html>
<html lang="ko"><head><meta charset="utf-8"><title>kner · {model}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }}
textarea {{ width: 100%; font-size: 1rem; }}
.meta {{ color: #666; font-size: .9rem; }}
.error {{ color: #b00020; font-weight: bold; }}
.result {{ border-top: 1px solid #ddd; padding: .5rem 0; }}
</style></head>
<body>
<h1>kner</h1>
<p class="meta">model <code>{model}</code> · labels {labels} · one text per line, at most {max_texts} lines of
{max_chars} characters · API: <code>POST /extract</code>, <code>GET /health</code></p>
<form method="post" action="/">
<textarea name="text" rows="6" placeholder="이순신은 조선 중기의 무신이다.">{text}</textarea>
<p><button type="submit">Extract</button></p>
</form>
{body}
</body></html>
"""


def page(model: str, labels: list[str], max_texts: int, max_chars: int, text: str = "", body: str = "") -> str:
    return PAGE.format(
        model=html.escape(model),
        labels=html.escape(", ".join(labels) or "-"),
        max_texts=max_texts,
        max_chars=f"{max_chars:,}",
        text=html.escape(text),
        body=body,
    )


def results_html(results: list[dict], colors: dict[str, str], elapsed_ms: float) -> str:
    parts = [
        f'<p class="meta">{len(results)} text(s), '
        f"{sum(len(r['entities']) for r in results)} entities, {elapsed_ms:.0f} ms</p>"
    ]
    for r in results:
        parts.append('<div class="result">' + render_entities(r["text"], r["entities"], colors) + "</div>")
    return "\n".join(parts)


def error_html(message: str) -> str:
    return f'<p class="error">{html.escape(message)}</p>'
