"""Training-data augmentation: mention replacement.

Each augmented variant of the training set swaps some entity mentions for other
mentions of the same label seen in the training set (Dai & Adel, 2020, "An
analysis of simple data augmentation for NER"). The sentence around the mention
is kept, so the model must read the context and copy the span from the text
instead of recalling which strings were entities in training. That matters most
where nothing was pretrained (a model built from scratch memorises a 17k-sentence
corpus within a few epochs).

Variants are a pure function of (examples, settings, seed, variant number), so a
resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from kner.data.example import Entity, Example
from kner.errors import ConfigError


@dataclass(frozen=True)
class AugmentConfig:
    mention_replace: float = 0.0  # probability that one mention is swapped
    variants: int = 0  # augmented copies of the training set; epoch e trains on copy e mod (variants+1)
    keep_original: bool = True  # copy 0 is the unaltered training set

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> AugmentConfig:
        d = dict(d or {})
        known = {"mention_replace", "variants", "keep_original"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"augment: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        cfg = cls(float(d.get("mention_replace", 0.0)), int(d.get("variants", 0)), bool(d.get("keep_original", True)))
        if not 0.0 <= cfg.mention_replace <= 1.0:
            raise ConfigError("augment.mention_replace must be in [0, 1]")
        if cfg.variants < 0:
            raise ConfigError("augment.variants must be >= 0")
        if cfg.variants and not cfg.mention_replace:
            raise ConfigError("augment.variants needs augment.mention_replace > 0")
        return cfg

    @property
    def active(self) -> bool:
        return self.variants > 0 and self.mention_replace > 0


def mention_pool(examples: list[Example]) -> dict[str, list[str]]:
    """Distinct mention surfaces per label, in first-seen order (deterministic)."""
    pool: dict[str, dict[str, None]] = {}
    for ex in examples:
        for e in ex.entities:
            pool.setdefault(e.label, {})[e.text] = None
    return {lab: list(s) for lab, s in pool.items()}


def replace_mentions(ex: Example, pool: dict[str, list[str]], p: float, rng: random.Random) -> Example:
    """``ex`` with each mention replaced, with probability ``p``, by a random same-label surface."""
    ents = sorted(ex.entities, key=lambda e: (e.start, e.end))
    # Overlapping or nested mentions would make the rebuilt offsets ambiguous: keep those sentences as they are.
    if any(b.start < a.end for a, b in zip(ents, ents[1:])):
        return ex
    parts: list[str] = []
    new: list[Entity] = []
    cursor = 0
    shift = 0  # new offset minus old offset so far
    changed = False
    for e in ents:
        parts.append(ex.text[cursor : e.start])
        surface = e.text
        choices = pool.get(e.label)
        if choices and rng.random() < p:
            surface = choices[rng.randrange(len(choices))]
            changed = changed or surface != e.text
        start = e.start + shift
        parts.append(surface)
        new.append(Entity(start, start + len(surface), e.label, surface))
        shift += len(surface) - (e.end - e.start)
        cursor = e.end
    if not changed:
        return ex
    parts.append(ex.text[cursor:])
    meta = dict(ex.meta or {})
    meta["augmented_from"] = ex.id
    return Example(ex.id, "".join(parts), new, meta)


def training_variants(examples: list[Example], cfg: AugmentConfig, seed: int) -> list[list[Example]]:
    """The training sets epochs cycle through: [original,] then ``cfg.variants`` augmented copies."""
    if not cfg.active:
        return [examples]
    pool = mention_pool(examples)
    out = [examples] if cfg.keep_original else []
    for v in range(cfg.variants):
        rng = random.Random(f"{seed}/augment/{v}")
        out.append([replace_mentions(ex, pool, cfg.mention_replace, rng) for ex in examples])
    return out
