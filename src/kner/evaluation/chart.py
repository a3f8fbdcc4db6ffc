"""The report's chart: F1 per label and system as grouped bars, drawn with matplotlib (Agg) in a Hangul font."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kner.evaluation.scoring import EvalResult

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

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
