"""Train/dev/test splits by document, so no document's sentences leak across splits.

Documents (``meta["doc"]``, else the example id) are sorted by name and
shuffled with ``seed``, then each goes to the split whose sentence count is
furthest below its target (``ratio * total``). Sorting first makes the split
independent of input order; assigning by sentence deficit keeps the sizes close
to the ratios even when documents differ greatly in length (KMOU files hold
from one to several hundred sentences).

A split with a positive ratio that ends up empty is refused (``ConfigError``,
exit 2 in the CLI): that happens when there are too few documents, e.g. a
corpus of independent sentences converted with every sentence in one document.
Only a ratio of 0 (asked for explicitly, ``--ratios 0.9,0.1,0``) gives an empty
split. A non-empty split under 1% of the sentences is logged as a warning.
"""

from __future__ import annotations

import heapq
import logging
import random
from collections import defaultdict
from collections.abc import Sequence

from kner.data.example import Example
from kner.errors import ConfigError

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
SMALL_SHARE = 0.01  # a non-empty split below this share of the sentences is warned about


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


def parse_ratios(text: str | Sequence[float]) -> tuple[float, float, float]:
    if isinstance(text, str):
        try:
            vals = tuple(float(x) for x in text.split(","))
        except ValueError:
            raise ConfigError(f"ratios must be three numbers like 0.8,0.1,0.1, not {text!r}") from None
    else:
        vals = tuple(float(x) for x in text)
    if len(vals) != 3 or any(v < 0 for v in vals) or abs(sum(vals) - 1.0) > 1e-6:
        raise ConfigError(f"ratios must be three non-negative numbers summing to 1 (train,dev,test), not {text!r}")
    return vals[0], vals[1], vals[2]


def doc_of(ex: Example) -> str:
    return str(ex.meta.get("doc") or ex.id)


def split_by_document(
    examples: list[Example], ratios: str | Sequence[float] = (0.8, 0.1, 0.1), seed: int = 13
) -> dict[str, list[Example]]:
    shares = parse_ratios(ratios)
    by_doc: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_doc[doc_of(ex)].append(ex)
    docs = sorted(by_doc)
    random.Random(seed).shuffle(docs)
    total = len(examples)
    counts = [0, 0, 0]
    assigned: dict[str, list[str]] = {s: [] for s in SPLITS}
    for d in docs:
        deficits = [shares[k] * total - counts[k] for k in range(3)]
        k = max(range(3), key=lambda i: (deficits[i], -i))
        if shares[k] == 0:  # everything is full; only reachable with rounding at the very end
            k = max(range(3), key=lambda i: shares[i])
        counts[k] += len(by_doc[d])
        assigned[SPLITS[k]].append(d)
    _check_sizes(counts, shares, total, by_doc)
    # Within a split: documents by name, sentences in input order.
    return {s: [ex for d in sorted(assigned[s]) for ex in by_doc[d]] for s in SPLITS}


def _check_sizes(
    counts: list[int], ratios: tuple[float, float, float], total: int, by_doc: dict[str, list[Example]]
) -> None:
    """Refuse an empty split the ratios did not ask for; warn about one under ``SMALL_SHARE``."""
    if total == 0:
        raise ConfigError("no sentences to split")
    empty = [SPLITS[k] for k in range(3) if ratios[k] > 0 and counts[k] == 0]
    if empty:
        biggest = max(len(v) for v in by_doc.values())
        why = (
            f"the {total:,} sentences are in {len(by_doc):,} document(s) (meta.doc), the largest holding "
            f"{biggest:,}, and no document is split across train/dev/test"
        )
        hint = (
            (
                "; if the sentences are independent (NAVER, MultiCoNER, one file of shuffled sentences), give each "
                "its own document: re-convert with `kner data convert` (the naver and multiconer readers do this) "
                "or remove meta.doc"
            )
            if len(by_doc) < 3 or biggest > total // 2
            else "; use larger ratios for the empty split(s) or more data"
        )
        raise ConfigError(
            f"splitting {', '.join(f'{r:g}' for r in ratios)} would leave {' and '.join(empty)} empty: "
            f"{why}{hint}; a ratio of 0 asks for an empty split on purpose"
        )
    for k in range(3):
        if 0 < counts[k] < SMALL_SHARE * total:
            log.warning(
                "%s gets %d of %d sentences (%.2f%%, under %g%%): scores on it will be noisy",
                SPLITS[k],
                counts[k],
                total,
                100 * counts[k] / total,
                100 * SMALL_SHARE,
            )
