"""``kner export --hub``, ``kner push`` and loading Hub repos, against a Hugging Face cache laid out in a
temporary folder with offline mode on: no test contacts the network."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import run_kner, tiny_char_model
from kner.data.schemes import load_scheme
from kner.errors import KnerError
from kner.model.artifacts import ModelManifest
from kner.model.loading import LoadSpec

BASE_ID = "kner-test/tiny-base"
TEXTS = ["이순신은 조선의 장군이다.", "서울 부산"]
LABELS = ["PERSON", "GPE", "ORG"]
METRICS = {
    "n_sentences": 12,
    "labels": LABELS,
    "per_label": {
        "PERSON": {"precision": 0.75, "recall": 0.6, "f1": 0.6666666666666666, "support": 5, "predicted": 4},
        "GPE": {"precision": 0.5, "recall": 1.0, "f1": 0.6666666666666666, "support": 2, "predicted": 4},
        "ORG": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3, "predicted": 1},
    },
    "micro": {"precision": 0.5555555555555556, "recall": 0.6, "f1": 0.5769230769230769, "support": 10},
}


def one_line_error(res) -> str:
    """Exit 2 and nothing but one ``error:`` line: no traceback, no warnings around it."""
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def cache_repo(cache: Path, repo_id: str, folder: Path, commit: str = "a" * 40) -> Path:
    """``folder`` as huggingface_hub keeps a downloaded repo: refs/main names the commit under snapshots/."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    snap = root / "snapshots" / commit
    shutil.copytree(folder, snap)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """An offline Hugging Face cache holding the tiny base model as ``kner-test/tiny-base``."""
    from huggingface_hub import constants

    cache = tmp_path_factory.mktemp("hf_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_CACHE", str(cache))
        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        mp.setenv("HF_HUB_OFFLINE", "1")
        base, tok = tiny_char_model(["이순신은 조선의 장군이다. 서울 부산"])
        src = tmp_path_factory.mktemp("base") / "base"
        base.save_pretrained(src)
        tok.save_pretrained(src)
        cache_repo(cache, BASE_ID, src)
        yield cache


@pytest.fixture(scope="module")
def trained(hub_cache, tmp_path_factory):
    """A `kner run` folder: train/ (a LoRA adapter on the Hub base), report/report.json, config.yaml."""
    from peft import LoraConfig

    from kner.model.compat import get_peft_model
    from kner.model.loading import load_model, load_tokenizer

    run_dir = tmp_path_factory.mktemp("run")
    out = run_dir / "train"
    spec = LoadSpec(model=BASE_ID, quantize_4bit=False, compute_dtype="fp32")
    torch.manual_seed(0)
    peft_model = get_peft_model(
        load_model(spec), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )
    peft_model.save_pretrained(out / "adapter")
    load_tokenizer(BASE_ID).save_pretrained(out / "tokenizer")
    ModelManifest(load=spec, method="lora", scheme=load_scheme("spacy19")).save(out)
    (run_dir / "config.yaml").write_text("data:\n  dataset: klue\npredict:\n  name: qwen-lora\n", encoding="utf-8")
    (run_dir / "report").mkdir()
    report = {"title": "t", "systems": {"qwen-lora": METRICS, "spacy": {**METRICS, "micro": {"f1": 0.1}}}}
    (run_dir / "report" / "report.json").write_text(json.dumps(report), encoding="utf-8")
    return out


def outputs(ex) -> list[list[str]]:
    return [p.outputs for p in ex.predict(TEXTS)]


def test_export_hub_card_holds_the_scores_and_the_folder_predicts_the_same(trained, tmp_path):
    from huggingface_hub import ModelCard

    from kner.inference import Extractor

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(METRICS), encoding="utf-8")
    hub_dir = tmp_path / "hub"
    res = run_kner(
        "export", "--hub", hub_dir, trained, "--metrics", metrics, "--license", "apache-2.0",
        "--dataset", "klue/klue", "--dataset-name", "KLUE-NER dev", "--split", "validation", "--repo", "me/tiny",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"Hub folder written to {hub_dir} (adapter, " in res.output
    assert "micro F1 57.69" in res.output and "kner push" in res.output
    names = sorted(p.name for p in hub_dir.iterdir())
    assert {"README.md", "kner.json", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= set(
        names
    )
    assert not [n for n in names if n.endswith((".bin", ".pt"))]

    card = ModelCard.load(hub_dir / "README.md")
    d = card.data
    assert d.language == ["ko"] and d.license == "apache-2.0" and d.base_model == BASE_ID
    assert d.datasets == ["klue/klue"] and d.library_name == "peft" and d.model_name == "tiny"
    assert {"kner", "ner", "korean", "lora"} <= set(d.tags)
    results = d.eval_results
    assert {(r.task_type, r.dataset_type, r.dataset_name, r.dataset_split) for r in results} == {
        ("token-classification", "klue/klue", "KLUE-NER dev", "validation")
    }
    micro = {r.metric_type: r.metric_value for r in results if r.metric_name.startswith("micro")}
    assert micro == {k: METRICS["micro"][k] for k in ("precision", "recall", "f1")}
    per_label = {r.metric_config: r.metric_value for r in results if r.metric_config}
    assert per_label == {lab: s["f1"] for lab, s in METRICS["per_label"].items()}
    assert 'Extractor.load("me/tiny")' in card.text and "| PERSON | 75.00 | 60.00 | 66.67 | 5 |" in card.text

    man = ModelManifest.load_from(hub_dir)
    assert (man.adapter_dir, man.model_dir, man.tokenizer_dir, man.load.model) == (".", None, ".", BASE_ID)
    a = Extractor.load(trained, max_new_tokens=8)
    b = Extractor.load(hub_dir, max_new_tokens=8)
    assert type(b.model).__name__ == "PeftModel"
    assert outputs(b) == outputs(a)
    # peft's own layout: peft alone loads it on its base. (peft 0.21.2 itself reads transformers 5.24's
    # deprecated `is_gradient_checkpointing`: a warning about peft, not about kner's export.)
    import warnings

    from peft import AutoPeftModelForCausalLM

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        assert AutoPeftModelForCausalLM.from_pretrained(str(hub_dir)).peft_config["default"].r == 4


def test_export_hub_finds_the_run_report_and_names_the_run_dataset(trained, tmp_path):
    from huggingface_hub import ModelCard

    hub_dir = tmp_path / "hub"
    res = run_kner("export", "--hub", hub_dir, trained)
    assert res.exit_code == 0, res.output
    assert f"card scores from {trained.parent / 'report' / 'report.json'}: micro F1 57.69" in res.output
    assert "warning: the card's licence is 'other': pass --license" in res.output
    d = ModelCard.load(hub_dir / "README.md").data
    assert d.datasets == ["klue/klue"] and d.license == "other"
    f1 = [r.metric_value for r in d.eval_results if r.metric_name == "micro F1"]
    assert f1 == [METRICS["micro"]["f1"]]  # the run's system, not spacy's 0.1
    assert {r.dataset_name for r in d.eval_results} == {"klue"}
    # Not empty: refused without --overwrite.
    err = one_line_error(run_kner("export", "--hub", hub_dir, trained))
    assert err == f"error: {hub_dir} is not empty; pass --overwrite to replace it"


def test_export_hub_merge_writes_full_weights(trained, tmp_path):
    from huggingface_hub import ModelCard

    from kner.inference import Extractor

    hub_dir = tmp_path / "merged"
    res = run_kner("export", "--hub", hub_dir, "--merge", trained, "--dtype", "fp32", "--license", "mit")
    assert res.exit_code == 0, res.output
    assert "(merged, " in res.output and "check on " in res.output
    names = {p.name for p in hub_dir.iterdir()}
    assert {"config.json", "model.safetensors", "kner.json", "README.md", "tokenizer.json"} <= names
    assert "adapter_config.json" not in names and not (tmp_path / ".merged.merging").exists()
    assert ModelCard.load(hub_dir / "README.md").data.library_name == "transformers"
    ex = Extractor.load(hub_dir, max_new_tokens=8)
    assert type(ex.model).__name__ != "PeftModel"
    assert outputs(ex) == outputs(Extractor.load(trained, max_new_tokens=8))  # fp32 merge: same greedy choices


def test_a_repo_id_loads_from_the_cache_and_an_uncached_one_is_one_line(hub_cache, trained, tmp_path):
    from kner.inference import Extractor

    hub_dir = tmp_path / "hub"
    assert run_kner("export", "--hub", hub_dir, trained).exit_code == 0
    cache_repo(hub_cache, "me/kner-tiny", hub_dir)
    from_hub = Extractor.load("me/kner-tiny", max_new_tokens=8)
    assert outputs(from_hub) == outputs(Extractor.load(trained, max_new_tokens=8))

    src = tmp_path / "in.txt"
    src.write_text(TEXTS[0] + "\n", encoding="utf-8")
    res = run_kner("predict", "-m", "me/kner-tiny", "-i", src, "-o", tmp_path / "p.jsonl", "--max-new-tokens", 8,
                   "--no-progress")  # fmt: skip
    assert res.exit_code == 0, res.output

    err = one_line_error(run_kner("predict", "-m", "me/missing", "-i", src, "-o", tmp_path / "q.jsonl"))
    assert err == (
        f"error: me/missing: not in the Hugging Face cache ({hub_cache}) and offline mode is on (HF_HUB_OFFLINE=1); "
        f"download it once with network access (`hf download me/missing`) or pass a local folder"
    )
    assert not (tmp_path / "q.jsonl").exists()


def test_a_repo_cannot_switch_on_remote_code(hub_cache, trained, tmp_path):
    from kner.inference import Extractor

    folder = tmp_path / "repo"
    shutil.copytree(trained, folder)
    man = ModelManifest.load_from(folder)
    man.load.trust_remote_code = True
    man.save(folder)
    cache_repo(hub_cache, "me/remote-code", folder)
    with pytest.raises(KnerError, match=r"^me/remote-code: its kner.json asks to run the repo's own Python code"):
        Extractor.load("me/remote-code")


def test_pickled_weights_need_allow_pickle(hub_cache, trained, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from kner.inference import Extractor

    # An adapter saved the old way: adapter_model.bin only.
    folder = tmp_path / "bin_adapter"
    shutil.copytree(trained, folder)
    st = folder / "adapter" / "adapter_model.safetensors"
    torch.save(load_file(st), folder / "adapter" / "adapter_model.bin")
    st.unlink()
    with pytest.raises(KnerError) as err:
        Extractor.load(folder)
    assert str(err.value) == (
        f"{folder / 'adapter' / 'adapter_model.bin'}: pickled weights, which can run arbitrary code when loaded; "
        f"kner loads safetensors only: pass --allow-pickle to load it if you trust its source"
    )
    assert outputs(Extractor.load(folder, allow_pickle=True, max_new_tokens=8)) == outputs(
        Extractor.load(trained, max_new_tokens=8)
    )
    cache_repo(hub_cache, "me/bin-adapter", folder)
    with pytest.raises(KnerError) as err:
        Extractor.load("me/bin-adapter")
    assert str(err.value) == (
        "me/bin-adapter: no safetensors weights (pickled ones are not downloaded); "
        "pass --allow-pickle to load it if you trust its source"
    )
    assert Extractor.load("me/bin-adapter", allow_pickle=True).model is not None

    # A base model with pytorch_model.bin only, through the CLI.
    base = tmp_path / "bin_base"
    shutil.copytree(next((hub_cache / "models--kner-test--tiny-base" / "snapshots").iterdir()), base)
    st = base / "model.safetensors"
    torch.save(load_file(st), base / "pytorch_model.bin")
    st.unlink()
    src = tmp_path / "in.txt"
    src.write_text(TEXTS[0] + "\n", encoding="utf-8")
    args = ["predict", "-m", base, "-i", src, "-o", tmp_path / "p.jsonl", "--max-new-tokens", 4, "--no-progress",
            "--no-quantize"]  # fmt: skip
    err_line = one_line_error(run_kner(*args))
    assert err_line.startswith(f"error: {base / 'pytorch_model.bin'}: pickled weights") and "--allow-pickle" in err_line
    res = run_kner(*args, "--allow-pickle")
    assert res.exit_code == 0, res.output
    # kner serve: the same refusal, and the same way past it (the server itself is not started here).
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(kw["port"]))
    sargs = ["serve", "-m", base, "--max-new-tokens", 4, "--no-quantize", "--port", 0]
    res = run_kner(*sargs)
    assert res.exit_code != 0 and res.output.strip().splitlines()[-1] == err_line  # after "loading ..."
    assert not served
    res = run_kner(*sargs, "--allow-pickle")
    assert res.exit_code == 0, res.output
    assert served == [0]


def test_push_offline_is_one_line(trained, tmp_path):
    hub_dir = tmp_path / "hub"
    assert run_kner("export", "--hub", hub_dir, trained).exit_code == 0
    err = one_line_error(run_kner("push", hub_dir, "--repo", "me/tiny"))
    assert err == "error: cannot push to me/tiny: offline mode is on (HF_HUB_OFFLINE=1); unset it and run again"
    err = one_line_error(run_kner("push", trained, "--repo", "me/tiny"))
    assert err == f"error: {trained}: not a Hub folder (no README.md); write one with `kner export --hub`"
