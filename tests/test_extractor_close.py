"""An Extractor gives its GPU memory back when closed, at the end of a ``with`` block, or when dropped.

What used to outlive a dropped extractor until a ``gc.collect()``: the prefix K/V (held by the
engine's per-run cache classes, which are reference cycles) and, with LoRA, every fused layer
with its base weights (the fused forward, a bound method stored on its own module, is a cycle).
The tests hold weak references only and run with the cyclic collector off: a reference that
dies shows refcounting alone freed the object, as CUDA memory needs.
"""

from __future__ import annotations

import gc
import weakref

import pytest
from peft import LoraConfig

from helpers import InjectedOOM, tiny_char_model, tiny_model_folder
from kner.errors import KnerError
from kner.inference import Extractor, engine
from kner.model.compat import get_peft_model

TEXTS = ["이순신은 조선의 장군이다.", "서울 부산"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("close") / "out", TEXTS)


@pytest.fixture
def no_gc():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
def pools(monkeypatch):
    """Weak references to the K/V pool tensors of every engine run (all layers, K and V)."""
    refs: list[weakref.ref] = []
    make = engine._make_cache

    def spy(prefix, pool_tokens):
        cache = make(prefix, pool_tokens)
        refs.extend(weakref.ref(t) for lay in cache.layers for t in (lay.kpool, lay.vpool))
        return cache

    monkeypatch.setattr(engine, "_make_cache", spy)
    return refs


def held(ex: Extractor, pools: list[weakref.ref]) -> list[weakref.ref]:
    """After a prediction: weak references to the pools, the prefix K/V, the model and its weights."""
    assert ex(TEXTS) is not None and pools
    prefix = ex._prefix_cache
    assert prefix is not None
    return [
        *pools,
        weakref.ref(prefix),
        *(weakref.ref(t) for kv in prefix.layers for t in kv),
        weakref.ref(ex.model),
        *(weakref.ref(p) for p in ex.model.parameters()),
    ]


def alive(refs: list[weakref.ref]) -> int:
    return sum(r() is not None for r in refs)


def lora_extractor(**opts) -> Extractor:
    model, tok = tiny_char_model(TEXTS)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).eval()
    return Extractor(model, tok, "spacy19", max_new_tokens=8, **opts)


def test_close_frees_pool_prefix_and_model(folder, pools, no_gc):
    ex = Extractor.load(folder, max_new_tokens=8)
    refs = held(ex, pools)
    ex.close()
    assert alive(refs) == 0
    ex.close()  # twice is fine
    for use in (lambda: ex(TEXTS), lambda: ex.predict(TEXTS), lambda: ex.predict_examples([])):
        with pytest.raises(KnerError, match="extractor is closed"):
            use()


def test_with_block_frees_everything_at_its_end(folder, pools, no_gc):
    with Extractor.load(folder, max_new_tokens=8) as ex:
        refs = held(ex, pools)
        assert alive(refs[len(pools) :]) == len(refs) - len(pools)  # in use inside the block
    assert alive(refs) == 0
    with pytest.raises(KnerError, match="extractor is closed"):
        ex(TEXTS)


def test_dropping_the_last_reference_frees_everything_without_gc(folder, pools, no_gc):
    ex = Extractor.load(folder, max_new_tokens=8)
    refs = held(ex, pools)
    del ex
    assert alive(refs) == 0


def test_fused_lora_layers_are_freed_when_dropped_or_closed(pools, no_gc):
    ex = lora_extractor()
    assert ex.fused_layers == 7
    refs = held(ex, pools)
    del ex
    assert alive(refs) == 0
    ex = lora_extractor()
    refs = held(ex, pools)
    ex.close()
    assert alive(refs) == 0


def test_closing_one_extractor_keeps_the_model_of_another_fused():
    first = lora_extractor()
    second = Extractor(first.model, first.tokenizer, "spacy19", max_new_tokens=8)
    want = second(TEXTS)
    first.close()
    assert second(TEXTS) == want
    layers = [m for m in second.model.modules() if "forward" in vars(m)]
    assert len(layers) == 7  # still the fused forward
    model = second.model
    second.close()
    assert not [m for m in model.modules() if "forward" in vars(m)]  # peft's own forward again


@pytest.mark.parametrize("close", [True, False])
def test_freed_after_an_out_of_memory_retry(pools, no_gc, close):
    model, tok = tiny_char_model(TEXTS)
    ex = Extractor(InjectedOOM(model, 4), tok, "spacy19", batch_size=8, max_new_tokens=8)
    del model
    assert ex.predict(TEXTS * 4) and ex.last_stats.oom_retries == 1
    refs = held(ex, pools)
    if close:
        ex.close()
    else:
        del ex
    assert alive(refs) == 0


class _Job:
    def __init__(self, texts):
        self.texts, self.result = texts, None

    def finish(self, predictions):
        self.result = predictions

    def fail(self, error):
        self.result = error


class Inbox:
    """A job source (``kner serve``'s inbox) that hands over its jobs at once, then closes."""

    def __init__(self, texts: list[list[str]]):
        self.jobs = [_Job(t) for t in texts]
        self.given = False

    def take(self, wait, most=None):
        if self.given:
            return None
        self.given = True
        return list(self.jobs)

    def dropped(self):
        return []


def test_serve_then_close(folder, pools, no_gc):
    ex = Extractor.load(folder, max_new_tokens=8)
    want = ex.predict(TEXTS)
    refs = held(ex, pools)
    inbox = Inbox([TEXTS])
    ex.serve(inbox)
    assert [p.entities for p in inbox.jobs[0].result] == [p.entities for p in want]
    ex.close()
    assert alive(refs) == 0
    with pytest.raises(KnerError, match="extractor is closed"):
        ex.serve(Inbox([TEXTS]))


def test_a_job_failed_by_out_of_memory_does_not_hold_the_model(pools, no_gc):
    """The error a failed job keeps (for its client) carries no frames of the run: no model, no prefix K/V."""
    model, tok = tiny_char_model(TEXTS)
    ex = Extractor(InjectedOOM(model, 1), tok, "spacy19", max_new_tokens=8)
    del model
    refs = [weakref.ref(ex.model), *(weakref.ref(p) for p in ex.model.parameters())]
    ex._prefix(len(ex.prefix_ids))  # encoded; from now on every forward runs out of memory
    ex.model.limit = 0
    inbox = Inbox([TEXTS])
    ex.serve(inbox)
    err = inbox.jobs[0].result
    assert isinstance(err, KnerError) and "out of GPU memory with a single sequence" in str(err)
    refs.append(weakref.ref(ex._prefix_cache))
    ex.close()
    assert alive(refs) == 0
