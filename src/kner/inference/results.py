"""What a prediction run returns: per-text ``Prediction`` and the run's ``RunStats``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

from kner.data.example import Entity


@dataclass
class Prediction:
    entities: list[Entity]
    outputs: list[str] = field(default_factory=list)  # raw tag text, one per piece
    truncated: int = 0  # pieces whose budget ran out mid-tag
    problems: list[str] = field(default_factory=list)  # parse problems (unconstrained decoding only)
    error: str | None = None  # why the text was not processed (no entities then)


@dataclass
class RunStats:
    texts: int = 0
    empty: int = 0
    failed: int = 0  # texts that could not be processed (Prediction.error), e.g. a lone surrogate
    pieces: int = 0
    split_texts: int = 0
    seconds: float = 0.0
    new_tokens: int = 0
    prompt_tokens: int = 0
    steps: int = 0  # forwards: decode steps and prefills
    batches: int = 0  # prefill forwards (admission groups)
    batch_sizes: list[int] = field(default_factory=list)  # most rows decoding at once, per engine run
    oom_retries: int = 0
    truncated: int = 0
    unparsed: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    preemptions: int = 0
    row_steps: int = 0  # rows summed over decode steps: new tokens per step = new_tokens / steps
    pool_tokens: int = 0
    graphs: int = 0  # CUDA graphs captured (decode buckets met)
    graph_steps: int = 0  # decode steps replayed from one
    capture_seconds: float = 0.0  # steps that capture a graph (a bucket's first): warm-up (a run's first) + capture

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    def merge(self, other: RunStats) -> RunStats:
        """Add ``other``'s counts (another chunk or worker) into this one: sums, lists joined, the
        largest K/V pool; ``seconds`` add up too (a caller timing the runs side by side sets its own)."""
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "pool_tokens":
                setattr(self, f.name, max(a, b))
            elif isinstance(a, Counter):
                a.update(b)
            elif isinstance(a, list):
                a.extend(b)
            else:
                setattr(self, f.name, a + b)
        return self

    def to_record(self) -> dict[str, Any]:
        """Every field, JSON-ready (a worker's state file); :meth:`from_record` reads it back."""
        return {f.name: (dict(v) if isinstance(v := getattr(self, f.name), Counter) else v) for f in fields(self)}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> RunStats:
        names = {f.name for f in fields(cls)}
        st = cls(**{k: v for k, v in rec.items() if k in names and k != "labels"})
        st.labels = Counter(rec.get("labels") or {})
        st.batch_sizes = list(st.batch_sizes)
        return st

    def to_dict(self) -> dict[str, Any]:
        """The summary ``kner predict`` prints and the benchmarks record."""
        return {
            "texts": self.texts,
            "empty": self.empty,
            "failed": self.failed,
            "pieces": self.pieces,
            "split_texts": self.split_texts,
            "seconds": round(self.seconds, 3),
            "texts_per_s": round(self.texts_per_s, 3),
            "new_tokens": self.new_tokens,
            "tokens_per_s": round(self.tokens_per_s, 1),
            "prompt_tokens": self.prompt_tokens,
            "steps": self.steps,
            "batches": self.batches,
            "max_batch": max(self.batch_sizes, default=0),
            "oom_retries": self.oom_retries,
            "truncated": self.truncated,
            "unparsed": self.unparsed,
            "labels": dict(self.labels.most_common()),
            "preemptions": self.preemptions,
            "pool_tokens": self.pool_tokens,
            "graphs": self.graphs,
            "graph_steps": self.graph_steps,
            "capture_seconds": round(self.capture_seconds, 2),
            "mean_rows_per_decode_step": (
                round(self.row_steps / max(1, self.steps - self.batches), 1) if self.row_steps else None
            ),
        }
