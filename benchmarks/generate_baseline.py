"""Extraction, the fair baseline: batched ``model.generate`` vs. kner's paged engine, both constrained.

Same model, sentences, budgets and T4 emulation as ``infer_bench.py run`` (random-weight
LLaMA-2-7B, NF4 + LoRA, 1,000 KMOU test sentences, each generating its gold answer
length in tokens, EOS ignored, ``min_new_tokens = max_new_tokens``). Runs, in order:

1. kner, constrained (``Extractor.predict`` on all sentences, as in ``infer_bench.py``);
   its fused LoRA forward is then undone (``--fused-generate`` keeps it);
2. ``model.generate``, static batches: left padding (the tokenizer's ``pad``, pad token
   set), sentences sorted by answer budget then prompt length (the order that wastes the
   fewest steps: a batch runs as long as its longest answer), each batch as many rows as
   fit ``--kv-share`` of the memory left after the weights under the cap, counting every
   row's K/V at the batch's padded prompt + longest budget (LLaMA-2-7B fp16: 0.5 MiB a
   token) and at most ``--caps`` rows; greedy; a. no constraint, b. kner's grammar as a
   ``LogitsProcessor`` (:class:`kner.inference.constrained.TagLogitsProcessor`: the
   engine's per-row constraint state and its mask, so greedy ``generate`` picks the
   tokens the engine would), outputs read and parsed as the engine's are;
3. kner unconstrained, if the clock (``--stop-after``) allows.

Each ``generate`` run times whole batches, taken in an order any prefix of which spans all
answer lengths (:func:`infer_bench.spread`), until ``--generate-seconds`` have passed, and
extrapolates to the whole set by decode forwards: a batch takes its longest budget in
forwards (prefill included), and the seconds per forward of the timed batches times all
batches' forwards is the estimate. New tokens/s counts each sentence's own budget (what it
needs); ``generated_tokens`` adds what the shorter rows of a batch write while the longest
finishes.

    python benchmarks/generate_baseline.py --out $OUT/generate_baseline.json   # on the GPU machine
    python benchmarks/generate_baseline.py --tiny --n 24 --out /tmp/gb.json     # CPU smoke test
"""

from __future__ import annotations

import argparse
import time

import infer_bench as ib
from infer_bench import GiB, kner_run, log, spread, sync, t4_emulation

DEFAULT_CAPS = "fitted"


def plan_batches(prompt_lens, budgets, kv_tokens: int | None, max_rows: int) -> list[list[int]]:
    """Sentences by (budget, prompt length), cut into the largest batches whose padded K/V fits."""
    order = sorted(range(len(budgets)), key=lambda i: (budgets[i], prompt_lens[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    p = n = 0
    for i in order:
        p2, n2 = max(p, prompt_lens[i]), max(n, budgets[i])
        full = len(cur) >= max_rows or (kv_tokens is not None and (len(cur) + 1) * (p2 + n2) > kv_tokens)
        if cur and full:
            batches.append(cur)
            cur, p2, n2 = [], prompt_lens[i], budgets[i]
        cur.append(i)
        p, n = p2, n2
    if cur:
        batches.append(cur)
    return batches


def kv_token_budget(model, device, share: float) -> tuple[int | None, dict]:
    """K/V tokens that fit ``share`` of what this process may still allocate (None on CPU: no cap)."""
    from kner.inference.memory import ModelDims, usable_memory

    per_token = ModelDims.from_model(model).kv_bytes_per_token
    usable = usable_memory(device)
    info = {"kv_bytes_per_token": per_token, "usable_gib": round(usable / GiB, 2) if usable else None}
    if usable is None:
        return None, info
    tokens = int(usable * share / per_token)
    info.update(kv_share=share, kv_tokens=tokens)
    return tokens, info


def left_padding(tok) -> None:
    """What batched ``generate`` needs of a decoder-only tokenizer: pad on the left, with a pad token."""
    if tok.pad_token is None:  # LLaMA-2 has none; <unk> (id 0) is also what the engine pads with
        tok.pad_token = tok.unk_token or tok.eos_token
    tok.padding_side = "left"


def generate_batch(model, tok, prompts, texts, budgets, batch, grammar, max_new=None):
    """One static batch through ``model.generate``; each row's tag text at its own budget."""
    import torch
    from transformers import LogitsProcessorList

    from kner.inference.constrained import TagConstraint, TagLogitsProcessor

    dev = model.get_input_embeddings().weight.device
    enc = tok.pad({"input_ids": [prompts[i] for i in batch]}, padding=True, return_tensors="pt").to(dev)
    plen = enc["input_ids"].shape[1]
    steps = max_new or max(budgets[i] for i in batch)
    procs = LogitsProcessorList()
    if grammar is not None:
        procs.append(TagLogitsProcessor(grammar, [texts[i] for i in batch], plen, cycle=True))
    with torch.inference_mode():
        out = model.generate(
            **enc,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            logits_processor=procs,
        )
    gen = out[:, plen:].tolist()
    outputs = []
    for row, i in zip(gen, batch):
        ids = row[: budgets[i]]
        if grammar is None:
            outputs.append(tok.decode(ids, skip_special_tokens=True))
        else:  # as the engine reads a row: the complete tags its budget wrote
            tc = TagConstraint(grammar, texts[i], cycle=True)
            for t in ids:
                tc.advance(t)
            outputs.append(tc.output()[0])
    return outputs, len(batch) * steps


def generate_run(model, tok, prompts, texts, budgets, batches, scheme, seconds, grammar=None, reference=None) -> dict:
    """Time whole batches (spread order) until ``seconds`` have passed; measured and extrapolated rates.

    ``reference``: kner's tag texts per sentence (``kner_run(outputs=...)``), to count equal outputs."""
    from kner.inference.memory import release_memory
    from kner.model.oom import is_oom
    from kner.model.prompt import parse_tags

    device = model.get_input_embeddings().weight.device
    todo = [list(b) for b in spread(batches)]
    forwards_all = sum(max(budgets[i] for i in b) for b in batches)
    generate_batch(model, tok, prompts, texts, budgets, todo[0], grammar, max_new=2)  # warm-up
    sync(device)
    el = 0.0
    n = useful = generated = forwards = unparsed = ooms = done_batches = same = compared = 0
    rows = []
    while todo and (el < seconds or not done_batches):
        b = todo.pop(0)
        t = time.perf_counter()
        try:
            outs, gen_tokens = generate_batch(model, tok, prompts, texts, budgets, b, grammar)
            unparsed += sum(not parse_tags(o, texts[i], scheme).ok for o, i in zip(outs, b))
            if reference is not None:  # kner split texts over its piece limit: those are not compared
                pairs = [(o, reference[i][0]) for o, i in zip(outs, b) if len(reference[i]) == 1]
                same += sum(o == r for o, r in pairs)
                compared += len(pairs)
            sync(device)
            oom = False
        except Exception as err:  # noqa: BLE001 -- only OOM is handled, the rest re-raised
            if not is_oom(err) or len(b) == 1:
                raise
            oom = True
        if oom:  # out of the except block: the traceback no longer holds the batch's tensors
            release_memory()
            ooms += 1  # not timed; the halves are, and count their forwards twice in the estimate
            forwards_all += max(budgets[i] for i in b)
            todo[:0] = [b[: len(b) // 2], b[len(b) // 2 :]]
            continue
        el += time.perf_counter() - t
        n += len(b)
        done_batches += 1
        rows.append(len(b))
        useful += sum(budgets[i] for i in b)
        generated += gen_tokens
        forwards += max(budgets[i] for i in b)
    complete = not todo
    est_all = el if complete else el / forwards * forwards_all
    return {
        "constrained": grammar is not None,
        "batches_total": len(batches),
        "batches_timed": done_batches,
        "rows_max": max(rows),
        "rows_mean": round(sum(rows) / len(rows), 1),
        "oom_splits": ooms,
        "sentences": n,
        "seconds": round(el, 3),
        "new_tokens": useful,
        "generated_tokens": generated,
        "unparsed": unparsed,
        "same_output_as_kner": [same, compared] if reference is not None else None,
        "sentences_per_s": n / el,
        "tokens_per_s": useful / el,
        "complete": complete,
        "timed_share_of_forwards": round(forwards / forwards_all, 3),
        "extrapolated_seconds_for_all": round(est_all, 1),
        "extrapolated_sentences_per_s": len(texts) / est_all,
        "extrapolated_tokens_per_s": sum(budgets) / est_all,
    }


def ratios(kner: dict, base: dict) -> dict:
    """kner's rates over the baseline's whole-set (extrapolated) rates."""
    return {
        "sentences": round(kner["sentences_per_s"] / base["extrapolated_sentences_per_s"], 2),
        "tokens": round(kner["tokens_per_s"] / base["extrapolated_tokens_per_s"], 2),
    }


def run(args) -> None:
    from kner.data.schemes import load_scheme
    from kner.inference.constrained import TagGrammar
    from kner.inference.fused import fuse_lora
    from kner.inference.memory import release_memory
    from kner.inference.vocab import TokenTable
    from kner.model.prompt import PromptEncoder, PromptFormat

    b = ib.setup(args)
    device, res, save, tok, texts, budgets, model = b.device, b.res, b.save, b.tok, b.texts, b.budgets, b.model
    cap = t4_emulation(device)

    scheme, fmt = load_scheme("spacy19"), PromptFormat()
    prompts = [e.input_ids for e in PromptEncoder(tok, fmt, scheme).prompt_ids_many(texts)]
    left_padding(tok)
    out_emb = model.get_output_embeddings()
    table = TokenTable.cached(tok, out_emb.weight.shape[0] if out_emb is not None else None, model)
    grammar = TagGrammar(table, scheme.names, fmt.separator, ignore_eos=True)  # as Extractor.grammar(True)

    # kner first (the number the issue tracks). Its Extractor fuses the LoRA layers in place and gives
    # peft's own forward back when it is dropped (what a user's generate runs); --fused-generate fuses
    # them again, to separate the engine's gain from the fusion's.
    kner_out: list[list[str]] = []
    save("t4_kner_constrained", kner_run(model, tok, texts, budgets, device, True, cap, 256, kner_out))
    if args.fused_generate:
        fuse_lora(model)
    release_memory()  # kner's pool and prefix K/V back before measuring what the batches may use
    kv_tokens, mem = kv_token_budget(model, device, args.kv_share)
    save("memory", mem | {"cap_gib": cap, "prompt_tokens_mean": round(sum(map(len, prompts)) / len(prompts), 1)})
    for c in args.caps.split(","):
        rows = int(c) if c != "fitted" else args.max_rows if kv_tokens is not None else args.cpu_rows
        batches = plan_batches([len(p) for p in prompts], budgets, kv_tokens, rows)
        for g in (None, grammar) if not args.skip_unconstrained else (grammar,):
            key = f"t4_generate_{'constrained' if g is not None else 'unconstrained'}_{c}"
            ref = kner_out if g is not None else None
            save(key, generate_run(model, tok, prompts, texts, budgets, batches, scheme, args.generate_seconds, g, ref))
    release_memory()
    if time.perf_counter() - ib.T0 < args.stop_after:
        save("t4_kner_unconstrained", kner_run(model, tok, texts, budgets, device, False, cap, 256))
    else:
        save("t4_kner_unconstrained", "skipped: time limit")
    kc, ku = res["t4_kner_constrained"], res["t4_kner_unconstrained"]
    summary = {"kner_constrained_sentences_per_s": round(kc["sentences_per_s"], 2)}
    for c in args.caps.split(","):
        for mode in ("constrained", "unconstrained"):
            base = res.get(f"t4_generate_{mode}_{c}")
            if base is None:  # --skip-unconstrained
                continue
            summary[f"generate_{mode}_{c}_sentences_per_s"] = round(base["extrapolated_sentences_per_s"], 3)
            summary[f"kner_constrained_over_generate_{mode}_{c}"] = ratios(kc, base)
            if isinstance(ku, dict):
                summary[f"kner_unconstrained_over_generate_{mode}_{c}"] = ratios(ku, base)
    base = res[f"t4_generate_constrained_{args.caps.split(',')[-1]}"]  # the fair one: constrained on both sides
    summary["goals"] = {
        "kner_10x_constrained_generate": kc["sentences_per_s"] >= 10 * base["extrapolated_sentences_per_s"],
        "kner_40_sentences_per_s": kc["sentences_per_s"] >= 40,
    }
    save("t4_summary", summary)
    log("done")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="generate_baseline.json")
    ap.add_argument("--tiny", action="store_true", help="tiny model (CPU smoke test)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--caps", default=DEFAULT_CAPS, help="row caps per batch to run, e.g. 16,48,fitted")
    ap.add_argument("--max-rows", type=int, default=256, help="row cap of 'fitted' (the K/V fit decides below it)")
    ap.add_argument("--kv-share", type=float, default=0.75, help="share of the memory left after the weights for K/V")
    ap.add_argument("--generate-seconds", type=float, default=40.0, help="time each generate run this long")
    ap.add_argument("--stop-after", type=float, default=170.0, help="skip kner unconstrained after this many s")
    ap.add_argument("--fused-generate", action="store_true", help="generate through kner's fused LoRA forward too")
    ap.add_argument("--skip-unconstrained", action="store_true", help="time only the constrained generate")
    ap.add_argument("--cpu-rows", type=int, default=8, help="row cap of 'fitted' on CPU (no memory to fit)")
    run(ap.parse_args())


if __name__ == "__main__":
    main()
