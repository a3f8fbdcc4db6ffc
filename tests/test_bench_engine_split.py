"""benchmarks/engine_split.py on the CPU: the instrumented run gives the same outputs, its phases add up
to the run, and the engine's methods are its own again afterwards."""

from __future__ import annotations

import pytest
import torch

from kner.inference import Extractor, constrained, engine
from kner.model.loading import build_model_from_config, load_tokenizer, tiny_config

es = pytest.importorskip("engine_split")

TEXTS = ["오에 겐자부로는 일본 현대문학의 초석을 놓은 작가", "이순신", "부산 해운대에서 열린 국제영화제"]


def test_split_phases_cover_the_run_and_leave_the_engine_as_it_was(llama_dir):
    tok = load_tokenizer(str(llama_dir))
    torch.manual_seed(3)
    model = build_model_from_config(
        tiny_config("llama", vocab_size=len(tok), hidden=32, intermediate=64, layers=1, heads=2, kv_heads=1)
    ).eval()
    ex = Extractor(model, tok, "spacy19", constrained=True, ignore_eos=True)
    plain = [p.outputs for p in ex.predict(TEXTS, new_tokens=[9, 4, 12])]
    before = {n: engine.PagedEngine.__dict__[n] for n in ("run", "_prefill", "_decode_step", "_decode_logits")}
    choose = constrained.ConstrainedChooser.__dict__["choose"]
    clock = es.Clock(torch.device("cpu"))
    with es.instrumented(clock):
        got = [p.outputs for p in ex.predict(TEXTS, new_tokens=[9, 4, 12])]
    assert got == plain
    assert {n: engine.PagedEngine.__dict__[n] for n in before} == before
    assert constrained.ConstrainedChooser.__dict__["choose"] is choose
    rep = es.split_report(clock, total=clock.s["engine_run"])
    assert rep["prefill_forwards"] >= 1 and rep["decode_steps"] >= 11  # the longest text's 12 tokens
    assert rep["eager_no_graphs"][1] == rep["decode_steps"]  # CPU: every decode forward eager, none graphed
    parts = rep["prefill_seconds_incl_first_choice"] + rep["decode_step_seconds"] + rep["engine_other_seconds"]
    assert parts + rep["admit_seconds"] + rep["make_room_seconds"] == pytest.approx(clock.s["engine_run"], abs=0.03)
