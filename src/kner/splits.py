"""Train/dev/test splits by document, so no document's sentences leak across splits.

Documents (``meta["doc"]``, else the example id) are sorted by name and
shuffled with ``seed``, then each goes to the split whose sentence count is
furthest below its target (``ratio * total``). Sorting first makes the split
independent of input order; assigning by sentence deficit keeps the sizes close
to the ratios even when documents differ greatly in length (KMOU files hold
from one to several hundred sentences).
"""

from __future__ import annotations

import heapq
import random
from collections import defaultdict
from typing import Sequence

from kner.errors import ConfigError
from kner.example import Example

SPLITS = ("train", "dev", "test")


def balance(weights: Sequence[int], n: int, indices: Sequence[int] | None = None) -> list[list[int]]:
    """Split ``indices`` (default: all) into ``n`` lists whose weight sums are as equal as greedy gets.

    Heaviest first, each to the lightest list so far (ties: the lower position, the
    lower list), so every list gets a similar mix of long and short items and the
    workers finish together; deterministic, so processes agree without talking.
    Each list is returned in input order. Used for the shards of ``kner predict``
    and the ranks' shares of a training step.
    """
    idx = list(range(len(weights))) if indices is None else list(indices)
    heap = [(0, k) for k in range(n)]
    parts: list[list[int]] = [[] for _ in range(n)]
    for i in sorted(idx, key=lambda i: (-weights[i], i)):
        load, k = heapq.heappop(heap)
        parts[k].append(i)
        heapq.heappush(heap, (load + weights[i], k))
    return [sorted(p) for p in parts]


def parse_ratios(text: str | tuple | list) -> tuple[float, float, float]:
    if isinstance(text, str):
        try:
            vals = tuple(float(x) for x in text.split(","))
        except ValueError:
            raise ConfigError(f"ratios must be three numbers like 0.8,0.1,0.1, not {text!r}") from None
    else:
        vals = tuple(float(x) for x in text)
    if len(vals) != 3 or any(v < 0 for v in vals) or abs(sum(vals) - 1.0) > 1e-6:
        raise ConfigError(f"ratios must be three non-negative numbers summing to 1 (train,dev,test), not {text!r}")
    return vals  # type: ignore[return-value]


def doc_of(ex: Example) -> str:
    return str(ex.meta.get("doc") or ex.id)


def split_by_document(examples: list[Example], ratios=(0.8, 0.1, 0.1), seed: int = 13) -> dict[str, list[Example]]:
    ratios = parse_ratios(ratios)
    by_doc: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_doc[doc_of(ex)].append(ex)
    docs = sorted(by_doc)
    random.Random(seed).shuffle(docs)
    total = len(examples)
    counts = [0, 0, 0]
    assigned: dict[str, list[str]] = {s: [] for s in SPLITS}
    for d in docs:
        deficits = [ratios[k] * total - counts[k] for k in range(3)]
        k = max(range(3), key=lambda i: (deficits[i], -i))
        if ratios[k] == 0:   # everything is full; only reachable with rounding at the very end
            k = max(range(3), key=lambda i: ratios[i])
        counts[k] += len(by_doc[d])
        assigned[SPLITS[k]].append(d)
    # Within a split: documents by name, sentences in input order.
    return {s: [ex for d in sorted(assigned[s]) for ex in by_doc[d]] for s in SPLITS}
