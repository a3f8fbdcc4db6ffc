"""The sentences a comparison report shows: where the systems disagree (or one system differs from gold)."""

from __future__ import annotations

from typing import Any

from kner.data.example import Example
from kner.evaluation.scoring import pair_examples


def _ents(ex: Example, keep: set[str]) -> list[dict[str, Any]]:
    return [e.to_dict() for e in sorted(set(ex.entities)) if e.label in keep]


def disagreements(gold: list[Example], systems: dict[str, list[Example]], labels: list[str]) -> list[dict[str, Any]]:
    """Sentences where the systems' entity sets differ (one system: where it differs from gold)."""
    keep = set(labels)
    paired = {name: dict((g.id, p) for g, p in pair_examples(gold, preds)) for name, preds in systems.items()}
    out = []
    for g in gold:
        gset = {(e.start, e.end, e.label) for e in g.entities if e.label in keep}
        sets = {
            name: {(e.start, e.end, e.label) for e in paired[name][g.id].entities if e.label in keep}
            for name in systems
        }
        distinct = {frozenset(s) for s in sets.values()}
        if len(distinct) == 1 and (len(sets) > 1 or next(iter(distinct)) == gset):
            continue
        out.append(
            {
                "id": g.id,
                "text": g.text,
                "gold": _ents(g, keep),
                "systems": {
                    name: {
                        "entities": _ents(paired[name][g.id], keep),
                        "correct": s == gset,
                        "fp": len(s - gset),
                        "fn": len(gset - s),
                    }
                    for name, s in sets.items()
                },
            }
        )
    return out


def disagreement_intro(d: dict[str, Any], n_systems: int) -> str:
    what = "the systems' entity sets differ" if n_systems > 1 else "the system's output differs from gold"
    if not d["total"]:
        return f"No sentence where {what}."
    return (
        f"{d['total']} sentences where {what}; {d['shown']} shown, drawn at random (seed {d['seed']}), in gold order."
    )
