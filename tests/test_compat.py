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
