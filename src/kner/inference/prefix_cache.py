"""Encode the shared instruction prefix once and reuse its key/value cache for every batch.

Every prompt is ``prefix + text + suffix`` and the prefix (instruction, one line
per label: ~280 LLaMA-2 tokens) is the same for all of them. Three ways to use
that, all giving the same greedy output (tested):

``shared`` (default where supported)
    The prefix K/V is stored once, shape ``(1, kv_heads, P, head_dim)``; each
    row's own K/V (suffix + generated tokens) lives in a preallocated buffer.
    A custom attention function attends to both parts without ever copying the
    prefix per row, so the prefix costs no memory per sequence and the batch
    can be ~2x larger (LLaMA-2-7B: 0.5 MiB of K/V per token; the prefix would be
    141 MiB per row).
``expand``
    The prefix K/V is expanded into a ``DynamicCache`` for the batch (one copy
    per row), then the model's own attention runs. Used for models whose
    attention the custom function does not cover (sliding windows, soft-capping).
``none``
    Full prompts, left-padded; the reference the other two are tested against.

Layout of a batch: ``[prefix][pad..pad][suffix tokens][generated]`` -- the left
padding sits inside the suffix part, so every row sees the same prefix at
positions ``0..P-1``; positions of real suffix tokens continue at ``P`` and
skip the pads; pads are masked out as keys (as queries they only see the
prefix, so no row of the softmax is empty).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

from kner.model import compat

ATTN_NAME = "kner_shared_prefix"
_active = threading.local()


class PrefixKV:
    """K/V of the prefix tokens, one ``(1, kv_heads, P, head_dim)`` pair per layer."""

    def __init__(self, ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]):
        self.ids = list(ids)
        self.layers = layers

    @property
    def length(self) -> int:
        return len(self.ids)

    @classmethod
    @torch.no_grad()
    def encode(cls, model, ids: list[int]) -> "PrefixKV":
        dev = _input_device(model)
        cache = compat.dynamic_cache()
        x = torch.tensor([ids], device=dev)
        model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=True, logits_to_keep=1,
              **compat.cache_kwargs(model, cache))
        layers = [(lay.keys.detach(), lay.values.detach()) for lay in cache.layers]
        return cls(ids, layers)

    def truncated(self, n: int) -> "PrefixKV":
        """The K/V of the first ``n`` tokens (causal: identical to encoding them alone)."""
        if n == self.length:
            return self
        return PrefixKV(self.ids[:n], [(k[:, :, :n], v[:, :, :n]) for k, v in self.layers])

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k, _ in self.layers)


def _input_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


def make_shared_cache(prefix: PrefixKV, batch: int, capacity: int):
    """A cache holding ``prefix`` once and room for ``capacity`` more tokens per row."""
    Cache, CacheLayerMixin = compat.cache_classes()

    class SharedPrefixLayer(CacheLayerMixin):
        is_compileable = False
        is_sliding = False

        def __init__(self, pk, pv):
            super().__init__()
            self.pk, self.pv = pk, pv
            b, h, _, d = pk.shape
            self.keys = pk.new_empty((batch, h, capacity, d))
            self.values = pv.new_empty((batch, h, capacity, d))
            self.length = 0           # committed suffix tokens
            self.rows = slice(None)   # rows written by the current forward (row-chunked prefill)
            self.is_initialized = True

        def lazy_initialization(self, key_states, value_states):
            pass

        def update(self, key_states, value_states, *args, **kwargs):
            q = key_states.shape[-2]
            t = self.length
            self.keys[self.rows, :, t:t + q] = key_states
            self.values[self.rows, :, t:t + q] = value_states
            return self.keys[self.rows, :, :t + q], self.values[self.rows, :, :t + q]

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.pk.shape[-2] + self.length + query_length, 0

        def get_seq_length(self) -> int:
            return self.pk.shape[-2] + self.length

        def get_max_length(self) -> int:
            return self.pk.shape[-2] + self.keys.shape[-2]

        def batch_select_indices(self, indices):
            self.keys = self.keys[indices]
            self.values = self.values[indices]

    class SharedPrefixCache(Cache):
        def __init__(self):
            super().__init__(layers=[SharedPrefixLayer(k, v) for k, v in prefix.layers])

        def set_rows(self, rows: slice) -> None:
            for lay in self.layers:
                lay.rows = rows

        def commit(self, n: int) -> None:
            for lay in self.layers:
                lay.length += n

        def select_rows(self, indices: torch.Tensor) -> None:
            for lay in self.layers:
                lay.batch_select_indices(indices)

    return SharedPrefixCache()


def make_expanded_cache(prefix: PrefixKV, batch: int):
    """A ``DynamicCache`` with the prefix copied into every row."""
    cache = compat.dynamic_cache()
    for i, (k, v) in enumerate(prefix.layers):
        cache.update(k.expand(batch, -1, -1, -1).contiguous(), v.expand(batch, -1, -1, -1).contiguous(), i)
    return cache


def shared_prefix_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                            softcap=None, **kwargs):
    """Attention over [shared prefix K/V] + [per-row K/V] without copying the prefix.

    ``query``: (B, H, q, D); ``key``/``value``: the rows' own K/V (B, KVH, t, D);
    ``attention_mask``: bool (B, 1, q, t), True where a row's query may see its own key.
    The prefix is visible to every query. Returns (B, q, H, D) like the built-in functions.
    """
    state = getattr(_active, "cache", None)
    if state is None:   # called outside our decode loop: behave like the implementation we replaced
        return _fallback()(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                           softcap=softcap, **kwargs)
    pk, pv = state.layers[module.layer_idx].pk, state.layers[module.layer_idx].pv
    b, h, q, d = query.shape
    kvh = key.shape[1]
    g = h // kvh
    p = pk.shape[-2]
    t = key.shape[-2]
    if scaling is None:
        scaling = d ** -0.5
    # Everything per kv head: query head kvh*g+j uses kv head kvh. Rows x (g*q) queries per kv head.
    qk = (query * scaling).reshape(b, kvh, g * q, d).transpose(0, 1).reshape(kvh, b * g * q, d).contiguous()
    sp = torch.bmm(qk, pk[0].transpose(1, 2))                          # prefix read once for all rows
    kt = key.transpose(0, 1)                                           # (kvh, b, t, d); the paged pool
    kt = kt if kt.is_contiguous() else kt.contiguous()                 # gathers it contiguous already
    ss = torch.bmm(qk.view(kvh * b, g * q, d), kt.view(kvh * b, t, d).transpose(1, 2))
    scores = torch.cat([sp.view(kvh, b, g * q, p), ss.view(kvh, b, g * q, t)], dim=-1).float()
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        m = attention_mask.transpose(0, 1)[:, :, None].expand(1, b, g, q, t).reshape(1, b, g * q, t)
        scores[..., p:].masked_fill_(~m, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.bmm(probs[..., :p].reshape(kvh, b * g * q, p), pv[0])
    vt = value.transpose(0, 1)
    vt = vt if vt.is_contiguous() else vt.contiguous()
    out += torch.bmm(probs[..., p:].reshape(kvh * b, g * q, t), vt.view(kvh * b, t, d)).view(kvh, b * g * q, d)
    out = out.view(kvh, b, g, q, d).permute(1, 3, 0, 2, 4).reshape(b, q, h, d)
    return out, None


_fallback_name = threading.local()


def _fallback():
    return compat.attention_function(getattr(_fallback_name, "value", None) or "sdpa")


def _configs(model):
    cfg = model.config
    out = [cfg]
    try:
        text = cfg.get_text_config(decoder=True)
        if text is not cfg:
            out.append(text)
    except (AttributeError, TypeError):
        pass
    return out


def supports_shared(model) -> bool:
    """Whether the custom attention is exact for this model (no sliding windows, no soft-capping)."""
    for cfg in _configs(model):
        if getattr(cfg, "use_sliding_window", False) and getattr(cfg, "sliding_window", None):
            return False
        if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
            return False
        if getattr(cfg, "attn_logit_softcapping", None):
            return False
        if getattr(cfg, "model_type", "") in ("mistral", "mixtral") and getattr(cfg, "sliding_window", None):
            # Windows longer than any prompt we build are harmless; shorter ones are not.
            if cfg.sliding_window < getattr(cfg, "max_position_embeddings", 0):
                return False
    return True


@contextmanager
def shared_prefix_attention_active(model, cache):
    """Route the model's attention through :func:`shared_prefix_attention` for ``cache``."""
    compat.register_attention(ATTN_NAME, shared_prefix_attention)
    cfgs = _configs(model)
    old = [compat.attention_implementation(c) for c in cfgs]
    _fallback_name.value = old[0] if old[0] != ATTN_NAME else "sdpa"
    _active.cache = cache
    try:
        for c in cfgs:
            compat.set_attention_implementation(c, ATTN_NAME)
        yield
    finally:
        for c, o in zip(cfgs, old):
            compat.set_attention_implementation(c, o)
        _active.cache = None
