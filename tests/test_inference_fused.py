"""The fused inference LoRA forward equals peft's, on the real bitsandbytes 4-bit path."""

from __future__ import annotations

import torch
from peft import LoraConfig

from kner.inference import Extractor
from kner.inference.fused import fuse_lora, unfuse_lora
from kner.model.compat import get_peft_model
from kner.model.loading import build_model_from_config, quantize_4bit_inplace, tiny_config
from test_inference_decoding import TEXTS, tag_bias, tok  # noqa: F401  (fixture)


def _qlora(seed=0, r=8):
    torch.manual_seed(seed)
    model = build_model_from_config(
        tiny_config("llama", vocab_size=32000, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2), seed=seed
    )
    quantize_4bit_inplace(model, torch.float32)
    model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=3 * r, lora_dropout=0.1, target_modules="all-linear", init_lora_weights=False)
    )
    return model.eval()


def test_fused_forward_matches_peft_and_leaves_training_alone():
    model = _qlora()
    ids = torch.randint(5, 32000, (3, 17))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    n = fuse_lora(model)
    assert n == 2 * 7  # every linear layer of both decoder layers
    with torch.no_grad():
        got = model(input_ids=ids).logits
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4)
    # With gradients on (training), peft's own forward runs: same loss, gradients reach LoRA.
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None for n_, p in model.named_parameters() if "lora_" in n_)
    model.eval()
    # Changing the adapter needs a re-fuse; unfuse restores peft's forward.
    assert unfuse_lora(model) == n
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(2)
        peft_out = model(input_ids=ids).logits
        fuse_lora(model)
        assert torch.allclose(model(input_ids=ids).logits, peft_out, rtol=1e-3, atol=2e-3)  # rounding, amplified


def test_extractor_outputs_are_the_same_fused_or_not(tok):  # noqa: F811
    outs = {}
    for fuse in (False, True):
        model = _qlora(seed=1)
        ex = Extractor(model, tok, "spacy19", max_new_tokens=24, fuse_lora=fuse)
        ex.config.logits_hook = tag_bias(ex)
        assert getattr(ex, "fused_layers", 0) == (14 if fuse else 0)
        outs[fuse] = [p.outputs for p in ex.predict(TEXTS * 3)]
    assert outs[True] == outs[False]
