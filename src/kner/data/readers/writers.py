"""Canonical examples -> files an annotation tool (or a CoNLL reader) takes back.

``write(fmt, examples, out, **opts)`` returns a ``Counter`` of everything the
format could not hold as is (overlapping entities a BIO format cannot
express, ...), so the caller can report it; nothing is changed silently.
Reading a written file back with the reader of the same name gives the same
texts and entities (``tests/test_readers_annotation.py`` checks each), except
where the counter says otherwise.

=========== ============================================================
doccano     JSONL ``{"id", "text", "label": [[start, end, label]], "doc"}``;
            ``form=entities`` writes doccano's relation-project form;
            offsets in UTF-16 code units (``offsets=chars`` to change),
            the unit doccano's editor uses
labelstudio JSON task list, spans as ``annotations`` (``predictions=true``:
            as pre-annotations to correct); labeling config names
            ``<Labels name="label" toName="text">`` and ``<Text name="text"
            value="$text">``
prodigy     JSONL ``{"text", "spans", "answer": "accept", "meta": {id, doc}}``
spacy       ``DocBin``: whitespace tokens split at entity boundaries, so
            every entity is kept exactly; overlapping ones cannot be
            (spaCy entities do not nest) and are counted
conll       BIO, one token a line; ``level=char`` (default: exact, spaces
            written as ``space_token``, default ``_``; read back with
            ``-O level=char -O space_token=_``) or ``level=word`` (whitespace
            tokens; entities widened to whole words, counted)
=========== ============================================================
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kner.data.example import Example, strip_span
from kner.data.readers.annotation import chars_to_utf16, check_offsets_option
from kner.errors import ConfigError, DataError
from kner.textio import atomic_write, json_line


def _write_bytes(out: Path, data: bytes) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)  # as kner.textio.atomic_write, for a binary file


def _doc(ex: Example) -> str:
    return str(ex.meta.get("doc", ex.id))


def _lines(out: Path, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_write(out) as f:
        for r in rows:
            f.write(json_line(r) + "\n")


def write_doccano(examples: list[Example], out: Path, form: str = "label", offsets: str = "utf16") -> Counter[str]:
    if form not in ("label", "entities"):
        raise ConfigError(f"doccano form must be 'label' or 'entities', not {form!r}")
    check_offsets_option(offsets)
    rows = []
    for ex in examples:
        m = chars_to_utf16(ex.text) if offsets == "utf16" else None
        spans = [(m[e.start], m[e.end], e.label) if m else (e.start, e.end, e.label) for e in ex.entities]
        row: dict[str, Any] = {"id": ex.id, "text": ex.text}
        if form == "label":
            row["label"] = [list(s) for s in spans]
        else:
            row["entities"] = [
                {"id": k + 1, "label": lab, "start_offset": s, "end_offset": e} for k, (s, e, lab) in enumerate(spans)
            ]
            row["relations"] = []
        row["doc"] = _doc(ex)
        rows.append(row)
    _lines(out, rows)
    return Counter()


def write_labelstudio(examples: list[Example], out: Path, predictions: bool = False) -> Counter[str]:
    tasks = []
    for ex in examples:
        result = [
            {
                "id": f"kner{k}",
                "from_name": "label",
                "to_name": "text",
                "type": "labels",
                "value": {"start": e.start, "end": e.end, "text": e.text, "labels": [e.label]},
            }
            for k, e in enumerate(ex.entities)
        ]
        task = {
            "data": {"text": ex.text, "id": ex.id, "doc": _doc(ex)},
            ("predictions" if predictions else "annotations"): [{"result": result}],
        }
        tasks.append(task)

    with atomic_write(out) as f:
        f.write("[\n" + ",\n".join(json_line(t) for t in tasks) + "\n]\n")
    return Counter()


def write_prodigy(examples: list[Example], out: Path) -> Counter[str]:
    _lines(
        out,
        (
            {
                "text": ex.text,
                "spans": [{"start": e.start, "end": e.end, "label": e.label} for e in ex.entities],
                "answer": "accept",
                "meta": {"id": ex.id, "doc": _doc(ex)},
            }
            for ex in examples
        ),
    )
    return Counter()


def write_spacy(examples: list[Example], out: Path) -> Counter[str]:
    from kner.baselines.spacy_ner import examples_to_docbin  # noqa: PLC0415  lazy: imports spaCy (seconds)

    db, report = examples_to_docbin(examples, "whitespace", "split")
    _write_bytes(out, db.to_bytes())
    notes: Counter[str] = Counter()
    if report.dropped_overlap:
        notes["entities left out: they overlap an earlier one (spaCy entities cannot nest)"] = report.dropped_overlap
    return notes


def _non_overlapping(ex: Example, notes: Counter[str]) -> list[tuple[int, int, str]]:
    kept: list[tuple[int, int, str]] = []
    for e in sorted(ex.entities, key=lambda e: (e.start, -e.end)):
        if kept and e.start < kept[-1][1]:
            notes["entities left out: they overlap an earlier one (BIO cannot nest)"] += 1
            continue
        kept.append((e.start, e.end, e.label))
    return kept


def write_conll(examples: list[Example], out: Path, level: str = "char", space_token: str = "_") -> Counter[str]:
    if level not in ("char", "word"):
        raise ConfigError(f"conll level must be 'char' or 'word', not {level!r}")
    if level == "char" and (len(space_token) != 1 or space_token.isspace()):
        raise ConfigError(f"space_token must be one visible character, not {space_token!r}")
    notes: Counter[str] = Counter()
    lines: list[str] = []
    for ex in examples:
        if not ex.text.strip():
            notes["examples with an empty text left out (CoNLL cannot hold them)"] += 1
            continue
        spans = _non_overlapping(ex, notes)
        for _, _, lab in spans:
            if not lab or any(c.isspace() for c in lab):
                raise DataError(f"example {ex.id}: label {lab!r} cannot be a CoNLL tag (it has whitespace)")
        if level == "char":
            if space_token in ex.text:
                raise DataError(
                    f"example {ex.id}: its text contains the space token {space_token!r}; "
                    "choose another with -O space_token=CHAR"
                )
            tags = ["O"] * len(ex.text)
            for s, e, lab in spans:
                tags[s] = f"B-{lab}"
                for i in range(s + 1, e):
                    tags[i] = f"I-{lab}"
            for ch, tag in zip(ex.text, tags):
                if ch.isspace() and ch != " ":
                    notes["whitespace other than ' ' (tabs, newlines) written as the space token"] += 1
                lines.append(f"{space_token if ch.isspace() else ch} {tag}")
        else:
            words, pos = [], 0
            for w in ex.text.split():
                s = ex.text.index(w, pos)
                words.append((s, s + len(w)))
                pos = s + len(w)
            if " ".join(ex.text[s:e] for s, e in words) != ex.text:
                notes["texts whose spacing is not single spaces (normalized by the word level)"] += 1
            tags = ["O"] * len(words)
            for s, e, lab in spans:
                inside = [k for k, (a, b) in enumerate(words) if b > s and a < e]
                if (words[inside[0]][0], words[inside[-1]][1]) != strip_span(ex.text, s, e):
                    notes["entities widened to whole words (level=word)"] += 1
                if any(tags[k] != "O" for k in inside):
                    notes["entities left out: they share a word with another (level=word)"] += 1
                    continue
                tags[inside[0]] = f"B-{lab}"
                for k in inside[1:]:
                    tags[k] = f"I-{lab}"
            lines += [f"{ex.text[a:b]} {t}" for (a, b), t in zip(words, tags)]
        lines.append("")

    with atomic_write(out) as f:
        f.write("\n".join(lines) + ("\n" if lines else ""))
    return notes


WRITERS: dict[str, Callable[..., Counter[str]]] = {
    "doccano": write_doccano,
    "labelstudio": write_labelstudio,
    "prodigy": write_prodigy,
    "spacy": write_spacy,
    "conll": write_conll,
}
OPTIONS = {
    "doccano": ("form", "offsets"),
    "labelstudio": ("predictions",),
    "prodigy": (),
    "spacy": (),
    "conll": ("level", "space_token"),
}


def write(fmt: str, examples: list[Example], out: str | Path, **opts: Any) -> Counter[str]:
    if fmt not in WRITERS:
        raise ConfigError(f"cannot export to {fmt!r}; export formats: {', '.join(WRITERS)}")
    bad = sorted(set(opts) - set(OPTIONS[fmt]))
    if bad:
        raise ConfigError(
            f"export format {fmt!r} has no option {', '.join(bad)}; its options: {', '.join(OPTIONS[fmt]) or 'none'}"
        )
    return WRITERS[fmt](list(examples), Path(out), **opts)
