"""kner.model.compat: the one adapter over transformers/peft/bitsandbytes internals."""

from __future__ import annotations

import inspect
import logging

import torch

from kner.model import compat
from kner.model.loading import build_model_from_config, tiny_config


def test_cache_argument_follows_the_model_and_the_library():
    import transformers
    from transformers.masking_utils import create_causal_mask

    lib = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
    model = build_model_from_config(tiny_config("llama", vocab_size=64, hidden=32, layers=1, heads=2, kv_heads=1))
    cache = compat.dynamic_cache()
    kw = compat.cache_kwargs(model, cache)
    assert list(kw) == [lib] and kw[lib] is cache, transformers.__version__

    class Wrapper(torch.nn.Module):  # forwards **kwargs: the library's name
        def forward(self, input_ids=None, **kw):
            return model(input_ids=input_ids, **kw)

    class OldRemoteCode(torch.nn.Module):  # written for an older transformers
        def forward(self, input_ids=None, past_key_values=None):
            return None

    assert list(compat.cache_kwargs(Wrapper(), cache)) == [lib]
    assert list(compat.cache_kwargs(OldRemoteCode(), cache)) == ["past_key_values"]
    # The name chosen is the one the model reads: the cache fills (and no deprecation is raised).
    Wrapper()(input_ids=torch.tensor([[1, 2, 3]]), use_cache=True, **kw)
    assert cache.get_seq_length() == 3


def test_bitsandbytes_kernels_hint_is_dropped_only_without_cuda(monkeypatch, caplog):
    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    hint = (
        "Failed to load CPU gemm_4bit_forward from kernels-community: x. "
        "Please make sure you already `pip install kernels`"
    )
    with caplog.at_level(logging.WARNING, logger=log.name):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        log.warning(hint)
        log.warning("something else")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        log.warning(hint)
    assert [r.getMessage()[:14] for r in caplog.records] == ["something else", "Failed to load"]


def test_plain_rmsnorms_are_exactly_llamas():
    """The classes lean_rmsnorms switches must compute Llama's formula: a release that changes one fails here."""
    import importlib

    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    ref = inspect.getsource(LlamaRMSNorm.forward)
    found = 0
    for name in compat.PLAIN_RMSNORMS:
        arch = name[: -len("RMSNorm")].lower()
        try:
            mod = importlib.import_module(f"transformers.models.{arch}.modeling_{arch}")
        except ImportError:
            continue
        cls = getattr(mod, name, None)
        if cls is None:
            continue
        found += 1
        assert inspect.getsource(cls.forward) == ref, name
    assert found >= 5


def _rms_layer_out(model, x):
    layer = compat.decoder_layers(model)[0]
    pos = torch.arange(x.shape[1])[None]
    rot = model.model.rotary_emb(x, pos)
    out = layer(x, attention_mask=None, position_ids=pos, position_embeddings=rot)
    return out[0] if isinstance(out, tuple) else out


def test_lean_rmsnorms_give_the_same_values_and_gradients():
    torch.manual_seed(0)
    model = build_model_from_config(tiny_config("llama", vocab_size=64, hidden=64, layers=1, heads=4, kv_heads=2))
    for m in model.modules():  # non-trivial weights, fp32 (as prepare_model_for_kbit_training leaves them)
        if type(m).__name__ == "LlamaRMSNorm":
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(2, 7, 64, requires_grad=True)
    ref = _rms_layer_out(model, x)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    assert compat.lean_rmsnorms(model) == 3  # two in the layer, the final one
    out = _rms_layer_out(model, x)
    (g,) = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)
    # In half precision the output stays half (transformers' returns fp32 with an fp32 weight).
    norm = model.model.norm
    assert norm(torch.randn(3, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16
    gemma = build_model_from_config(tiny_config("gemma", vocab_size=64, hidden=64, layers=1, heads=4, kv_heads=2))
    assert compat.lean_rmsnorms(gemma) == 0  # (1 + weight): not Llama's formula, left alone
