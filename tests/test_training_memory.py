"""The memory planner and the training config."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers import run_app
from kner.errors import ConfigError, KnerError
from kner.model.shape import GiB, ModelShape, parse_bytes
from kner.training.config import TrainConfig
from kner.training.memory import estimate, load_config, plan_memory
from test_training_support import LLAMA_TOK


@pytest.fixture(scope="module")
def llama7b():
    if not LLAMA_TOK.is_dir():
        pytest.skip("LLaMA-2 config not found")
    return ModelShape.from_config(load_config(str(LLAMA_TOK)))


def test_shapes_from_config_alone(llama7b):
    assert llama7b.total_params == pytest.approx(6.74e9, rel=0.005)
    assert llama7b.lora_params(16) == 39_976_960  # r=16 on all 7 linear layers x 32
    assert llama7b.lora_params(8, ["q_proj", "v_proj"]) == 4_194_304


def test_estimate_grows_with_tokens_and_parts_add_up(llama7b):
    a, b = estimate(llama7b, 1024), estimate(llama7b, 2048)
    assert b.allocator_peak > a.allocator_peak
    assert a.device_total == a.allocator_peak + a.components["cuda_context"] + a.paged
    # 4-bit weights: 0.5 byte + about 1/64 of quantization constants per weight
    w = a.components["weights"]
    assert 3.4 * GiB < w < 3.8 * GiB
    assert estimate(llama7b, 1024, double_quant=False).components["weights"] > w
    # paged optimizer states live outside the allocator; plain AdamW's inside
    assert a.paged > 0 and "optimizer" not in a.components
    assert estimate(llama7b, 1024, optimizer="adamw").components["optimizer"] == 8 * llama7b.lora_params(16)


# Measured on the GPU benchmark (H100 in T4 emulation: fp16, no flash attention,
# 15 GiB cap; docs/training.md): torch.cuda.max_memory_reserved in GiB at each budget.
MEASURED = {
    ("packed", 1024, 1024): 5.574,
    ("packed", 2048, 2048): 6.572,
    ("packed", 4096, 4096): 8.729,
    ("padded", 1024, 1024): 5.516,
    ("padded", 2048, 2048): 6.555,
    ("padded", 4096, 4096): 9.279,
    # Not used for fitting (second session, H200, same emulation): full micro-batches of
    # 52 examples at the new default row length, and the 4096 point re-measured.
    ("packed", 6144, 2560): 12.023,
    ("packed", 8192, 2560): 12.553,
    ("packed", 4096, 1024): 9.342,
}


@pytest.mark.parametrize("layout,tokens,rows", sorted(MEASURED))
def test_plan_is_within_10_percent_of_the_measured_peak(llama7b, layout, tokens, rows):
    e = estimate(llama7b, tokens, layout=layout, answer_fraction=0.259, row_tokens=rows)
    assert e.allocator_peak / GiB == pytest.approx(MEASURED[(layout, tokens, rows)], rel=0.10)


def test_plan_chooses_the_largest_budget_that_fits(llama7b):
    p15 = plan_memory(llama7b, 15 * GiB, max_budget=8192, min_tokens=716)
    p8 = plan_memory(llama7b, 8 * GiB, max_budget=8192, min_tokens=716)
    assert p15.fits and p8.fits
    assert p15.budget > p8.budget >= 716
    assert p8.estimate.device_total <= 8 * GiB
    nxt = estimate(llama7b, p8.budget + 256)
    assert nxt.device_total > 8 * GiB * 0.95
    checked = plan_memory(llama7b, 15 * GiB, budget=1024)
    assert checked.budget == 1024


def test_plan_refuses_when_nothing_fits(llama7b):
    with pytest.raises(KnerError, match="GiB"):
        plan_memory(llama7b, 4 * GiB, min_tokens=716)
    with pytest.raises(KnerError):
        plan_memory(llama7b, 15 * GiB, min_tokens=716, method="full")


def test_kner_plan_cli(llama7b):
    res = run_app("plan", "--model", str(LLAMA_TOK), "--gpu-memory", "15GiB", "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["budget"] >= 1024 and d["device_total_bytes"] <= 15 * GiB
    res = run_app("plan", "--model", str(LLAMA_TOK), "--gpu-memory", "15GiB", "--budget", "1024")
    assert res.exit_code == 0 and "1024" in res.output and "fits" in res.output


def test_parse_bytes():
    assert parse_bytes("15GiB") == 15 * 2**30
    assert parse_bytes("16 GB") == 16 * 10**9
    assert parse_bytes(123) == 123
    with pytest.raises(ConfigError):
        parse_bytes("lots")


def test_config_yaml_then_flags(tmp_path):
    p = tmp_path / "train.yaml"
    p.write_text(yaml.safe_dump({"model": "m", "lora_r": 8, "lr": 1e-4, "target_modules": ["q_proj", "v_proj"]}))
    cfg = TrainConfig.load(p, lora_r=32, lr=None).validate()
    assert (cfg.model, cfg.lora_r, cfg.lr, cfg.target_modules) == ("m", 32, 1e-4, ["q_proj", "v_proj"])
    saved = cfg.save(tmp_path / "out.yaml")
    assert TrainConfig.load(saved) == cfg


@pytest.mark.parametrize(
    "bad", [{"lora_rank": 8}, {"method": "qlorax"}, {"layout": "zigzag"}, {"lr": -1}, {"gpu_memory": "many"}]
)
def test_config_rejects_bad_settings(tmp_path, bad):
    p = tmp_path / "train.yaml"
    p.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError):
        TrainConfig.load(p).validate()


def test_a_config_asking_for_prefix_kv_says_it_was_removed(tmp_path):
    p = tmp_path / "train.yaml"
    p.write_text("model: m\nlayout: prefix_kv\n")
    with pytest.raises(ConfigError, match=r"train\.yaml:2: layout: prefix_kv was removed .*; use packed$"):
        TrainConfig.load(p)


def test_config_target_modules_from_a_flag():
    cfg = TrainConfig(target_modules="q_proj, v_proj").validate()
    assert cfg.target_modules == ["q_proj", "v_proj"]
    assert TrainConfig().validate().target_modules == "all-linear"


def test_the_token_budget_is_decided_in_one_place():
    from types import SimpleNamespace

    from kner.training.setup import token_budget

    cfg, plan = TrainConfig(), SimpleNamespace(budget=4096)
    assert token_budget(cfg, plan, 700, on_gpu=True) == 4096
    assert token_budget(cfg, plan, 700, on_gpu=False) == 1024  # CPU: short rows
    assert token_budget(cfg, plan, 1500, on_gpu=False) == 1500  # never below the longest example
    assert token_budget(cfg, None, 700, on_gpu=True) == 8192  # no plan: max_batch_tokens
    assert token_budget(cfg, plan, 700, on_gpu=True, checkpoint_budget=2048) == 2048  # resume: the same cut
    assert token_budget(TrainConfig(batch_tokens=3000), plan, 700, on_gpu=True, checkpoint_budget=2048) == 3000
    with pytest.raises(ConfigError, match=r"batch_tokens=600 is smaller than the longest example \(700 tokens"):
        token_budget(TrainConfig(batch_tokens=600), None, 700, on_gpu=True)


def test_offloaded_layer_inputs_leave_the_device_estimate(llama7b):
    kept = estimate(llama7b, 2048, offload_activations=False).components["activations"]
    off = estimate(llama7b, 2048, offload_activations=True).components["activations"]
    assert kept - off == 2048 * llama7b.layers * llama7b.hidden * 2  # fp16 layer inputs, 32 layers
    assert estimate(llama7b, 2048, offload_activations=True, on_gpu=False).components["activations"] == kept


def _saved_bytes_per_token_and_unit(dropout: float, lean: bool) -> float:
    """What one LoRA'd decoder layer keeps for its backward (the recompute under checkpointing)."""
    import torch
    from peft import LoraConfig

    from kner.model import compat
    from kner.model.loading import build_model_from_config, tiny_config

    torch.manual_seed(0)
    d, tokens = 128, 64
    model = build_model_from_config(tiny_config("llama", vocab_size=64, hidden=d, layers=1, heads=4, kv_heads=4))
    model.requires_grad_(False)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")
    model = compat.get_peft_model(model, lora).train()  # peft's own warns on transformers 5.24
    if lean:
        compat.lean_rmsnorms(model)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    base = model.get_base_model().model
    x = torch.randn(1, tokens, d, requires_grad=True)
    pos = torch.arange(tokens)[None]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        base.layers[0](x, attention_mask=None, position_ids=pos, position_embeddings=base.rotary_emb(x, pos))
    return sum(seen.values()) / tokens / d


def test_lora_dropout_keeps_a_copy_of_every_lora_input():
    """Why lora_dropout defaults to 0: dropout keeps a masked copy of every projection's input."""
    assert TrainConfig().lora_dropout == 0.0
    with_dropout = _saved_bytes_per_token_and_unit(0.05, lean=False)
    without = _saved_bytes_per_token_and_unit(0.0, lean=False)
    assert with_dropout > 1.4 * without
