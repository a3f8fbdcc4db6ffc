"""The one-table console summary of a comparison report that ``kner compare`` and ``kner run`` end with."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from kner.evaluation.scoring import pct


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
