"""``kner predict`` and ``kner export --merge`` on an output folder built here (tiny model, random adapter)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import run_app
from kner.data.example import Entity, Example, read_jsonl, write_jsonl
from kner.data.schemes import load_scheme
from kner.errors import KnerError
from kner.model.artifacts import ModelManifest
from kner.model.loading import LoadSpec, build_model_from_config, load_tokenizer, save_pretrained_dir, tiny_config
from kner.model.prompt import parse_tags
from tiny_llama import tiny_llama_dir

# A LLaMA-2-style tokenizer folder built from the fixture corpus (test_inference_sharding imports it too).
LLAMA2 = tiny_llama_dir()


def write_qlora_folder(root: Path) -> Path:
    """base/ (tiny LLaMA, fp32), out/ (kner.json + adapter/ + tokenizer/): what `kner train` writes."""
    from peft import LoraConfig

    from kner.model.compat import get_peft_model

    tok = load_tokenizer(str(LLAMA2))
    torch.manual_seed(0)
    # hidden >= 64: bitsandbytes' CPU 4-bit kernels need whole 64-element quantization blocks.
    model = build_model_from_config(tiny_config("llama", vocab_size=len(tok), hidden=64, intermediate=128, layers=1))
    save_pretrained_dir(model, tok, root / "base")
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )  # random B: the adapter matters
    out = root / "out"
    peft_model.save_pretrained(out / "adapter")
    tok.save_pretrained(out / "tokenizer")
    ModelManifest(
        load=LoadSpec(model=str(root / "base"), quantize_4bit=True), method="qlora", scheme=load_scheme("spacy19")
    ).save(out)
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("kner_infer")
    write_qlora_folder(root)
    return root


def test_predict_plain_text_keeps_every_line(folders, tmp_path):
    lines = ["이순신은 조선의 장군이다.", "", "서울 <특별시> 종로구", "   ", "오에 겐자부로"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    dst = tmp_path / "preds.jsonl"
    res = run_app(
        "predict", "--model", folders / "out", "--input", src, "--output", dst, "--max-new-tokens", 12, "--no-progress"
    )
    assert res.exit_code == 0, res.output
    preds = read_jsonl(dst)
    assert [p.id for p in preds] == ["1", "2", "3", "4", "5"] and [p.text for p in preds] == lines
    assert preds[1].entities == [] and preds[3].entities == []
    for p in preds:
        for e in p.entities:
            assert p.text[e.start : e.end] == e.text
    assert "texts" in res.output and "5" in res.output


def test_predict_jsonl_and_dataset_format(folders, tmp_path, datasets_dir):
    gold = [
        Example("a", "이순신은 장군이다.", [Entity(0, 3, "PER", "이순신")], {"doc": "d1"}),
        Example("b", "서울", [], {}),
    ]
    src = tmp_path / "gold.jsonl"
    write_jsonl(src, gold)
    dst = tmp_path / "p.jsonl"
    res = run_app("predict", "-m", folders / "out", "-i", src, "-o", dst, "--max-new-tokens", 8, "--no-progress")
    assert res.exit_code == 0, res.output
    preds = read_jsonl(dst)
    assert [(p.id, p.text, p.meta) for p in preds] == [(g.id, g.text, g.meta) for g in gold]

    from kner.data.readers import read_dataset

    kmou_file = sorted((datasets_dir / "kmou" / "corpus").glob("*.txt"))[0]
    n = len(read_dataset("kmou", kmou_file).examples)
    dst2 = tmp_path / "k.jsonl"
    res = run_app(
        "predict",
        "-m",
        folders / "out",
        "-i",
        kmou_file,
        "-o",
        dst2,
        "--format",
        "kmou",
        "--max-new-tokens",
        4,
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    assert len(read_jsonl(dst2)) == n


def test_base_model_plus_adapter_equals_output_folder(folders):
    from kner.inference import Extractor

    texts = ["이순신은 조선의 장군이다.", "서울 종로구"]
    a = Extractor.load(folders / "out", constrained=False, max_new_tokens=10)
    b = Extractor.load(
        folders / "base",
        adapter=folders / "out" / "adapter",
        scheme="spacy19",
        quantize_4bit=True,
        constrained=False,
        max_new_tokens=10,
    )
    assert a.predict(texts)[0].outputs == b.predict(texts)[0].outputs
    assert type(a.model).__name__ == "PeftModel"
    with pytest.raises(KnerError):
        Extractor.load(folders / "out", scheme="kmou")  # trained on spacy19
    with pytest.raises(KnerError):
        Extractor.load(folders / "base", adapter=folders / "missing")


def test_cli_errors_are_user_errors(folders, tmp_path):
    res = run_app("predict", "-m", tmp_path / "nope", "-i", tmp_path / "x.txt", "-o", tmp_path / "o.jsonl")
    assert isinstance(res.exception, KnerError)
    src = tmp_path / "in.txt"
    src.write_text("이순신\n", encoding="utf-8")
    res = run_app("predict", "-m", folders / "out", "-i", src, "-o", tmp_path / "o.jsonl", "--max-memory", "lots")
    assert isinstance(res.exception, KnerError)


@pytest.mark.slow
def test_export_merge_measures_the_change(folders, tmp_path):
    from kner.inference import Extractor
    from kner.inference.export import export_merged

    merged = tmp_path / "merged"
    res = run_app("export", "--merge", folders / "out", "-o", merged)
    assert res.exit_code == 0, res.output
    man = json.loads((merged / "kner.json").read_text(encoding="utf-8"))
    assert man["model_dir"] == "model" and man["adapter_dir"] is None and man["load"]["quantize_4bit"] is False
    check16 = man["extra"]["merged"]["check"]
    assert check16["positions"] > 100 and check16["reference"] == "4-bit base + adapter"
    # Random adapter on a 4-bit base: merging into the 16-bit base changes greedy choices, and says so.
    assert check16["differing"] > 0 and "warning" in res.output
    assert list((merged / "model").glob("*.safetensors"))

    rep = export_merged(folders / "out", tmp_path / "deq", into="dequantized")
    assert rep["check"]["differ_share"] < check16["differ_share"]
    assert rep["check"]["max_logit_diff"] < check16["max_logit_diff"]

    ex = Extractor.load(merged, max_new_tokens=8)
    assert type(ex.model).__name__ != "PeftModel"
    pred = ex.predict(["이순신은 조선의 장군이다."])[0]
    assert parse_tags(pred.outputs[0], "이순신은 조선의 장군이다.", ex.scheme).ok
    with pytest.raises(KnerError):
        export_merged(folders / "out", merged)  # not empty, no overwrite
    with pytest.raises(KnerError):
        export_merged(merged, tmp_path / "again")  # nothing to merge


def test_max_memory_units_mean_what_kner_plan_reads():
    from kner.errors import ConfigError
    from kner.model.shape import parse_gib

    assert parse_gib("15") == 15.0 and parse_gib("15GiB") == 15.0
    assert parse_gib("16GB") == pytest.approx(16e9 / 2**30)  # GB is 10^9 bytes, as for --gpu-memory
    assert parse_gib(None) is None
    with pytest.raises(ConfigError, match="--max-memory takes GiB"):
        parse_gib("1.2.3")
