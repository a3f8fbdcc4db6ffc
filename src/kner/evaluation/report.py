"""Side-by-side comparison of several systems against one gold set.

``compare`` writes four files into ``out_dir``: ``report.json`` (everything,
machine-readable), ``report.md`` (``render_markdown``), ``report.html`` (``render_html``;
self-contained: inline CSS, the chart embedded as a base64 PNG, no external assets, so it can be
mailed or attached to an issue) and ``f1_by_label.png`` (``chart``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from kner.data.example import Example
from kner.errors import KnerError
from kner.evaluation.chart import f1_chart
from kner.evaluation.disagreements import disagreements
from kner.evaluation.render_html import to_html
from kner.evaluation.render_markdown import to_markdown
from kner.evaluation.scoring import evaluate
from kner.textio import write_text


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
