"""benchmarks/generate_baseline.py: batched ``generate`` with kner's grammar gives the engine's outputs."""

from __future__ import annotations

import pytest
import torch

from kner.data.schemes import load_scheme
from kner.inference import Extractor
from kner.model.loading import build_model_from_config, load_tokenizer, tiny_config
from kner.model.prompt import PromptEncoder, PromptFormat, parse_tags

gb = pytest.importorskip("generate_baseline")

# Different lengths (left padding at work), byte-fallback syllables (겐), characters the tags escape.
TEXTS = [
    "오에 겐자부로는 일본 현대문학의 초석을 놓은 작가",
    "이순신",
    "서울 <특별시> : 12\\3",
    "부산 해운대에서 열린 국제영화제",
]
BUDGETS = [23, 6, 17, 30]


@pytest.fixture(scope="module")
def setup(llama_dir):
    tok = load_tokenizer(str(llama_dir))
    torch.manual_seed(3)
    model = build_model_from_config(
        tiny_config("llama", vocab_size=len(tok), hidden=32, intermediate=64, layers=2, heads=2, kv_heads=1)
    ).eval()
    return tok, model


def test_constrained_generate_equals_the_engine(setup):
    tok, model = setup
    scheme = load_scheme("spacy19")
    ex = Extractor(model, tok, scheme, constrained=True, ignore_eos=True)
    engine = [p.outputs[0] for p in ex.predict(TEXTS, new_tokens=BUDGETS)]
    gb.left_padding(tok)
    prompts = [e.input_ids for e in PromptEncoder(tok, PromptFormat(), scheme).prompt_ids_many(TEXTS)]
    assert len({len(p) for p in prompts}) == len(TEXTS)
    outs, generated = gb.generate_batch(model, tok, prompts, TEXTS, BUDGETS, [0, 1, 2, 3], ex.grammar(True))
    assert generated == 4 * max(BUDGETS)
    assert outs == engine
    assert sum(o.count("<") for o in outs) >= 4  # tags were written, not just kept empty
    for out, text in zip(outs, TEXTS):
        assert parse_tags(out, text, scheme).ok, (out, text)


def test_batches_fit_the_kv_cap_sorted_by_budget():
    prompt_lens = [10, 12, 11, 30, 10]
    budgets = [5, 2, 5, 2, 40]
    # (budget, prompt) order: 1 (12+2), 3 (30+2), 0 (10+5), 2 (11+5), 4 (10+40)
    assert gb.plan_batches(prompt_lens, budgets, kv_tokens=80, max_rows=8) == [[1, 3], [0, 2], [4]]
    assert gb.plan_batches(prompt_lens, budgets, kv_tokens=None, max_rows=2) == [[1, 3], [0, 2], [4]]
    assert gb.plan_batches(prompt_lens, budgets, kv_tokens=None, max_rows=8) == [[1, 3, 0, 2, 4]]


def test_generate_run_times_whole_batches_and_extrapolates_by_forwards(setup):
    tok, model = setup
    scheme = load_scheme("spacy19")
    gb.left_padding(tok)
    prompts = [e.input_ids for e in PromptEncoder(tok, PromptFormat(), scheme).prompt_ids_many(TEXTS)]
    ex = Extractor(model, tok, scheme, constrained=True, ignore_eos=True)
    ref = [p.outputs for p in ex.predict(TEXTS, new_tokens=BUDGETS)]
    ref[0] = ["split", "in two"]  # a text kner cut into pieces is not compared
    batches = gb.plan_batches([len(p) for p in prompts], BUDGETS, None, 2)
    assert batches == [[1, 2], [0, 3]]  # budgets 6, 17 | 23, 30
    full = gb.generate_run(model, tok, prompts, TEXTS, BUDGETS, batches, scheme, 1e9, ex.grammar(True), ref)
    assert full["complete"] and full["sentences"] == 4 and full["unparsed"] == 0
    assert full["same_output_as_kner"] == [3, 3]
    assert (full["new_tokens"], full["generated_tokens"]) == (sum(BUDGETS), 2 * 17 + 2 * 30)
    assert full["extrapolated_seconds_for_all"] == pytest.approx(full["seconds"], abs=0.06)  # all timed
    one = gb.generate_run(model, tok, prompts, TEXTS, BUDGETS, batches, scheme, 0.0, None)  # one batch, then stop
    assert not one["complete"] and one["batches_timed"] == 1 and one["timed_share_of_forwards"] == round(17 / 47, 3)
    assert (one["sentences"], one["new_tokens"], one["unparsed"]) == (2, 6 + 17, 2)
    assert one["extrapolated_seconds_for_all"] == pytest.approx(one["seconds"] * 47 / 17, abs=0.06)
