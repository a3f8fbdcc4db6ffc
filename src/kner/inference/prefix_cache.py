"""The shared instruction prefix: encoded once, attended to by every row without a copy.

Every prompt is ``prefix + text + suffix`` and the prefix (instruction, one line
per label: ~280 LLaMA-2 tokens) is the same for all of them. Its K/V is stored
once, shape ``(1, kv_heads, P, head_dim)``; the rows' own K/V (suffix and
generated tokens) live in the engine's paged pool (:mod:`kner.inference.engine`).
:func:`shared_prefix_attention`, registered with transformers'
``AttentionInterface`` and switched on only inside the engine's forwards,
attends to both parts, so the prefix costs no memory per row (LLaMA-2-7B:
0.5 MiB of K/V per token, 141 MiB per row for a copied prefix). It covers
grouped-query heads, logit soft-capping and sliding windows (from the
positions the engine records for each forward), so it is exact for every
model whose attention is softmax over ``q . k`` (tested against full prompts
on LLaMA, Qwen2, Mistral, Gemma and Gemma-2 tiny models).

Rows see the prefix at positions ``0..P-1``; positions of their own tokens
continue at ``P``.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

from kner.inference import paged_attention
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
    def encode(cls, model, ids: list[int]) -> PrefixKV:
        dev = _input_device(model)
        cache = compat.dynamic_cache()
        x = torch.tensor([ids], device=dev)
        model(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            use_cache=True,
            logits_to_keep=1,
            **compat.cache_kwargs(model, cache),
        )
        layers = [(lay.keys.detach(), lay.values.detach()) for lay in cache.layers]
        return cls(ids, layers)

    def truncated(self, n: int) -> PrefixKV:
        """The K/V of the first ``n`` tokens (causal: identical to encoding them alone)."""
        if n == self.length:
            return self
        return PrefixKV(self.ids[:n], [(k[:, :, :n], v[:, :, :n]) for k, v in self.layers])

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k, _ in self.layers)


def _input_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


def shared_prefix_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling=None,
    softcap=None,
    sliding_window=None,
    **kwargs,
):
    """Attention over [shared prefix K/V] + [per-row K/V] without copying the prefix.

    In a decode step ``key``/``value`` are the engine's whole pools and the cache's op carries the rows'
    block tables and lengths: :mod:`kner.inference.paged_attention`'s kernel reads them in place where it
    applies, else they are gathered and the code below runs. In a prefill the rows' prompts come packed
    into one sequence, and the op ``("prefill", write, gather, back, mask)`` lays them out padded here
    (``gather``: (B, t) packed index of each slot; ``back``: each packed token's flat slot; ``mask``:
    bool (B, 1, t, t), True where a row's query may see its own key), so the linear layers never see
    padding. The code below then has ``query``: (B, H, q, D); ``key``/``value``: the rows' own K/V
    (B, KVH, t, D); ``attention_mask``: as ``mask``.
    The prefix is visible to every query, except outside a layer's ``sliding_window``
    (transformers passes it per layer; the engine sets ``cache.positions`` =
    query positions (B, q) and own-key positions (B or 1, t)). Returns (B, q, H, D)
    like the built-in functions.
    """
    state = getattr(_active, "cache", None)
    if state is None:  # called outside our decode loop: behave like the implementation we replaced
        return _fallback()(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            softcap=softcap,
            sliding_window=sliding_window,
            **kwargs,
        )
    pk, pv = state.layers[module.layer_idx].pk, state.layers[module.layer_idx].pv
    op = getattr(state, "op", None)
    if op is not None and op[0] == "decode":  # key/value are the pools; op: ("decode", write, table, lens, block)
        _, _, table, lens, block = op
        if paged_attention.kernel_applies(query, softcap, sliding_window):
            s = query.shape[-1] ** -0.5 if scaling is None else scaling
            try:
                return paged_attention.decode_attention(query, pk, pv, key[0], value[0], table, lens, block, s), None
            except Exception as err:  # noqa: BLE001 -- a kernel that cannot compile here: the general path
                paged_attention.switch_off(err)
        key, value = paged_attention.gathered(key[0], value[0], table, block)  # the general path below
    back = None
    if op is not None and op[0] == "prefill":  # the engine's packed prompts: laid out (rows, heads, longest, head_dim)
        _, _, gather, back, attention_mask = op
        n, s = gather.shape
        query, key, value = (
            t[0][:, gather.view(-1)].view(t.shape[1], n, s, -1).transpose(0, 1) for t in (query, key, value)
        )
    b, h, q, d = query.shape
    kvh = key.shape[1]
    g = h // kvh
    p = pk.shape[-2]
    t = key.shape[-2]
    if scaling is None:
        scaling = d**-0.5
    # Everything per kv head: query head kvh*g+j uses kv head kvh. Rows x (g*q) queries per kv head.
    qk = (query * scaling).reshape(b, kvh, g * q, d).transpose(0, 1).reshape(kvh, b * g * q, d).contiguous()
    sp = torch.bmm(qk, pk[0].transpose(1, 2))  # prefix read once for all rows
    kt = key.transpose(0, 1)  # (kvh, b, t, d); the paged pool
    kt = kt if kt.is_contiguous() else kt.contiguous()  # gathers it contiguous already
    ss = torch.bmm(qk.view(kvh * b, g * q, d), kt.view(kvh * b, t, d).transpose(1, 2))
    scores = torch.cat([sp.view(kvh, b, g * q, p), ss.view(kvh, b, g * q, t)], dim=-1).float()
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        m = attention_mask.transpose(0, 1)[:, :, None].expand(1, b, g, q, t).reshape(1, b, g * q, t)
        scores[..., p:].masked_fill_(~m, float("-inf"))
    positions = getattr(state, "positions", None)
    if sliding_window is not None and positions is not None:
        # A key is visible while query position - key position < window (transformers' rule).
        q_pos, k_pos = positions
        qp = q_pos[:, None, :].expand(b, g, q).reshape(1, b, g * q, 1)
        far_prefix = qp - torch.arange(p, device=qp.device) >= sliding_window
        far_own = qp - k_pos[None, :, None, :] >= sliding_window
        scores[..., :p].masked_fill_(far_prefix, float("-inf"))
        scores[..., p:].masked_fill_(far_own, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.bmm(probs[..., :p].reshape(kvh, b * g * q, p), pv[0])
    vt = value.transpose(0, 1)
    vt = vt if vt.is_contiguous() else vt.contiguous()
    out += torch.bmm(probs[..., p:].reshape(kvh * b, g * q, t), vt.view(kvh * b, t, d)).view(kvh, b * g * q, d)
    out = out.view(kvh, b, g, q, d).permute(1, 3, 0, 2, 4).reshape(b, q, h, d)
    if back is not None:
        out = out.reshape(b * q, h, d)[back][None]  # back to the packed sequence: (1, tokens, heads, head_dim)
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
