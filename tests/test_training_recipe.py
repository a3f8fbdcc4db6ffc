"""The training loop on CPU: OOM split-retry, exact resume, the output folder, the CLI.

A tiny random LLaMA (hidden 64, 2 layers, the LLaMA-2-style tokenizer of tiny_llama.py) goes through
the real bitsandbytes NF4 path; KMOU sentences with the kmou scheme.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import run_app
from kner.data.example import write_jsonl
from kner.errors import DataError
from kner.model.loading import LoadSpec, build_model_from_config, load_model, tiny_config
from kner.training.config import TrainConfig
from kner.training.recipe import train
from test_training_support import kmou_examples, llama_tokenizer, tiny_model_dir


@pytest.fixture(scope="module")
def data():
    exs = [e for e in kmou_examples(4) if len(e.text) < 90]
    assert len(exs) >= 26
    return exs[:24], exs[24:26]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("model"))


def _cfg(base_dir, out, **kw) -> TrainConfig:
    d = dict(
        model=str(base_dir),
        scheme="kmou",
        output=str(out),
        examples_per_step=4,
        max_steps=6,
        batch_tokens=1100,
        row_tokens=700,
        lr=5e-3,
        save_every=2,
        progress=False,
        tensorboard=False,
        seed=7,
    )
    d.update(kw)
    return TrainConfig(**d)


def _losses(out: Path) -> dict[int, float]:
    recs = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def _log(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference_run(base_dir, data, tmp_path_factory):
    """Six uninterrupted steps: the reference for the resume and OOM tests."""
    out = tmp_path_factory.mktemp("ref")
    train(_cfg(base_dir, out), train_examples=data[0], dev_examples=data[1])
    return out


def test_output_folder_holds_what_inference_needs(reference_run):
    from kner.model.artifacts import ModelManifest

    out = reference_run
    m = ModelManifest.load_from(out)
    assert m.method == "qlora" and m.load.quantize_4bit and m.scheme.name == "kmou"
    assert m.adapter_dir == "adapter" and (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "tokenizer" / "tokenizer_config.json").is_file()
    assert m.extra["prefix_tokens"] > 100 and m.extra["eos_token_id"] == 2
    cfg = TrainConfig.load(out / "train_config.yaml")
    assert cfg.scheme == "kmou" and cfg.max_steps == 6
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 6 and metrics["dev"]["dev_loss"] > 0
    assert len(_losses(out)) == 6
    # The adapter loads back onto the 4-bit base and changes its output.
    from kner.model.compat import load_adapter

    base = load_model(m.load)
    model = load_adapter(base, out / "adapter")
    assert any("lora" in n for n, _ in model.named_parameters())


class _Killed(Exception):
    pass


def _kill_after(model, n_calls: int):
    """Raise inside the n-th decoder forward: a run killed in the middle of a step.

    The hook sits on a module inside the first layer: newer transformers checkpoint a
    layer's ``forward``, so hooks on the layer itself no longer run in the replay."""
    calls = {"n": 0}

    def hook(mod, args):
        calls["n"] += 1
        if calls["n"] == n_calls:
            raise _Killed()

    return model.model.layers[0].mlp.register_forward_pre_hook(hook)


def test_killed_and_resumed_run_repeats_the_losses(base_dir, data, reference_run, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(base_dir, out)
    model = load_model(LoadSpec(model=str(base_dir)))
    # Each micro-batch runs the layer twice (forward, then its replay in backward): kill in
    # the first forward of step 5, after the checkpoint of step 4.
    mbs = {r["step"]: r["micro_batches"] for r in _log(reference_run) if "loss" in r}
    _kill_after(model, 2 * sum(mbs[s] for s in range(1, 5)) + 1)
    with pytest.raises(_Killed):
        train(cfg, model=model, tokenizer=llama_tokenizer(), train_examples=data[0], dev_examples=data[1])
    assert max(_losses(out)) == 4
    train(cfg.replace(resume=True), train_examples=data[0], dev_examples=data[1])
    ref, got = _losses(reference_run), _losses(out)
    assert sorted(got) == list(range(1, 7))
    for step in ref:
        assert got[step] == pytest.approx(ref[step], abs=1e-6), step
    assert any(r.get("event") == "resume" for r in _log(out))


def test_oom_is_retried_on_split_micro_batches_with_the_same_gradient(base_dir, data, tmp_path):
    """Inject OOMs: in the forward of long rows, and once in a backward replay. Same losses, same weights.

    Without LoRA dropout: a split micro-batch draws different dropout masks, which is
    noise, not a different gradient."""
    cfg = _cfg(base_dir, tmp_path / "ref", save_every=0, max_steps=3, lora_dropout=0.0)
    reference = train(cfg, train_examples=data[0])
    model = load_model(LoadSpec(model=str(base_dir)))
    state = {"armed": None, "fired": 0}

    def hook(mod, args):
        n = args[0].shape[0] * args[0].shape[1]
        if n > 600:  # "memory" holds at most 600 tokens
            state["fired"] += 1
            raise torch.OutOfMemoryError("injected: CUDA out of memory")
        if n > 400:  # one OOM in the backward replay of a checkpointed layer
            if state["armed"] == n and torch.is_grad_enabled() and state["fired"] < 100:
                state["armed"] = -1
                state["fired"] += 100
                raise torch.OutOfMemoryError("injected in backward")
            if state["armed"] is None:
                state["armed"] = n

    model.model.layers[1].mlp.register_forward_pre_hook(hook)  # inside the layer: runs in the replay too
    out = tmp_path / "oom"
    train(cfg.replace(output=str(out)), model=model, tokenizer=llama_tokenizer(), train_examples=data[0])
    recs = [r for r in _log(out) if "loss" in r]
    assert sum(r["oom_splits"] for r in recs) >= 2 and state["fired"] >= 100
    assert all(r["examples"] == 4 for r in recs)  # nothing skipped
    ref = _losses(reference)
    for r in recs:
        assert r["loss"] == pytest.approx(ref[r["step"]], abs=1e-5)
    from safetensors.torch import load_file

    a = load_file(str(reference / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), k


def test_model_object_api_saves_its_base_weights(data, tmp_path):
    """The quickstart path: a tiny model built in Python, quantized in place for QLoRA."""
    from kner.model.artifacts import ModelManifest

    tok = llama_tokenizer()
    model = build_model_from_config(tiny_config("llama", len(tok)), seed=3)
    out = train(
        TrainConfig(
            model="tiny-from-scratch",
            scheme="kmou",
            output=str(tmp_path / "o"),
            max_steps=2,
            examples_per_step=4,
            batch_tokens=1100,
            save_every=0,
            progress=False,
        ),
        model=model,
        tokenizer=tok,
        train_examples=data[0],
    )
    m = ModelManifest.load_from(out)
    assert m.model_dir == "base" and (out / "base" / "config.json").is_file()
    assert any(type(x).__name__ == "Linear4bit" for x in model.modules())


def test_full_fine_tuning_saves_full_weights(base_dir, data, tmp_path):
    from transformers import AutoModelForCausalLM

    out = train(
        _cfg(base_dir, tmp_path / "full", method="full", max_steps=2, save_every=0, optimizer="adamw"),
        train_examples=data[0],
    )
    assert (out / "model" / "config.json").is_file() and not (out / "adapter").exists()
    AutoModelForCausalLM.from_pretrained(out / "model")


def test_labels_outside_the_scheme_are_an_error_unless_mapped(base_dir, data, tmp_path):
    with pytest.raises(DataError, match="--map"):
        train(_cfg(base_dir, tmp_path / "x", scheme="spacy19", max_steps=1), train_examples=data[0])
    out = train(
        _cfg(base_dir, tmp_path / "y", scheme="spacy19", map="kmou", max_steps=1, save_every=0), train_examples=data[0]
    )
    assert (out / "kner.json").is_file()


def test_kner_train_cli(base_dir, data, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", data[0][:8])
    (tmp_path / "train.yaml").write_text(f"model: {base_dir}\nscheme: kmou\nmax_steps: 5\nexamples_per_step: 4\n")
    res = run_app(
        "train",
        "--config",
        str(tmp_path / "train.yaml"),
        "--train",
        str(tmp_path / "train.jsonl"),
        "--max-steps",
        "1",
        "--batch-tokens",
        "1100",
        "--output",
        str(tmp_path / "cli"),
        "--no-progress",
        "--save-every",
        "0",
    )
    assert res.exit_code == 0, res.output
    assert "model written to" in res.output
    assert TrainConfig.load(tmp_path / "cli" / "train_config.yaml").max_steps == 1


def test_diverged_training_stops_without_poisoning_the_weights(data, tmp_path):
    """bf16/fp32 have no loss scaler: a NaN step must be skipped, and a run stuck in NaN must stop."""
    from kner.errors import KnerError

    tok = llama_tokenizer()
    model = build_model_from_config(tiny_config("llama", len(tok)), seed=3)
    calls = {"n": 0}

    def poison(mod, args, output):  # from the 3rd forward on, the first layer outputs NaN
        calls["n"] += 1
        if calls["n"] >= 3:
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden * float("nan")
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
        return output

    model.model.layers[0].register_forward_hook(poison)
    cfg = TrainConfig(
        model="tiny",
        scheme="kmou",
        method="full",
        optimizer="adamw",
        compute_dtype="fp32",
        output=str(tmp_path / "o"),
        max_steps=20,
        examples_per_step=4,
        batch_tokens=4000,
        save_every=0,
        progress=False,
        tensorboard=False,
        max_nonfinite_steps=3,
    )
    with pytest.raises(KnerError, match="training diverged.*3 steps in a row"):
        train(cfg, model=model, tokenizer=tok, train_examples=data[0])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    steps = [r for r in _log(tmp_path / "o") if "loss" in r]
    assert len(steps) < 20 and not torch.isfinite(torch.tensor(steps[-1]["loss"]))
