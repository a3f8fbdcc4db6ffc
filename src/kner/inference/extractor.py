"""``Extractor``: texts in, entity spans out, in batches that fit the GPU.

Pipeline for a list of texts:

1. empty texts get no entities and no generation; long texts are split into
   pieces that fit the context window (:mod:`kner.inference.chunking`);
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
import math
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kner.data.example import Entity, Example
from kner.data.schemes import Scheme, load_scheme
from kner.errors import ConfigError, KnerError
from kner.inference.chunking import split_document
from kner.inference.constrained import ConstrainedChooser, TagGrammar
from kner.inference.memory import ModelDims, largest_linear_elems, plan_engine, release_memory, usable_memory
from kner.inference.results import Prediction, RunStats
from kner.inference.vocab import TokenTable, eos_token_ids
from kner.model import compat, hub
from kner.model.artifacts import MANIFEST, ModelManifest
from kner.model.loading import LoadSpec, load_model, load_tokenizer
from kner.model.oom import is_oom
from kner.model.prompt import PromptEncoder, PromptFormat, parse_tags
from kner.textio import text_problem

if TYPE_CHECKING:
    from kner.inference.engine import EngineStats
    from kner.inference.prefix_cache import PrefixKV
    from kner.inference.stream import JobSource

log = logging.getLogger(__name__)


@dataclass
class ExtractorConfig:
    constrained: bool = True
    batch_size: int | None = None  # fixed rows per batch; None = plan from free memory
    max_batch_size: int = 256
    cpu_batch_size: int = 16
    max_memory: float | None = None  # GiB this process may use on the GPU (None: all that is free)
    memory_safety: float = (
        0.92  # share of free memory planned; 0.85 left 3.8 GiB of a 15 GiB cap unused (docs/inference.md)
    )
    new_tokens_factor: float = 1.2  # new-token budget = ceil(text tokens x factor) + overhead
    new_tokens_overhead: int = 16
    max_new_tokens: int | None = None  # hard cap on the budget
    max_chunk_tokens: int = 384  # longer texts are split (and anything not fitting the context)
    prefill_chunk_tokens: int = 2048
    ignore_eos: bool = False  # benchmarks: always generate the whole budget
    logits_hook: Callable | None = None  # tests: adjust logits before choosing
    adapter_dtype: str = "model"  # model: cast fp32 LoRA weights to the model's 16-bit dtype; keep
    fuse_lora: bool = True  # inference-only LoRA forward with fewer kernels (kner.inference.fused)

    @classmethod
    def from_options(cls, **opts) -> ExtractorConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(opts) - names
        if unknown:
            raise ConfigError(f"unknown extractor option(s): {', '.join(sorted(unknown))}")
        return cls(**opts)


@dataclass
class _Piece:
    doc: int
    offset: int
    text: str
    ids: list[int] = field(default_factory=list)  # full prompt ids
    text_tokens: int = 0
    max_new: int = 0
    output: str = ""
    truncated: bool = False


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
        path = Path(path) if not isinstance(path, Path) else path
        adapter_dir: Path | None = Path(adapter) if adapter else None
        repo_id = None
        if not (path / MANIFEST).is_file() and hub.looks_like_repo_id(path):
            local = hub.fetch(str(path), allow_pickle=allow_pickle)
            if local is not None:
                repo_id, path = str(path), local
        if (path / MANIFEST).is_file():
            man = ModelManifest.load_from(path)
            if repo_id is not None:
                hub.refuse_remote_code(repo_id, man.load.trust_remote_code)
            if scheme is not None and load_scheme(scheme).names != man.scheme.names:
                raise ConfigError(
                    f"{path} was trained with scheme {man.scheme.name!r}; "
                    f"predicting with {load_scheme(scheme).name!r} would misread its labels"
                )
            sch, pr, spec = man.scheme, prompt or man.prompt, man.load
            tok_dir = path / man.tokenizer_dir
            tok_src = str(tok_dir) if tok_dir.is_dir() else spec.model
            if man.model_dir:
                spec = replace(spec, model=str(path / man.model_dir))
            elif adapter_dir is None and man.adapter_dir and (path / man.adapter_dir).is_dir():
                adapter_dir = path / man.adapter_dir
        else:
            name = str(path)
            if not path.exists() and (name.startswith(("/", ".", "~")) or name.count("/") != 1):
                raise KnerError(f"{path}: no such model folder (and not a hub id like 'org/name')")
            sch = load_scheme(scheme or "spacy19")
            pr = prompt or PromptFormat()
            spec = LoadSpec(model=str(path))
            tok_src = (
                str(adapter_dir) if adapter_dir and (adapter_dir / "tokenizer_config.json").is_file() else str(path)
            )
        if quantize_4bit is not None:
            spec = replace(spec, quantize_4bit=quantize_4bit)
        if compute_dtype is not None:
            spec = replace(spec, compute_dtype=compute_dtype)
        if adapter_dir is not None and not adapter_dir.is_dir():
            raise KnerError(f"{adapter_dir}: adapter folder not found")
        if adapter_dir is not None:  # before the base model's minutes of loading
            hub.require_safetensors(adapter_dir, allow_pickle)
        tokenizer = load_tokenizer(tok_src, trust_remote_code=spec.trust_remote_code, revision=spec.revision)
        model = load_model(spec, allow_pickle=allow_pickle)
        if not spec.quantize_4bit:
            import torch  # noqa: PLC0415  lazy: torch; kner.config imports kner.inference

            if torch.cuda.is_available():
                model = model.to("cuda")
        if adapter_dir is not None:
            try:
                model = compat.load_adapter(model, adapter_dir)
            except (OSError, ValueError) as err:
                raise KnerError(f"cannot load adapter {adapter_dir}: {str(err).splitlines()[0]}") from None
        model.eval()
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
            prefix = self._prefix(min(_common_prefix(p.ids, self.prefix_ids) for p in pieces))
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
            )
        )

    def _decode_output(self, pc: _Piece, key: int, chooser, toks: list[int]) -> None:
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
            self._dims = ModelDims.from_model(self.model)
            self._largest = largest_linear_elems(self.model)
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

    def _context_limit(self) -> int | None:
        lim = ModelDims.from_model(self.model).max_positions
        tml = getattr(self.tokenizer, "model_max_length", None)
        if tml and tml < 1_000_000:
            lim = min(lim, tml) if lim else tml
        return lim

    def _max_text_tokens(self) -> int:
        cfg = self.config
        limit = cfg.max_chunk_tokens
        ctx = self._context_limit()
        if ctx:
            suffix = len(self.tokenizer(self.suffix_text, add_special_tokens=False)["input_ids"])
            room = ctx - len(self.prefix_ids) - suffix - cfg.new_tokens_overhead - 2
            fit = int(room / (1 + cfg.new_tokens_factor))
            if fit < 8:
                raise KnerError(
                    f"the model's context ({ctx} tokens) leaves no room for text after the "
                    f"{len(self.prefix_ids)}-token instruction"
                )
            limit = min(limit, fit)
        return limit

    def _pieces(self, texts: Sequence[str], stats: RunStats, new_tokens: Sequence[int] | None, skip=()) -> list[_Piece]:
        cfg = self.config
        tok = self.tokenizer
        max_text = self._max_text_tokens()
        pieces: list[_Piece] = []
        todo = [(i, t) for i, t in enumerate(texts) if i not in skip and t.strip()]
        stats.empty = len(texts) - len(todo) - len(skip)
        if new_tokens is not None and len(new_tokens) != len(texts):
            raise ValueError("new_tokens needs one budget per text")
        counts = tok([t for _, t in todo], add_special_tokens=False)["input_ids"] if todo else []

        def count(s: str) -> int:
            return len(tok(s, add_special_tokens=False)["input_ids"])

        for (i, t), ids in zip(todo, counts):
            if len(ids) <= max_text:
                pieces.append(_Piece(i, 0, t, text_tokens=len(ids)))
            else:
                stats.split_texts += 1
                for pc in split_document(t, count, max_text):
                    pieces.append(_Piece(i, pc.offset, pc.text, text_tokens=count(pc.text)))
        if pieces:
            for p in pieces:
                p.ids = self.encoder.prompt_ids(p.text).input_ids
                if new_tokens is not None:
                    p.max_new = int(new_tokens[p.doc])
                else:
                    p.max_new = math.ceil(p.text_tokens * cfg.new_tokens_factor) + cfg.new_tokens_overhead
                if cfg.max_new_tokens:
                    p.max_new = min(p.max_new, cfg.max_new_tokens)
                p.max_new = max(1, p.max_new)
            stats.prompt_tokens = sum(len(p.ids) for p in pieces)
        return pieces

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

    def _assemble(self, texts, pieces: list[_Piece], stats: RunStats) -> list[Prediction]:
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


def match_adapter_dtype(model) -> int:
    """Cast fp32 LoRA weights to the 16-bit dtype the model computes in; returns how many tensors changed.

    peft keeps adapters in fp32 on a 16-bit base, so every LoRA layer casts its
    input up and its output down: two extra kernels per linear layer per step,
    a large share of a decode step's launch overhead. In 16-bit the adapter's
    contribution changes by rounding only (as in a merged 16-bit model).
    """
    import torch  # noqa: PLC0415  lazy: torch; kner.config imports kner.inference

    try:
        target = model.get_input_embeddings().weight.dtype
    except AttributeError:
        return 0
    if target not in (torch.float16, torch.bfloat16):
        return 0
    n = 0
    for name, prm in model.named_parameters():
        if "lora_" in name and prm.dtype == torch.float32:
            prm.data = prm.data.to(target)
            n += 1
    return n


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
