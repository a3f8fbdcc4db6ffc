"""Gold spans -> tag string -> spans again must give the gold spans back.

The tag string carries surfaces, not offsets, so a sentence can only fail when
an entity's surface also occurs, untagged, between the previous entity and the
entity itself: left-to-right alignment then takes the earlier occurrence. Every
failure must be of that kind; their number on the full corpora is pinned in
test_real_data.py and explained in docs/data.md.
"""

from pathlib import Path

import pytest

from kner.data.example import Entity, Example
from kner.data.readers import read_dataset
from kner.data.schemes import load_scheme
from kner.model.prompt import parse_tags, render_tags

FIX = Path(__file__).parent / "fixtures" / "readers"


def failures(examples, scheme):
    sch = load_scheme(scheme)
    bad = []
    for ex in examples:
        got = parse_tags(render_tags(ex.entities), ex.text, sch).entities
        if got != ex.entities:
            bad.append((ex, got))
    return bad


def explained(ex: Example, got: list[Entity]) -> bool:
    """Same (label, surface) pairs, each placed at or before its gold occurrence: ambiguity, not a bug."""

    def groups(ents):
        out: dict = {}
        for e in ents:
            out.setdefault((e.label, e.text), []).append(e.start)
        return {k: sorted(v) for k, v in out.items()}

    g, p = groups(ex.entities), groups(got)
    if g.keys() != p.keys():
        return False
    moved = False
    for key in g:
        if len(g[key]) != len(p[key]) or any(b > a for a, b in zip(g[key], p[key])):
            return False
        moved |= g[key] != p[key]
    return moved


@pytest.mark.parametrize(
    "fmt, path",
    [
        ("kmou", "kmou"),
        ("klue", "klue_sample.tsv"),
        ("klp2016", "klp2016/ner.sample"),
        ("naver", "naver_sample.txt"),
        ("multiconer", "multiconer_v2.conll"),
        ("kmou", "../kmou/corpus"),
    ],
)  # 15 KMOU files, 206 sentences
def test_fixtures_round_trip(fmt, path):
    res = read_dataset(fmt, FIX / path)
    assert failures(res.examples, res.scheme) == []


def test_ambiguous_surface_is_the_only_failure_mode():
    text = "이 사건 뒤 이 씨는"  # the first '이' is a determiner, the second a surname
    ex = Example("x", text, [Entity(7, 8, "PER", "이")])
    [(_, got)] = failures([ex], "kmou")
    assert got == [Entity(0, 1, "PER", "이")] and explained(ex, got)
