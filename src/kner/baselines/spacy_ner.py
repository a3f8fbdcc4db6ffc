"""spaCy NER baseline: train a tok2vec + NER pipeline with spaCy's own loop, predict with any pipeline.

Training writes, under ``out_dir``: ``corpus/{train,dev}.spacy`` (DocBin),
``config.cfg`` (the config used), spaCy's ``model-best/`` and ``model-last/``,
and ``kner-spacy.json`` (tokenizer, how gold spans were fitted onto tokens,
timings). Prediction works for such a directory or any installed spaCy
pipeline and returns canonical examples whose offsets index the input text.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import platform
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import spacy
import spacy.util
from spacy.cli.train import train as spacy_train
from spacy.language import Language
from spacy.tokens import DocBin
from spacy.vocab import Vocab

from kner.baselines.tokenization import (
    HANDLINGS,
    MODES,
    AlignmentReport,
    fit_spans,
    make_doc,
    register,
    tokenize,
)
from kner.data.example import Entity, Example, strip_span
from kner.data.schemes import Mapping, map_examples
from kner.errors import ConfigError, DataError, KnerError

register()

DEFAULT_TOKENIZER = "kiwi"
REPORT_NAME = "kner-spacy.json"
# Components that never add or change entities: skipped when predicting with
# a full pipeline such as ko_core_news_lg, which saves most of its time.
_NOT_FOR_NER = {
    "tagger",
    "morphologizer",
    "parser",
    "lemmatizer",
    "trainable_lemmatizer",
    "senter",
    "sentencizer",
    "textcat",
    "textcat_multilabel",
    "spancat",
    "attribute_ruler",
    "entity_linker",
    "tok2vec_tagger",
}


def default_config_path() -> Path:
    return Path(str(resources.files("kner") / "resources" / "spacy" / "ner.cfg"))


def _retag(
    old: Sequence[tuple[int, int]], tags: Sequence[str] | None, new: Sequence[tuple[int, int]]
) -> list[str] | None:
    # Tokens split at entity boundaries keep the tag of the token they came from.
    if tags is None:
        return None
    out, j = [], 0
    for s, _ in new:
        while old[j][1] <= s:
            j += 1
        out.append(tags[j])
    return out


def examples_to_docbin(
    examples: Iterable[Example], mode: str, handling: str = "expand", vocab=None
) -> tuple[Any, AlignmentReport]:
    """Gold examples as a spaCy ``DocBin``, with a count of every span that had to be changed."""
    vocab = vocab if vocab is not None else Vocab()
    report = AlignmentReport(mode, handling)
    db = DocBin(attrs=["ORTH", "TAG", "ENT_IOB", "ENT_TYPE"], store_user_data=False)
    for ex in examples:
        offsets, tags = tokenize(ex.text, mode)
        new_offsets, spans = fit_spans(ex.text, offsets, ex.entities, handling, report)
        if new_offsets is not offsets:
            tags = _retag(offsets, tags, new_offsets)
        doc = make_doc(vocab, ex.text, new_offsets, tags)
        ents = []
        for s, e, label in spans:
            span = doc.char_span(s, e, label=label)
            if span is None:  # pragma: no cover - fit_spans guarantees token boundaries
                raise AssertionError(f"{ex.id}: span [{s},{e}) is not on token boundaries")
            ents.append(span)
        doc.set_ents(ents, default="outside")
        db.add(doc)
    return db, report


def _check_examples(examples: Sequence[Example], what: str) -> None:
    if not examples:
        raise DataError(f"the {what} set is empty")
    if not any(ex.entities for ex in examples):
        raise DataError(f"the {what} set has no entities; NER cannot be trained or scored on it")


def train_spacy(
    train: Sequence[Example],
    dev: Sequence[Example],
    out_dir: str | Path,
    tokenizer: str = DEFAULT_TOKENIZER,
    config: str | Path | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    handling: str = "expand",
    overrides: dict[str, Any] | None = None,
    verbose: bool = True,
) -> Path:
    """Train spaCy's tok2vec + NER on ``train`` (model selection on ``dev``); return the best pipeline's directory.

    ``tokenizer`` is one of ``char``, ``kiwi``, ``whitespace``; ``handling``
    says what happens to gold spans that do not start and end on token
    boundaries (``expand``, ``contract`` or ``split``), all counted in
    ``kner-spacy.json``. ``overrides`` are spaCy config overrides such as
    ``{"training.max_epochs": 3}``.
    """
    if tokenizer not in MODES:
        raise ConfigError(f"unknown tokenizer {tokenizer!r}; choose one of {', '.join(MODES)}")
    if handling not in HANDLINGS:
        raise ConfigError(f"unknown span handling {handling!r}; choose one of {', '.join(HANDLINGS)}")
    _check_examples(train, "training")
    _check_examples(dev, "dev")
    config_path = Path(config) if config is not None else default_config_path()
    if not config_path.is_file():
        raise ConfigError(f"spaCy config {config_path} not found")

    _log_once()
    out = Path(out_dir)
    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    vocab = spacy.vocab.Vocab()
    train_db, train_rep = examples_to_docbin(train, tokenizer, handling, vocab)
    dev_db, dev_rep = examples_to_docbin(dev, tokenizer, "expand", vocab)
    train_db.to_disk(corpus / "train.spacy")
    dev_db.to_disk(corpus / "dev.spacy")
    prep_s = time.perf_counter() - t0
    if verbose:
        print(f"train: {train_rep.summary()}")
        print(f"dev:   {dev_rep.summary()}")

    ov: dict[str, Any] = {
        "paths.train": str(corpus / "train.spacy"),
        "paths.dev": str(corpus / "dev.spacy"),
        "nlp.tokenizer": {"@tokenizers": "kner.KoreanTokenizer.v1", "mode": tokenizer},
        "system.seed": seed,
    }
    if max_steps is not None:
        ov["training.max_steps"] = int(max_steps)
    ov.update(overrides or {})
    cfg = spacy.util.load_config(config_path, overrides=ov, interpolate=False)
    used_config = out / "config.cfg"
    cfg.to_disk(used_config)

    t1 = time.perf_counter()
    try:
        if verbose:
            spacy_train(used_config, out, use_gpu=-1)
        else:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                spacy_train(used_config, out, use_gpu=-1)
    except SystemExit as err:  # spaCy's msg.fail() exits; turn it into a user error
        raise ConfigError(f"spaCy training stopped (exit {err.code}); see the messages above") from None
    train_s = time.perf_counter() - t1

    best = out / "model-best"
    meta = json.loads((best / "meta.json").read_text(encoding="utf-8"))
    report = {
        "tokenizer": tokenizer,
        "handling": handling,
        "seed": seed,
        "config": str(config_path),
        "overrides": {k: v for k, v in ov.items() if not k.startswith("paths.")},
        "train_examples": len(train),
        "dev_examples": len(dev),
        "alignment": {"train": train_rep.to_dict(), "dev": dev_rep.to_dict()},
        "prepare_seconds": round(prep_s, 2),
        "train_seconds": round(train_s, 2),
        "dev_scores": meta.get("performance", {}),
        "labels": sorted(meta.get("labels", {}).get("ner", [])),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "spacy": spacy.__version__,
        },
    }
    (out / REPORT_NAME).write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    return best


def _log_once() -> None:
    """spaCy gives its "spacy" logger a stream handler of its own, and the records also propagate to the
    root logger: when the application has configured root logging (the kner CLI does), every spaCy line
    (training's "Set up nlp object from config", ...) would print twice, once in each format."""
    own = getattr(spacy.util, "logger_stream_handler", None)
    if own is not None and logging.getLogger().handlers:
        logging.getLogger("spacy").removeHandler(own)


def resolve_model(model: str | Path) -> str | Path:
    """A training output directory means its ``model-best``; anything else is passed to ``spacy.load``."""
    p = Path(str(model))
    # A pipeline directory always has meta.json; a training output has none at its top.
    if p.is_dir() and (p / "model-best").is_dir() and not (p / "meta.json").is_file():
        return p / "model-best"
    return p if p.exists() else str(model)


def load_pipeline(model: Any):
    """A loaded ``Language`` for a pipeline object, directory, training output directory or package name."""
    if isinstance(model, Language):
        return model
    target = resolve_model(model)
    if isinstance(target, Path) and not (target / "config.cfg").is_file():
        raise KnerError(f"{target} is not a spaCy pipeline directory (no config.cfg)")
    try:
        nlp = spacy.load(target)
    except OSError as err:
        if isinstance(target, str):
            raise KnerError(
                f"no spaCy pipeline {target!r}: not a directory and not an installed package "
                f"(install it with `python -m spacy download {target}`)"
            ) from None
        raise KnerError(f"cannot load spaCy pipeline {target}: {err}") from None
    if "ner" not in nlp.pipe_names and not any(
        nlp.get_pipe_meta(n).factory in ("ner", "entity_ruler", "span_ruler") for n in nlp.pipe_names
    ):
        raise KnerError(f"spaCy pipeline {model} has no entity recognizer (pipes: {', '.join(nlp.pipe_names)})")
    return nlp


def pipeline_labels(nlp) -> list[str]:
    labels: set[str] = set()
    for name in nlp.pipe_names:
        pipe = nlp.get_pipe(name)
        if nlp.get_pipe_meta(name).factory in ("ner", "entity_ruler", "beam_ner"):
            labels.update(getattr(pipe, "labels", ()) or ())
    return sorted(labels)


def check_mapping_covers(labels: Iterable[str], mapping: Mapping | None, fallback: str | None) -> None:
    """Fail before predicting if the pipeline can emit a label the mapping does not know."""
    if mapping is None or fallback is not None:
        return
    missing = sorted(set(labels) - set(mapping.table))
    if missing:
        raise ConfigError(
            f"the pipeline predicts labels {', '.join(missing)} that the mapping does not cover; "
            f"add rows for them or give a fallback label ('-' drops them)"
        )


def predict_spacy_with_report(
    model: Any,
    examples: Sequence[Example],
    mapping: Mapping | None = None,
    fallback: str | None = None,
    batch_size: int = 256,
) -> tuple[list[Example], dict]:
    """Like :func:`predict_spacy`, and a report: counts per predicted label and what the mapping did."""
    nlp = load_pipeline(model)
    check_mapping_covers(pipeline_labels(nlp), mapping, fallback)
    disable = [n for n in nlp.pipe_names if nlp.get_pipe_meta(n).factory in _NOT_FOR_NER]
    raw: Counter = Counter()
    preds: list[Example] = []
    t0 = time.perf_counter()
    with nlp.select_pipes(disable=disable):
        for ex, doc in zip(examples, nlp.pipe((ex.text for ex in examples), batch_size=batch_size)):
            if doc.text != ex.text:  # pragma: no cover - spaCy tokenization is non-destructive
                raise KnerError(f"{ex.id}: the pipeline's tokenizer changed the text")
            ents = []
            for ent in doc.ents:
                s, e = strip_span(ex.text, ent.start_char, ent.end_char)
                if s == e:
                    continue
                ents.append(Entity(s, e, ent.label_, ex.text[s:e]))
                raw[ent.label_] += 1
            preds.append(Example(ex.id, ex.text, sorted(set(ents)), dict(ex.meta)))
    seconds = time.perf_counter() - t0
    report: dict[str, Any] = {
        "examples": len(examples),
        "seconds": round(seconds, 3),
        "predicted": dict(sorted(raw.items())),
    }
    if mapping is not None:
        preds, mrep = map_examples(preds, mapping, fallback)
        report["mapped"] = {f"{a}->{b}": n for (a, b), n in sorted(mrep.mapped.items())}
        report["dropped"] = dict(mrep.dropped)
        report["fallback"] = dict(mrep.fallback)
    for p in preds:
        for x in p.entities:
            assert p.text[x.start : x.end] == x.text
    return preds, report


def predict_spacy(
    model: Any,
    examples: Sequence[Example],
    mapping: Mapping | None = None,
    fallback: str | None = None,
    batch_size: int = 256,
) -> list[Example]:
    """Entities predicted by a spaCy pipeline (a ``Language``, directory or package name).

    Ids, texts and meta are copied from ``examples`` (their gold entities are
    ignored); labels go through ``mapping`` when given, and a label without a
    row raises unless ``fallback`` names a target (``'-'`` drops it).
    """
    return predict_spacy_with_report(model, examples, mapping, fallback, batch_size)[0]


def parse_label_map(spec: str, source: str = "model", target: str = "target") -> Mapping:
    """``'PS=PER,LC=LOC,QT=-'`` as a :class:`Mapping` (``-`` drops the label on purpose)."""
    table: dict[str, str | None] = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ConfigError(f"--label-map item {item!r} must look like SOURCE=TARGET")
        src, dst = (x.strip() for x in item.split("=", 1))
        if not src or not dst:
            raise ConfigError(f"--label-map item {item!r} must look like SOURCE=TARGET")
        if src in table:
            raise ConfigError(f"--label-map maps {src!r} twice")
        table[src] = None if dst == "-" else dst
    if not table:
        raise ConfigError("--label-map is empty")
    return Mapping(source, target, table, {})


def load_mapping(spec: str) -> Mapping:
    """A mapping TSV file, or a built-in mapping by name such as ``klue-to-spacy19``."""
    p = Path(spec)
    if p.is_file():
        return Mapping.load("model", "target", p)
    if "-to-" in spec and not p.suffix:
        src, dst = spec.split("-to-", 1)
        return Mapping.load(src, dst)
    raise ConfigError(f"mapping {spec!r} is neither a file nor a built-in mapping name such as klue-to-spacy19")
