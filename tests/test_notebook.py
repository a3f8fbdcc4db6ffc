"""notebooks/kner_colab_t4.ipynb: committed without outputs, papermill parameters, and a CPU run top to bottom."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from kner import __version__

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "kner_colab_t4.ipynb"
TINY = "tests/fixtures/notebook/tiny.yaml"  # the quickstart's path in seconds, on the KMOU fixture


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_notebook_is_committed_clean_with_a_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = _code_cells(nb)
    assert [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None] == []
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0]
    params = {
        t.id: ast.literal_eval(a.value)
        for a in ast.parse(tagged[0].source).body
        for t in a.targets
        if isinstance(a, ast.Assign)
    }
    assert params["config"] == "configs/llama2-7b-t4.yaml" and (ROOT / params["config"]).is_file()
    assert {"output_dir", "data_dir"} <= params.keys()
    assert nb.metadata.kernelspec.name == "python3"  # what papermill starts; Colab's kernel too


@pytest.mark.slow
def test_notebook_runs_on_cpu_under_papermill(tmp_path):
    out_nb, run_dir = tmp_path / "out.ipynb", tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("COLAB_RELEASE_TAG", "KNER_DATA_DIR")}
    env["JUPYTER_PREFER_ENV_PATH"] = "1"  # this venv's python3 kernel, not one a user installed elsewhere
    # From notebooks/, as Jupyter opened there would: the notebook finds the kner folder above it.
    params = ["-p", "config", TINY, "-p", "output_dir", str(run_dir)]
    cmd = [sys.executable, "-m", "papermill", str(NOTEBOOK), str(out_nb), "-k", "python3", *params]
    proc = subprocess.run(cmd, cwd=NOTEBOOK.parent, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    code = _code_cells(nbformat.read(out_nb, as_version=4))
    streams = ["".join(o.text for o in c.outputs if o.output_type == "stream") for c in code]
    setup = next(s for s in streams if "python: " in s)
    # The kernel is this interpreter (so the kner it imports and runs is this checkout's).
    assert f"python: {sys.executable}\n" in setup and f"kner {__version__} in {ROOT}\n" in setup
    assert "on Colab: False" in setup
    assert any("no Hub model in this config: login skipped" in s for s in streams)
    assert any("$ kner plan --model " in s and "(fits)" in s for s in streams)

    assert sorted(p.name for p in (run_dir / "train" / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    assert (run_dir / "evaluate" / "metrics.json").is_file()
    # The last `kner run` found the stages of the cells above done and skipped them.
    last = {e["stage"]: e["status"] for e in json.loads((run_dir / "run.json").read_text())["stages"]}
    assert {k: last[k] for k in ("prepare", "train", "predict")} == dict.fromkeys(
        ("prepare", "train", "predict"), "skipped"
    )

    report = json.loads((run_dir / "report" / "report.json").read_text())
    summary = next(o.data["text/markdown"] for c in code for o in c.outputs if "text/markdown" in o.get("data", {}))
    for name, s in report["systems"].items():
        m = s["micro"]
        row = f"| {name} | {100 * m['precision']:.2f} | {100 * m['recall']:.2f} | {100 * m['f1']:.2f} |"
        assert row in summary
    assert summary.startswith("12 test sentences, 46 gold entities")

    # displaCy: one drawing per disagreement, gold then each system, on the sentence's own text.
    html = [o.data["text/html"] for o in code[-1].outputs if "text/html" in o.get("data", {})]
    shown = report["disagreements"]["sentences"]
    assert len(html) == len(shown) == 5
    for h, sent in zip(html, shown):
        assert [h.find(f"{sent['id']}: {who}") > -1 for who in ("gold", "llm", "spacy")] == [True] * 3
        assert 'class="entities"' in h
