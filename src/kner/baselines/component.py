"""The ``kner`` spaCy pipeline component: a trained kner model as a step of any spaCy pipeline.

>>> nlp = spacy.blank("xx")                                             # doctest: +SKIP
>>> nlp.add_pipe("kner", config={"model": "/abs/runs/kmou-qlora"})      # doctest: +SKIP
>>> [(e.text, e.label_) for e in nlp("이순신은 조선의 장군이다.").ents]   # doctest: +SKIP

The factory is registered through the ``spacy_factories`` entry point, so
``add_pipe("kner")`` and ``spacy.load`` of a saved pipeline find it without
importing kner first. The model predicts character offsets; they are snapped
to the pipeline's tokens with ``doc.char_span(..., alignment_mode=...)``:

``expand`` (default)
    widen to whole tokens: ``이순신`` in the token ``이순신은`` becomes ``이순신은``;
``contract``
    narrow to the whole tokens inside; dropped when there is none;
``strict``
    keep only entities that already start and end on token boundaries.

With a tokenizer that splits particles off (``kner.KoreanTokenizer.v1``,
``mode = "kiwi"``) most entities align exactly. What the model said is never
lost: ``doc._.kner_entities`` holds its ``(start, end, label)`` offsets and
``doc._.kner_tags`` its raw tag output (one string per piece of the text);
``doc.spans[spans_key]`` holds every aligned entity, overlapping ones included,
and ``doc.ents`` the non-overlapping ones (``spacy.util.filter_spans``: longer
first). Entities that could not be aligned are counted per doc
(``doc._.kner_unaligned``) and on the component (``component.stats``), as are
entities left out of ``doc.ents`` for overlapping (``doc._.kner_overlapping``)
and texts the model could not process (``doc._.kner_error``: the doc keeps no
kner entities and ``nlp.pipe`` goes on).

Saving the pipeline stores this component's config -- the model folder's path,
not the model -- in ``config.cfg``; ``spacy.load`` loads the model from that
path again, so use an absolute path and keep the folder where it is.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from spacy.language import Language
from spacy.tokens import Doc
from spacy.util import filter_spans, minibatch

from kner.errors import ConfigError
from kner.inference import Extractor, Prediction

log = logging.getLogger(__name__)

ALIGNMENT_MODES = ("strict", "contract", "expand")
EXTENSIONS = {"kner_entities": None, "kner_tags": None, "kner_unaligned": 0, "kner_overlapping": 0, "kner_error": None}
STAT_KEYS = ("docs", "failed", "entities", "aligned", "snapped", "unaligned", "overlapping")


def _set_extensions() -> None:
    for name, default in EXTENSIONS.items():
        if not Doc.has_extension(name):
            Doc.set_extension(name, default=default)


class KnerComponent:
    """Runs a kner extractor over docs in batches of ``batch_size`` texts."""

    def __init__(
        self,
        nlp: Language,
        name: str,
        extractor,
        *,
        alignment_mode: str = "expand",
        batch_size: int = 64,
        spans_key: str = "kner",
    ):
        if alignment_mode not in ALIGNMENT_MODES:
            raise ConfigError(
                f"kner component: alignment_mode {alignment_mode!r} is not one of {', '.join(ALIGNMENT_MODES)}"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"kner component: batch_size must be a positive whole number, not {batch_size!r}")
        _set_extensions()
        self.name = name
        self.extractor = extractor
        self.alignment_mode = alignment_mode
        self.batch_size = batch_size
        self.spans_key = spans_key
        self.stats: Counter = Counter({k: 0 for k in STAT_KEYS})

    @property
    def labels(self) -> tuple[str, ...]:
        scheme = getattr(self.extractor, "scheme", None)
        return tuple(scheme.names) if scheme is not None else ()

    def __call__(self, doc: Doc) -> Doc:
        return next(self.pipe([doc]))

    def pipe(self, stream: Iterable[Doc], batch_size: int | None = None) -> Iterator[Doc]:
        # nlp.pipe always passes its own batch_size (1000 by default), which sizes spaCy's
        # buffers; how many texts one extractor call gets is this component's setting.
        for batch in minibatch(stream, size=self.batch_size):
            yield from self._annotate(batch)

    # -- internals -------------------------------------------------------------------
    def _predict(self, docs: Sequence[Doc]) -> list:
        """One Prediction per doc; an exception in a batch is retried doc by doc so one doc cannot
        take the others down. If every doc fails on its own, the extractor itself is broken: raise."""
        texts = [d.text for d in docs]
        try:
            return self.extractor.predict(texts)
        except Exception as err:  # noqa: BLE001 -- isolated below, re-raised if it is not one doc's
            if len(docs) == 1:
                raise
            first = err
        preds = []
        for text in texts:
            try:
                preds.append(self.extractor.predict([text])[0])
            except Exception as err:  # noqa: BLE001
                preds.append(Prediction([], error=f"{type(err).__name__}: {err}"))
        if all(p.error for p in preds):
            raise first
        return preds

    def _annotate(self, docs: list[Doc]) -> Iterator[Doc]:
        preds = self._predict(docs)
        if len(preds) != len(docs):  # pragma: no cover - the extractor's contract
            raise RuntimeError(f"extractor returned {len(preds)} predictions for {len(docs)} texts")
        for doc, pred in zip(docs, preds):
            self.stats["docs"] += 1
            doc._.kner_tags = list(pred.outputs)
            doc._.kner_entities = [(e.start, e.end, e.label) for e in pred.entities]
            if pred.error:
                doc._.kner_error = pred.error
                self.stats["failed"] += 1
                log.warning("kner component: a text of %d characters got no entities: %s", len(doc.text), pred.error)
                yield doc
                continue
            spans = []
            unaligned = 0
            for e in pred.entities:
                self.stats["entities"] += 1
                span = doc.char_span(e.start, e.end, label=e.label, alignment_mode=self.alignment_mode)
                if span is None or not span.text.strip():
                    unaligned += 1
                    continue
                if span.start_char == e.start and span.end_char == e.end:
                    self.stats["aligned"] += 1
                else:
                    self.stats["snapped"] += 1
                spans.append(span)
            ents = filter_spans(spans)
            doc.spans[self.spans_key] = spans
            doc.ents = ents
            doc._.kner_unaligned = unaligned
            doc._.kner_overlapping = len(spans) - len(ents)
            self.stats["unaligned"] += unaligned
            self.stats["overlapping"] += len(spans) - len(ents)
            yield doc


@Language.factory(
    "kner",
    default_config={"model": "", "alignment_mode": "expand", "batch_size": 64, "spans_key": "kner", "options": {}},
    assigns=[
        "doc.ents",
        "doc.spans",
        "doc._.kner_tags",
        "doc._.kner_entities",
        "doc._.kner_unaligned",
        "doc._.kner_overlapping",
        "doc._.kner_error",
    ],
)
def make_kner(
    nlp: Language, name: str, model: str, alignment_mode: str, batch_size: int, spans_key: str, options: dict
) -> KnerComponent:
    """``nlp.add_pipe("kner", config={"model": DIR})``; ``options`` go to ``Extractor.load``
    (e.g. ``{"quantize_4bit": false, "max_new_tokens": 64}``)."""
    if not model:
        raise ConfigError('kner component: give the model folder, nlp.add_pipe("kner", config={"model": DIR})')
    extractor = Extractor.load(Path(model).expanduser(), **dict(options))
    return KnerComponent(
        nlp, name, extractor, alignment_mode=alignment_mode, batch_size=batch_size, spans_key=spans_key
    )
