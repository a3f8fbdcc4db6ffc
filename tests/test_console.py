"""What a user reads on the console: `kner run` ends with the scores, no colour codes when output is
not a terminal, every log line once."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest
import yaml

from helpers import kner_process
from kner.cli import LOG_HANDLER, color_allowed, configure_logging
from kner.data.example import Entity, Example
from kner.evaluation.scoring import evaluate

ESC = "\x1b["
TEXT = "AAAA BBBB CCCC DDDD"


def ex(*spans: tuple[int, int, str], id: str = "s1") -> Example:
    return Example(id, TEXT, [Entity(s, e, l, TEXT[s:e]) for s, e, l in spans])


@pytest.fixture
def run_dir(tmp_path: Path) -> dict:
    """A finished run's summary, with a report.json holding real evaluation results for two systems."""
    gold = [ex((0, 4, "PS"), (5, 9, "LC"), (10, 14, "OG"))]
    systems = {
        "llm": evaluate(gold, [ex((0, 4, "PS"), (5, 9, "LC"), (15, 19, "OG"))]),
        "spacy [char]": evaluate(gold, [ex((0, 4, "PS"))]),
    }
    rep = tmp_path / "report"
    rep.mkdir()
    report = {
        "title": "NER comparison",
        "n_sentences": 1,
        "n_gold_entities": 3,
        "labels": ["LC", "OG", "PS"],
        "systems": {n: r.to_dict() for n, r in systems.items()},
        "disagreements": {"total": 1, "shown": 1},
    }
    (rep / "report.json").write_text(json.dumps(report), encoding="utf-8")
    return {
        "output_dir": str(tmp_path),
        "report": str(rep),
        "stages": [{"stage": "prepare", "status": "skipped"}, {"stage": "report", "status": "ran", "seconds": 0.4}],
    }


def test_run_ends_with_the_headline_scores_and_no_colour_codes(run_dir, capsys):
    from kner.cli.run import print_summary

    print_summary(run_dir)  # stdout is captured: not a terminal, as with `kner run ... > log.txt`
    out = capsys.readouterr().out
    assert ESC not in out
    # llm: P 2/3, R 2/3 -> micro F1 66.67; spacy: P 1/1, R 1/3 -> micro F1 50.00, macro F1 (1+0+0)/3 = 33.33.
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip().startswith(("llm", "spacy"))}
    assert rows["llm"][1:4] == ["66.67", "66.67", "66.67"]
    assert rows["spacy"][2:8] == ["100.00", "33.33", "50.00", "33.33", "33.33", "33.33"]
    assert "spacy [char]" in out  # a name that looks like rich markup is printed as is
    assert f"report: {Path(run_dir['report']) / 'report.md'}" in out
    assert "micro" in out and "macro" in out and "KLUE" in out


def test_headline_table_is_styled_only_on_a_terminal(run_dir):
    from rich.console import Console

    from kner.cli.run import print_summary

    tty = io.StringIO()
    print_summary(run_dir, Console(file=tty, force_terminal=True, color_system="standard"))
    assert ESC in tty.getvalue()  # the check above would see escape codes if they were written


def test_a_long_system_name_is_not_cut_in_a_log_file(run_dir, capsys):
    from kner.cli.run import print_summary

    path = Path(run_dir["report"]) / "report.json"
    rep = json.loads(path.read_text(encoding="utf-8"))
    rep["systems"]["qwen2.5-7b-instruct-qlora-r16-run-3"] = rep["systems"].pop("llm")
    path.write_text(json.dumps(rep), encoding="utf-8")
    print_summary(run_dir)
    line = next(l for l in capsys.readouterr().out.splitlines() if "qwen" in l)
    assert "qwen2.5-7b-instruct-qlora-r16-run-3" in line and line.split()[1:4] == ["66.67"] * 3


def test_a_run_stopped_early_says_where_its_outputs_are(tmp_path, capsys):
    from kner.cli.run import print_summary

    print_summary({"output_dir": str(tmp_path), "stages": [{"stage": "prepare", "status": "ran", "seconds": 1.0}]})
    out = capsys.readouterr().out
    assert "prepare   ran" in out and f"outputs in {tmp_path}" in out


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "env, tty, want",
    [({}, True, True), ({}, False, False), ({"NO_COLOR": "1"}, True, False), ({"TERM": "dumb"}, True, False)],
)
def test_colour_only_on_a_terminal_without_no_color(monkeypatch, env, tty, want):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert color_allowed(_Tty() if tty else io.StringIO()) is want


@pytest.fixture
def clean_root():
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = before
    root.setLevel(level)


def test_logging_is_configured_once_plain_when_not_a_terminal(clean_root, capsys):
    configure_logging()
    configure_logging()  # a second call replaces the handler instead of adding one
    assert [h.get_name() for h in clean_root.handlers].count(LOG_HANDLER) == 1
    long = "memory plan: " + "x" * 150
    logging.getLogger("kner.test").info(long)
    out = capsys.readouterr().out
    assert ESC not in out and out.count("\n") == 1 and out.rstrip().endswith(long) and " INFO " in out


def test_logging_of_commands_other_than_run_goes_to_stderr(clean_root, capsys):
    """predict, serve, train and export log to stderr (their stdout may be read by a program), at
    their level, through the same one handler as `kner run`."""
    import sys

    configure_logging()
    configure_logging(logging.WARNING, sys.stderr)  # what `kner predict` does: replaces run's handler
    assert [h.get_name() for h in clean_root.handlers].count(LOG_HANDLER) == 1
    logging.getLogger("kner.test").info("not shown at WARNING")
    logging.getLogger("kner.test").warning("the pool was halved")
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and " WARNING " in err and err.rstrip().endswith("the pool was halved")


def test_spacy_log_lines_print_once(clean_root, capfd):
    import spacy.util

    from kner.baselines.spacy_ner import _log_once

    spacy_logger = logging.getLogger("spacy")
    own = spacy.util.logger_stream_handler
    try:
        configure_logging()
        _log_once()
        assert own not in spacy_logger.handlers
        spacy_logger.info("Set up nlp object from config")
        out, err = capfd.readouterr()
        assert (out + err).count("Set up nlp object from config") == 1
    finally:
        if own not in spacy_logger.handlers:
            spacy_logger.addHandler(own)


@pytest.mark.slow
def test_kner_run_into_a_file(tmp_path):
    """`kner run cfg > log.txt`: the whole pipeline, small; the log has no colour codes, spaCy's lines
    once, and ends with the scores."""
    from test_pipeline import TINY  # the KMOU fixture as its data

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(TINY, allow_unicode=True), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "ANSI_COLORS_DISABLED", "WASABI_NO_PRETTY")}
    p = kner_process("run", cfg, "-o", tmp_path / "run", env={**env, "TERM": "xterm-256color"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert ESC not in p.stdout and ESC not in p.stderr
    assert (p.stdout + p.stderr).count("Set up nlp object from config") == 1
    report = json.loads((tmp_path / "run" / "report" / "report.json").read_text(encoding="utf-8"))
    llm_f1 = f"{100 * report['systems']['llm']['micro']['f1']:.2f}"
    tail = p.stdout[p.stdout.index("stage report") :]
    assert "micro" in tail and llm_f1 in tail and "report.html" in tail.splitlines()[-1]
