"""Character-level views of a sentence's spans, for the character metrics of ``scoring.evaluate``.

* Every character except the space U+0020 is looked at, as KLUE does (its data
  reader drops exactly the ``" "`` characters; tabs, ideographic spaces U+3000
  and the like stay). A character covered by several (overlapping) spans takes
  the label of the one starting first, the longer one on a tie.
* ``klue_tag_f1`` is the KLUE baseline's per-tag F1 over character BIO tags,
  with sklearn's ``zero_division=1``.
"""

from __future__ import annotations

from collections import Counter

Span = tuple[int, int, str]


def char_tags(text: str, spans: set[Span] | list[Span]) -> tuple[list[tuple[str, str]], int]:
    """(BIO tag, label) for every character but " ", and how many spans lost characters.

    A character belongs to the first span covering it in (start, longer first)
    order, so a nested span disappears inside its outer span and a crossing
    span keeps only its characters past the earlier one. A character starts a
    new entity (B) when the previous kept character belongs to a different
    span or to none, so a span starting with a space still gets a B. Only
    U+0020 is dropped: KLUE's reader skips exactly the ``" "`` characters when it
    builds its per-character labels, so other whitespace is a character here too.
    """
    owner: list[int] = [-1] * len(text)
    order = sorted(spans, key=lambda s: (s[0], -(s[1] - s[0]), s[2]))
    hidden = 0
    for k, (start, end, _) in enumerate(order):
        lost = False
        for i in range(max(start, 0), min(end, len(text))):
            if owner[i] < 0:
                owner[i] = k
            else:
                lost = True
        hidden += lost
    out = []
    prev = -1
    for i, ch in enumerate(text):
        if ch == " ":
            continue
        k = owner[i]
        if k < 0:
            out.append(("O", "O"))
        else:
            label = order[k][2]
            out.append((("I-" if k == prev else "B-") + label, label))
        prev = k
    return out, hidden


def klue_tag_f1(
    gold_tags: Counter[str], pred_tags: Counter[str], tp_tags: Counter[str], tagset: list[str]
) -> dict[str, float]:
    """Per-tag F1 as sklearn ``f1_score(..., zero_division=1)``: 2TP / (gold + pred), 1 when both are 0."""
    out = {}
    for t in tagset:
        den = gold_tags[t] + pred_tags[t]
        out[t] = 2 * tp_tags[t] / den if den else 1.0
    return out
