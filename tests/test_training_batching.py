"""Answer-only labels, steps, token-budget micro-batches and the two layouts."""

from __future__ import annotations

import gc

import pytest
import torch

from kner.data.schemes import load_scheme
from kner.model import compat
from kner.model.loading import build_model_from_config, tiny_config
from kner.model.prompt import PromptEncoder, PromptFormat, render_tags
from kner.training.batching import (
    Batching,
    as_rows,
    batch_cost,
    collate,
    epoch_steps,
    micro_batches,
    pack_rows,
    row_len,
    split_in_two,
    tokenize_examples,
)
from kner.training.forward import ModelParts, answer_loss_sum
from kner.training.step import StepModel, StepRunner
from test_training_support import kmou_examples, llama_tokenizer

SCHEME = load_scheme("kmou")


@pytest.fixture(scope="module")
def encoder():
    return PromptEncoder(llama_tokenizer(), PromptFormat(), SCHEME)


@pytest.fixture(scope="module")
def tokenized(encoder):
    toks, rep = tokenize_examples(list(kmou_examples(2)), encoder, 4096)
    assert rep.fallbacks == 0 and not rep.too_long
    return toks


@pytest.fixture(scope="module")
def short(tokenized):
    """The shortest sentences, for the tests that run a model (CPU time)."""
    return sorted(tokenized, key=lambda e: (e.length, e.index))[:4]


def test_labels_are_exactly_the_answer_tokens_and_eos(encoder):
    tok = llama_tokenizer()
    for ex in kmou_examples(1):
        answer = render_tags(ex.entities)
        enc = encoder.encode(ex.text, answer)
        ids = enc.input_ids
        assert enc.natural
        assert ids[: enc.prefix_len] == encoder.prefix_ids
        # What inference feeds: the tokenizer's own encoding of the prompt, BOS included.
        assert ids[: enc.prompt_len] == tok(PromptFormat().prompt(ex.text, SCHEME))["input_ids"]
        assert ids[-1] == tok.eos_token_id
        assert tok.decode(ids[enc.prompt_len : -1]) == answer
        assert encoder.prompt_ids(ex.text).input_ids == ids[: enc.prompt_len]
    # One batch through the tokenizer gives what one call per example gives.
    exs = list(kmou_examples(1))[:8]
    pairs = [(ex.text, render_tags(ex.entities)) for ex in exs]
    assert encoder.encode_many(pairs) == [encoder.encode(t, a) for t, a in pairs]
    assert encoder.prompt_ids_many([t for t, _ in pairs]) == [encoder.prompt_ids(t) for t, _ in pairs]


def test_prefix_is_the_llama_instruction(encoder):
    # BOS + the instruction's own tokens (281 with the real LLaMA-2 tokenizer: see
    # test_inference_constrained.test_real_sentencepiece_tokenizers); kmou lists fewer labels.
    tok = llama_tokenizer()
    spacy = PromptEncoder(tok, PromptFormat(), load_scheme("spacy19"))
    prefix, _ = PromptFormat().parts(load_scheme("spacy19"))
    assert spacy.prefix_ids == tok(prefix)["input_ids"] and spacy.prefix_ids[0] == 1 == tok.bos_token_id
    assert PromptFormat().prompt("이순신", load_scheme("spacy19")).startswith(prefix)
    assert 100 < len(encoder.prefix_ids) < len(spacy.prefix_ids)


class _Slow:
    """A tokenizer without offsets: the encoder must tokenize piecewise."""

    is_fast = False

    def __init__(self, fast):
        self.fast = fast
        self.eos_token_id = fast.eos_token_id

    def __call__(self, text, add_special_tokens=True, **kw):
        assert "return_offsets_mapping" not in kw
        return self.fast(text, add_special_tokens=add_special_tokens)


def test_slow_tokenizer_pieces_put_labels_on_answer_plus_eos():
    tok = llama_tokenizer()
    enc = PromptEncoder(_Slow(tok), PromptFormat(), SCHEME)
    ex = next(e for e in kmou_examples(1) if e.entities)
    answer = render_tags(ex.entities)
    out = enc.encode(ex.text, answer)
    assert not out.natural and enc.fallbacks == 1
    assert out.input_ids[out.prompt_len :] == tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert out.input_ids[: out.prefix_len] == enc.prefix_ids
    assert out.input_ids[: out.prompt_len] == enc.prompt_ids(ex.text).input_ids


def test_unclean_boundary_falls_back_to_pieces():
    """A tokenizer whose tokens can straddle the prompt/answer boundary ("\\n<" as one token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [PromptFormat().render(e.text, e.entities, SCHEME) for e in kmou_examples(1)]
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.Split("\n\n", behavior="isolated")
    bpe.train_from_iterator(texts * 3, trainers.BpeTrainer(vocab_size=600, special_tokens=["[UNK]", "</s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>", unk_token="[UNK]")
    enc = PromptEncoder(tok, PromptFormat(), SCHEME)
    for ex in kmou_examples(1):
        answer = render_tags(ex.entities)
        out = enc.encode(ex.text, answer)
        assert out.input_ids[: out.prompt_len] == enc.prompt_ids(ex.text).input_ids
        assert out.input_ids[-1] == tok.eos_token_id
        assert tok.decode(out.input_ids[out.prompt_len : -1]).replace(" ", "") == answer.replace(" ", "")
    assert enc.fallbacks > 0  # merges across "\n" + "<" happen with this tokenizer


def test_too_long_examples_are_skipped_and_named(encoder):
    exs = list(kmou_examples(1))
    toks, rep = tokenize_examples(exs, encoder, 300)
    assert rep.too_long and len(toks) + len(rep.too_long) == len(exs)
    assert all(t.length <= 300 for t in toks)


def test_epoch_steps_cover_every_example_once():
    lengths = [(i * 37) % 101 + 10 for i in range(103)]
    for group in (False, True):
        steps = epoch_steps(lengths, 8, seed=3, epoch=0, group_by_length=group)
        flat = sorted(i for s in steps for i in s)
        assert flat == list(range(103))
        assert steps == epoch_steps(lengths, 8, seed=3, epoch=0, group_by_length=group)
        assert steps != epoch_steps(lengths, 8, seed=3, epoch=1, group_by_length=group)


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_micro_batches_respect_the_budget(tokenized, layout):
    step = tokenized[:24]
    budget = max(batch_cost([[e]], layout) for e in step) + 300
    mbs = micro_batches(step, budget, layout, row_tokens=budget // 2 + 100)
    flat = [e.index for mb in mbs for row in mb for e in row]
    assert sorted(flat) == sorted(e.index for e in step)
    assert all(batch_cost(mb, layout) <= budget for mb in mbs)
    assert mbs == micro_batches(list(reversed(step)), budget, layout, row_tokens=budget // 2 + 100)
    big = next(mb for mb in mbs if sum(map(len, mb)) > 1)
    a, b = split_in_two(big)
    assert a and b and sorted(e.index for r in a + b for e in r) == sorted(e.index for r in big for e in r)


def test_packed_rows_are_balanced(tokenized):
    step = tokenized[:16]
    cap = 1200
    rows = pack_rows(step, cap)
    lens = [row_len(r) for r in rows]
    assert max(lens) <= cap and sorted(e.index for r in rows for e in r) == sorted(e.index for e in step)
    assert len(rows) <= -(-sum(e.suffix_len for e in step) // (cap - step[0].prefix_len)) + 1
    assert max(lens) - min(lens) <= max(e.suffix_len for e in step)
    one = pack_rows(step[:3], 10_000)
    assert len(one) == 1


def test_packed_row_isolates_examples(tokenized):
    batch = tokenized[:3]
    mb = collate([batch, tokenized[3:5]], "packed", pad_id=0)  # two rows
    P = batch[0].prefix_len
    mask = mb.attention_mask[0, 0]
    pos = mb.position_ids[0]
    assert mb.input_ids.shape[1] % 16 == 0 and mb.input_ids.shape[0] == 2
    assert mb.n_computed == row_len(batch) + row_len(tokenized[3:5])
    starts = [P]
    for e in batch[:-1]:
        starts.append(starts[-1] + e.suffix_len)
    for e, s in zip(batch, starts):
        span = slice(s, s + e.suffix_len)
        assert pos[span].tolist() == list(range(P, e.length))  # positions restart after the prefix
        assert mask[span, :P].all()  # every example sees the prefix
        for other_start, other in zip(starts, batch):
            if other_start != s:
                assert not mask[span, other_start : other_start + other.suffix_len].any()
    # Targets are each example's answer + EOS, predicted from the position before.
    expect = [t for e in batch + tokenized[3:5] for t in e.input_ids[e.prompt_len :]]
    assert mb.targets.tolist() == expect
    assert mb.input_ids[mb.pred_rows, mb.pred_cols + 1].tolist() == expect


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gemma"])
def test_layouts_give_the_reference_loss_and_gradient(short, arch):
    """packed / padded == one full forward per example with HF's own labels loss."""
    tok = llama_tokenizer()
    batch = short[:3]
    model = build_model_from_config(tiny_config(arch, len(tok), layers=2), seed=1)
    model.train()
    compat.enable_checkpointing(model, use_reentrant=False)
    parts = ModelParts.of(model)
    for mod in (model.get_input_embeddings(), model.get_output_embeddings()):
        mod.requires_grad_(False)  # as under LoRA; also spares the CPU two 32k-wide weight gradients
    params = [p for p in model.parameters() if p.requires_grad]

    ref = 0.0
    for e in batch:
        ids = torch.tensor([e.input_ids])
        labels = ids.clone()
        labels[0, : e.prompt_len] = -100
        ref = ref + model(input_ids=ids, labels=labels).loss * e.n_answer
    ref_grads = torch.autograd.grad(ref, params)
    for layout in ("packed", "padded"):
        rows = [batch[:2], batch[2:]] if layout == "packed" else as_rows(batch, layout)
        loss = answer_loss_sum(parts, collate(rows, layout, tok.pad_token_id))
        grads = torch.autograd.grad(loss, params)
        assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5), layout
        for g, r in zip(grads, ref_grads):
            assert torch.allclose(g, r, rtol=1e-3, atol=1e-5), layout


def _runner(model, params, layout: str, budget: int) -> StepRunner:
    cpu = StepModel(
        ModelParts.of(model), params, torch.float32, torch.device("cpu"), torch.amp.GradScaler("cpu", enabled=False)
    )
    return StepRunner(cpu, Batching(budget, layout))


def test_no_memory_is_kept_between_steps(short):
    """A step keeps nothing alive once its gradient is added (a cache kept by checkpointing leaked GBs at 7B)."""
    model = build_model_from_config(tiny_config("llama", len(llama_tokenizer())), seed=0)
    model.train()
    compat.enable_checkpointing(model, use_reentrant=False)
    params = [p for p in model.parameters()]

    def live():
        gc.collect()
        return sum(o.numel() for o in gc.get_objects() if torch.is_tensor(o))

    for layout in ("packed", "padded"):
        runner = _runner(model, params, layout, 2048)
        runner.step(short[:3])
        model.zero_grad(set_to_none=True)
        before = live()
        runner.step(short[:3])
        model.zero_grad(set_to_none=True)
        assert live() == before, layout


def test_a_step_gives_the_same_gradient_in_every_layout(short):
    """The step's loss and gradient depend neither on the layout nor on how the step is cut."""
    model = build_model_from_config(tiny_config("llama", len(llama_tokenizer()), layers=2), seed=2)
    model.train()
    compat.enable_checkpointing(model, use_reentrant=False)
    for mod in (model.get_input_embeddings(), model.get_output_embeddings()):
        mod.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    results = {}
    for layout, budget in (("padded", 4096), ("packed", 4096), ("packed", 80)):
        runner = _runner(model, params, layout, max(budget, max(batch_cost([[e]], layout) for e in short[:4])))
        res = runner.step(short[:4])
        results[(layout, budget)] = (res.loss, res.micro_batches, [p.grad.clone() for p in params])
        model.zero_grad(set_to_none=True)
    ref_loss, _, ref_grads = results[("padded", 4096)]
    assert results[("packed", 80)][1] > 1  # one micro-batch per example
    for key, (loss, _, grads) in results.items():
        assert loss == pytest.approx(ref_loss, rel=1e-5), key
        for g, r in zip(grads, ref_grads):
            assert torch.allclose(g, r, rtol=1e-3, atol=1e-6), key


def test_a_runtime_error_saying_out_of_memory_is_split_and_retried(short):
    """Some kernels report OOM as a plain RuntimeError (kner.model.oom.is_oom): same split, same gradient.
    Any other RuntimeError is a bug and propagates."""
    model = build_model_from_config(tiny_config("llama", len(llama_tokenizer()), layers=2), seed=2)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    runner = _runner(model, params, "packed", 4096)
    ref = runner.step(short[:4])
    ref_grads = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    state = {"raise": "CUDA error: out of memory"}

    def hook(mod, args):
        if state["raise"]:
            msg, state["raise"] = state["raise"], None
            raise RuntimeError(msg)

    handle = model.model.layers[0].register_forward_pre_hook(hook)
    res = runner.step(short[:4])
    assert (ref.micro_batches, res.oom_splits, res.micro_batches, res.examples) == (1, 1, 2, 4)
    assert "CUDA error: out of memory" in res.split_notes[0]
    assert res.loss == pytest.approx(ref.loss, rel=1e-6)
    for p, r in zip(params, ref_grads):
        assert torch.allclose(p.grad, r, rtol=1e-4, atol=1e-6)
    model.zero_grad(set_to_none=True)
    state["raise"] = "mat1 and mat2 shapes cannot be multiplied"
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        runner.step(short[:4])
    handle.remove()
