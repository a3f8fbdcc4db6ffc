"""``Extractor``: texts in, entity spans out, in batches that fit the GPU.

Pipeline for a list of texts:

1. empty texts get no entities and no generation; long texts are split into
   pieces that fit the context window (:mod:`kner.inference.pieces`, :mod:`kner.inference.chunking`);
2. every piece's prompt is tokenized; the instruction prefix is the part all
   prompts share, and its K/V is computed once (:mod:`kner.inference.prefix_cache`);
3. pieces are greedy-decoded by the paged engine (:mod:`kner.inference.engine`),
   longest work first, rows joining and leaving as they finish, within a K/V pool
   sized from free GPU memory (:mod:`kner.inference.memory`), by default under the
   tag-grammar constraint (:mod:`kner.inference.constrained`), so every output
   parses and every entity is a real span of its text; a run that still goes out
   of memory is redone for the unfinished pieces with half the rows and pool;
5. outputs are parsed with :func:`kner.model.prompt.parse_tags` -- the same parser
   training-time evaluation uses -- and offsets are mapped back to the document.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from kner.data.example import Entity, Example
from kner.data.schemes import Scheme, load_scheme
from kner.errors import ConfigError, KnerError
from kner.inference.constrained import ConstrainedChooser, TagGrammar
from kner.inference.loader import load_parts, match_adapter_dtype
from kner.inference.memory import ModelDims, largest_linear_elems, plan_engine, release_memory, usable_memory
from kner.inference.options import ExtractorConfig
from kner.inference.pieces import Piece, common_prefix, context_limit, make_pieces, max_text_tokens
from kner.inference.results import Prediction, RunStats
from kner.inference.vocab import TokenTable, eos_token_ids
from kner.model.oom import is_oom
from kner.model.prompt import PromptEncoder, PromptFormat, parse_tags
from kner.textio import text_problem

if TYPE_CHECKING:
    from kner.inference.engine import EngineStats
    from kner.inference.prefix_cache import PrefixKV
    from kner.inference.stream import JobSource

log = logging.getLogger(__name__)


class Extractor:
    """Batched, constrained entity extraction with a fine-tuned causal LM.

    >>> with Extractor.load("runs/kmou-qlora") as ex:     # doctest: +SKIP
    ...     ex(["이순신은 조선의 장군이다."])
    [[Entity(start=0, end=3, label='PER', text='이순신'), ...]]

    The model, the prefix K/V and (during a run) the K/V pool are given back when the
    extractor is closed (:meth:`close`, the end of a ``with`` block) or its last reference
    goes: nothing of it waits for a ``gc.collect()``.
    """

    def __init__(
        self,
        model,
        tokenizer,
        scheme: Scheme | str = "spacy19",
        prompt: PromptFormat | None = None,
        config: ExtractorConfig | None = None,
        **opts,
    ):
        self._closed = False
        self.model = model
        self.tokenizer = tokenizer
        self.scheme = load_scheme(scheme)
        self.prompt = prompt or PromptFormat()
        self.config = replace(config, **opts) if config is not None else ExtractorConfig.from_options(**opts)

        self.prefix_text, self.suffix_text = self.prompt.parts(self.scheme)
        # Training tokenizes prompts through the same encoder: identical ids, identical prefix.
        self.encoder = PromptEncoder(tokenizer, self.prompt, self.scheme)
        self.prefix_ids: list[int] = self.encoder.prefix_ids
        self._prefix_cache: PrefixKV | None = None
        self._table: TokenTable | None = None
        self._grammars: dict[bool, object] = {}
        self._batch_cap: int | None = None  # lowered after an out-of-memory retry
        self._pool_scale = 1.0  # likewise
        self.last_stats = RunStats()
        if self.config.adapter_dtype == "model":
            match_adapter_dtype(model)
        elif self.config.adapter_dtype != "keep":
            raise ConfigError("adapter_dtype must be 'model' or 'keep'")
        from kner.inference.fused import fuse_lora  # noqa: PLC0415  lazy: torch; kner.config imports kner.inference

        self.fused_layers = fuse_lora(model) if self.config.fuse_lora else 0
        if self.fused_layers:
            _fused_users[model] = _fused_users.get(model, 0) + 1

    # -- loading ------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        adapter: str | Path | None = None,
        scheme: str | Scheme | None = None,
        prompt: PromptFormat | None = None,
        quantize_4bit: bool | None = None,
        compute_dtype: str | None = None,
        allow_pickle: bool = False,
        **opts,
    ) -> Extractor:
        """Load the output folder of ``kner train`` (or ``kner export``), or a base model plus ``adapter``.

        ``path`` may be a Hub repo id: a repo with a ``kner.json`` (``kner export --hub``) is
        downloaded (or read from the cache under ``HF_HUB_OFFLINE=1``) and loaded like a folder.
        Without a ``kner.json``, ``path`` is a base model (hub name or folder) and ``scheme``
        (default ``spacy19``) and ``prompt`` (default :class:`PromptFormat`) say how the
        adapter was trained. Weights load from safetensors only unless ``allow_pickle``.
        """
        model, tokenizer, sch, pr = load_parts(
            path,
            adapter=adapter,
            scheme=scheme,
            prompt=prompt,
            quantize_4bit=quantize_4bit,
            compute_dtype=compute_dtype,
            allow_pickle=allow_pickle,
        )
        return cls(model, tokenizer, sch, pr, **opts)

    # -- lifetime -------------------------------------------------------------------
    def close(self) -> None:
        """Give back the model and the prefix K/V now (the K/V pool lives only during a run); idempotent.

        The LoRA layers this extractor fused get peft's forward back (unless another open
        extractor fused the same model): a fused forward is a bound method stored on its own
        layer, a reference cycle that kept the layer's weights alive until a ``gc.collect()``.
        On CUDA the caching allocator's free blocks go back to the device, for other processes
        and for ``nvidia-smi``. Using the extractor afterwards raises :class:`KnerError`.
        """
        if getattr(self, "_closed", True):
            return
        self._closed = True
        model = self.model
        if getattr(self, "fused_layers", 0):
            users = _fused_users.pop(model, 1) - 1
            if users > 0:
                _fused_users[model] = users
            else:
                from kner.inference.fused import unfuse_lora  # noqa: PLC0415  lazy: torch; kner.config imports kner.inference

                unfuse_lora(model)
        self.model = None
        self._prefix_cache = None
        self._grammars.clear()
        self._table = None
        del model
        import torch  # noqa: PLC0415  lazy: torch; kner.config imports kner.inference

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> Extractor:
        self._check_open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 -- at interpreter exit torch may be half torn down
            pass

    def _check_open(self) -> None:
        if self._closed:
            raise KnerError("extractor is closed: load a new one (Extractor.load) to predict again")

    # -- public API ---------------------------------------------------------------
    def __call__(self, texts: Sequence[str] | str) -> list[list[Entity]]:
        if isinstance(texts, str):
            raise TypeError("pass a list of texts (a single string would be read as characters)")
        preds = self.predict(texts)
        failed = [(i, p.error) for i, p in enumerate(preds) if p.error]
        if failed:  # entities alone cannot say that a text was skipped
            log.warning(
                "%d of %d text(s) cannot be processed and got no entities (text %d: %s)",
                len(failed),
                len(texts),
                failed[0][0] + 1,
                failed[0][1],
            )
        return [p.entities for p in preds]

    def predict_examples(self, examples: Iterable[Example], progress=None) -> list[Example]:
        """Same ids, texts and meta; entities replaced by predictions (for the evaluation pipeline)."""
        examples = list(examples)
        preds = self.predict([ex.text for ex in examples], progress=progress)
        return [
            Example(ex.id, ex.text, p.entities, {**ex.meta, "error": p.error} if p.error else dict(ex.meta))
            for ex, p in zip(examples, preds)
        ]

    def predict(
        self,
        texts: Sequence[str],
        progress: Callable[[int, int], None] | None = None,
        new_tokens: Sequence[int] | None = None,
    ) -> list[Prediction]:
        """Predictions per text. ``progress(done, total)`` is called after each batch (pieces).

        ``new_tokens`` (benchmarks) fixes each text's new-token budget; with
        ``ignore_eos`` every row then generates exactly that many tokens.
        A text no tokenizer can take (:func:`kner.textio.text_problem`, e.g. a lone
        surrogate) gets no entities and its ``Prediction.error``; the others are predicted.
        """
        import torch  # noqa: PLC0415  lazy: torch; kner.config imports kner.inference

        self._check_open()
        t0 = time.perf_counter()
        stats = RunStats(texts=len(texts))
        failed = {i: why for i, t in enumerate(texts) if (why := text_problem(t)) is not None}
        stats.failed = len(failed)
        pieces = self._pieces(texts, stats, new_tokens, skip=failed)
        stats.pieces = len(pieces)
        if pieces:
            prefix = self._prefix(min(common_prefix(p.ids, self.prefix_ids) for p in pieces))
            # Longest work first: prompt plus new-token budget (which decides how many decode
            # steps a text holds a row). A text with a short prompt but a long answer admitted
            # last would decode alone at the end for hundreds of steps.
            order = sorted(range(len(pieces)), key=lambda i: (-(len(pieces[i].ids) + pieces[i].max_new), i))
            self._decode(pieces, order, prefix, stats, progress)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        preds = self._assemble(texts, pieces, stats)
        for i, why in failed.items():
            preds[i].error = why
        stats.seconds = time.perf_counter() - t0
        self.last_stats = stats
        return preds

    def serve(self, source: JobSource, stats: EngineStats | None = None) -> None:
        """Extract the jobs ``source`` hands over until it closes, each joining the running engine and
        finished as soon as its own texts are (``kner serve``'s engine thread; :mod:`kner.inference.stream`).
        ``stats``: the engine's counters, updated as it runs."""
        from kner.inference.stream import serve  # noqa: PLC0415  lazy: torch; kner.config imports kner.inference

        self._check_open()
        serve(self, source, stats)

    # -- internals ------------------------------------------------------------------
    def _decode(self, pieces, order, prefix, stats: RunStats, progress) -> None:
        """Decode ``pieces`` (in ``order``) with the paged engine; out of memory: redo the unfinished ones
        with half the rows and half the pool (and keep that size for later calls)."""
        remaining, finished = list(order), set[int]()
        while remaining:
            plan = self._engine_plan(pieces, remaining, prefix.length)
            try:
                self._run_engine(pieces, remaining, prefix, plan, stats, finished, progress)
                break
            except Exception as err:  # noqa: BLE001 -- only OOM is handled, the rest re-raised
                if not is_oom(err):
                    raise
            self._after_oom(plan.max_rows)
            stats.oom_retries += 1
            remaining = [k for k in remaining if k not in finished]
        if progress is not None:
            progress(len(finished), len(pieces))

    def _after_oom(self, max_rows: int) -> None:
        """Half the rows and half the pool, for the retry and every later run; KnerError at a single row."""
        release_memory()
        if max_rows == 1 and self._pool_scale < 1 / 64:
            raise KnerError(
                "out of GPU memory with a single sequence; lower --max-chunk-tokens "
                "or --max-new-tokens, or free GPU memory"
            )
        self._batch_cap = max(1, max_rows // 2)
        self._pool_scale /= 2
        log.warning("out of GPU memory with up to %d rows; retrying with %d", max_rows, self._batch_cap)

    def _chooser(self, texts: dict[int, str]):
        """The grammar over ``texts`` (key -> piece text; the engine's keys) or plain argmax."""
        from kner.inference.engine import GreedyChooser  # noqa: PLC0415  lazy: torch; kner.config imports kner.inference

        cfg = self.config
        if cfg.constrained:
            return ConstrainedChooser(self.grammar(cfg.ignore_eos), texts, cycle=cfg.ignore_eos)
        return GreedyChooser(len(self.tokenizer))

    def _engine(self, prefix, plan):
        from kner.inference.engine import PagedEngine  # noqa: PLC0415  lazy: torch; kner.config imports kner.inference

        cfg = self.config
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return PagedEngine(
            self.model,
            prefix,
            pool_tokens=plan.pool_tokens,
            max_rows=plan.max_rows,
            transient_tokens=plan.transient_tokens,
            eos_ids=self._eos_ids(),
            pad_id=pad,
            prefill_chunk_tokens=cfg.prefill_chunk_tokens,
            ignore_eos=cfg.ignore_eos,
            logits_hook=cfg.logits_hook,
        )

    def _run_engine(self, pieces, keys, prefix, plan, stats: RunStats, finished: set, progress) -> None:
        from kner.inference.engine import Request  # noqa: PLC0415  lazy: torch; kner.config imports kner.inference

        chooser = self._chooser({k: pieces[k].text for k in keys})
        engine = self._engine(prefix, plan)
        last = 0.0

        def on_done(k: int, toks: list[int]) -> None:
            nonlocal last
            self._decode_output(pieces[k], k, chooser, toks)
            finished.add(k)
            now = time.perf_counter()
            if progress is not None and (now - last > 0.25 or len(finished) == len(pieces)):
                last = now
                progress(len(finished), len(pieces))

        p = prefix.length
        st = engine.run([Request(k, pieces[k].ids[p:], pieces[k].max_new) for k in keys], chooser, on_done)
        stats.merge(
            RunStats(
                new_tokens=st.new_tokens,
                steps=st.steps + st.prefills,
                batches=st.prefills,
                batch_sizes=[st.peak_rows],
                preemptions=st.preemptions,
                row_steps=st.row_steps,
                pool_tokens=st.pool_tokens,
                graphs=st.graphs,
                graph_steps=st.graph_steps,
                capture_seconds=st.capture_seconds,
            )
        )

    def _decode_output(self, pc: Piece, key: int, chooser, toks: list[int]) -> None:
        """A finished piece's tag text: the grammar's own bytes when constrained, else the tokenizer's decode."""
        if self.config.constrained:
            pc.output, pc.truncated = chooser.output(key)
            chooser.release(key)
        else:
            pc.output = self.tokenizer.decode(toks, skip_special_tokens=True)
            pc.truncated = len(toks) >= pc.max_new

    def _engine_plan(self, pieces, keys, prefix_len):
        foot = [len(pieces[k].ids) - prefix_len + pieces[k].max_new for k in keys]
        return self._plan(foot, max(len(pieces[k].ids) - prefix_len for k in keys), prefix_len)

    def _plan(self, foot: list[int], suffix_max: int, prefix_len: int):
        """Rows and pool for texts of these footprints (prompt after the prefix + new-token budget)."""
        cfg = self.config
        cap = cfg.batch_size or cfg.max_batch_size
        if self._batch_cap is not None:
            cap = min(cap, self._batch_cap)
        dev = self.model.get_input_embeddings().weight.device
        usable = usable_memory(dev, int(cfg.max_memory * 1024**3) if cfg.max_memory else None)
        if usable is None and cfg.batch_size is None:
            cap = min(cap, cfg.cpu_batch_size)
        if not hasattr(self, "_dims"):
            from kner.inference import paged_attention  # noqa: PLC0415  lazy: torch; kner.config imports kner.inference

            self._dims = ModelDims.from_model(self.model)
            self._largest = largest_linear_elems(self.model)
            # The decode attention reads the pool in place (no transient gather to plan for) where it can.
            self._gathers = not (
                paged_attention.kernel_available(dev) and paged_attention.model_supported(self.model.config)
            )
        plan = plan_engine(
            self._dims,
            prefix_len=prefix_len,
            footprints=foot,
            suffix_max=suffix_max,
            usable=usable,
            max_rows=cap,
            prefill_chunk_tokens=cfg.prefill_chunk_tokens,
            safety=cfg.memory_safety,
            largest_weight_elems=self._largest,
            gathers=self._gathers,
        )
        plan.pool_tokens = int(plan.pool_tokens * self._pool_scale)
        return plan

    @property
    def table(self):
        if self._table is None:
            out = self.model.get_output_embeddings()
            vocab = out.weight.shape[0] if out is not None else None
            self._table = TokenTable.cached(self.tokenizer, vocab, self.model)
        return self._table

    def grammar(self, ignore_eos: bool = False):
        g = self._grammars.get(ignore_eos)
        if g is None:
            g = self._grammars[ignore_eos] = TagGrammar(
                self.table, self.scheme.names, self.prompt.separator, ignore_eos=ignore_eos
            )
        return g

    def _max_text_tokens(self) -> int:
        ctx = context_limit(self.model, self.tokenizer)
        return max_text_tokens(self.config, ctx, self.tokenizer, len(self.prefix_ids), self.suffix_text)

    def _pieces(self, texts: Sequence[str], stats: RunStats, new_tokens: Sequence[int] | None, skip=()) -> list[Piece]:
        max_text = self._max_text_tokens()
        return make_pieces(
            texts,
            stats,
            new_tokens,
            skip,
            cfg=self.config,
            tokenizer=self.tokenizer,
            encoder=self.encoder,
            max_text=max_text,
        )

    def _prefix(self, n: int):
        from kner.inference.prefix_cache import PrefixKV  # noqa: PLC0415  lazy: torch; kner.config imports kner.inference

        if self._prefix_cache is None:
            try:
                self._prefix_cache = PrefixKV.encode(self.model, self.prefix_ids)
            except Exception as err:  # noqa: BLE001
                if is_oom(err):
                    raise KnerError("out of GPU memory encoding the instruction prefix; free GPU memory") from None
                raise
        return self._prefix_cache.truncated(n)

    def _eos_ids(self) -> set[int]:
        return eos_token_ids(self.tokenizer, self.model)

    def _assemble(self, texts, pieces: list[Piece], stats: RunStats) -> list[Prediction]:
        preds = [Prediction([]) for _ in texts]
        for pc in pieces:
            pred = preds[pc.doc]
            res = parse_tags(pc.output, pc.text, self.scheme)
            pred.outputs.append(pc.output)
            if pc.truncated:
                pred.truncated += 1
                stats.truncated += 1
            if not res.ok:
                stats.unparsed += 1
                pred.problems.extend(res.problems())
                if self.config.constrained and not self.config.ignore_eos:
                    log.error("constrained output did not parse (a bug): %r on %r", pc.output, pc.text)
            for e in res.entities:
                pred.entities.append(Entity(e.start + pc.offset, e.end + pc.offset, e.label, e.text))
        for pred in preds:
            pred.entities.sort()
            stats.labels.update(e.label for e in pred.entities)
        return preds


# model -> how many open extractors fused its LoRA layers: the last one to close unfuses them.
_fused_users: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
