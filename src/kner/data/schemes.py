"""Label schemes and explicit mappings between them.

A scheme is an ordered list of labels with English/Korean descriptions and
aliases (``PERSON`` -> ``PER``); the order is the order the prompt lists them.
Mappings are TSV tables in ``resources/mappings`` (``SRC-to-DST.tsv``), one row
per source label, target ``-`` meaning "drop on purpose". A label with no row is
an error unless the caller names a fallback: nothing disappears silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from kner.data.example import Entity, Example
from kner.errors import ConfigError, DataError

_RES = resources.files("kner") / "resources"


@dataclass(frozen=True)
class Label:
    name: str
    en: str
    ko: str = ""
    aliases: tuple[str, ...] = ()


@dataclass
class Scheme:
    name: str
    labels: list[Label]
    description: str = ""
    _lookup: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for lab in self.labels:
            self._lookup[lab.name.upper()] = lab.name
        for lab in self.labels:
            for a in lab.aliases:
                self._lookup.setdefault(a.upper(), lab.name)

    @property
    def names(self) -> list[str]:
        return [lab.name for lab in self.labels]

    def canonical(self, label: str) -> str | None:
        """Label name for ``label`` or one of its aliases (case-insensitive); None if unknown."""
        return self._lookup.get(label.strip().upper())

    def __contains__(self, label: str) -> bool:
        return label in self.names

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "labels": [{"name": l.name, "en": l.en, "ko": l.ko, "aliases": list(l.aliases)} for l in self.labels],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<scheme>") -> Scheme:
        try:
            labels = [
                Label(
                    str(l["name"]),
                    str(l.get("en", l["name"])),
                    str(l.get("ko", "")),
                    tuple(str(a) for a in l.get("aliases", []) or []),
                )
                for l in d["labels"]
            ]
        except (KeyError, TypeError) as err:
            raise ConfigError(f"{source}: a scheme needs 'labels', each with a 'name' ({err})") from None
        names = [l.name for l in labels]
        dup = [n for n, c in Counter(names).items() if c > 1]
        if dup:
            raise ConfigError(f"{source}: duplicate labels {dup}")
        for l in labels:
            if any(ch in l.name for ch in "<>: \t\n"):
                raise ConfigError(f"{source}: label {l.name!r} may not contain '<', '>', ':' or spaces")
        return cls(name=str(d.get("name", source)), labels=labels, description=str(d.get("description", "")))


def builtin_schemes() -> list[str]:
    return sorted(p.name[:-5] for p in (_RES / "schemes").iterdir() if p.name.endswith(".yaml"))


def load_scheme(name_or_path: str | Path | Scheme) -> Scheme:
    """A built-in scheme by name (``spacy19``, ``kmou``, ...) or a YAML file."""
    if isinstance(name_or_path, Scheme):
        return name_or_path
    p = Path(str(name_or_path))
    if p.suffix in (".yaml", ".yml") and p.exists():
        return Scheme.from_dict(yaml.safe_load(p.read_text(encoding="utf-8")), str(p))
    res = _RES / "schemes" / f"{name_or_path}.yaml"
    if not res.is_file():
        raise ConfigError(
            f"unknown label scheme {name_or_path!r}; built-in: {', '.join(builtin_schemes())}, or a .yaml file"
        )
    return Scheme.from_dict(yaml.safe_load(res.read_text(encoding="utf-8")), f"{name_or_path}.yaml")


@dataclass
class Mapping:
    source: str
    target: str
    table: dict[str, str | None]
    reasons: dict[str, str]

    @classmethod
    def load(cls, source: str, target: str, path: str | Path | None = None) -> Mapping:
        if path is None:
            res = _RES / "mappings" / f"{source}-to-{target}.tsv"
            if not res.is_file():
                avail = sorted(p.name[:-4] for p in (_RES / "mappings").iterdir() if p.name.endswith(".tsv"))
                raise ConfigError(
                    f"no mapping from {source!r} to {target!r}; built-in: {', '.join(avail)}, or pass a TSV file"
                )
            text, where = res.read_text(encoding="utf-8"), f"{source}-to-{target}.tsv"
        else:
            text, where = Path(path).read_text(encoding="utf-8"), str(path)
        table: dict[str, str | None] = {}
        reasons: dict[str, str] = {}
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            cols = line.split("\t")
            if len(cols) < 2:
                raise DataError("expected 'source<TAB>target<TAB>reason'", where, lineno)
            src, dst = cols[0].strip(), cols[1].strip()
            if src in table:
                raise DataError(f"label {src!r} is mapped twice", where, lineno)
            table[src] = None if dst == "-" else dst
            if len(cols) > 2 and cols[2].strip():
                reasons[src] = cols[2].strip()
        return cls(source, target, table, reasons)

    def map_label(self, label: str, fallback: str | None = None) -> str | None:
        if label in self.table:
            return self.table[label]
        if fallback is not None:
            return None if fallback == "-" else fallback
        raise KeyError(label)


@dataclass
class MapReport:
    mapped: Counter[tuple[str, str]] = field(default_factory=Counter)  # (src, dst) -> count
    dropped: Counter[str] = field(default_factory=Counter)  # src -> count (mapped to '-' on purpose)
    fallback: Counter[str] = field(default_factory=Counter)  # src -> count (no row; user fallback used)


def map_examples(
    examples: list[Example],
    mapping: Mapping,
    fallback: str | None = None,
) -> tuple[list[Example], MapReport]:
    """Relabel every entity through ``mapping``; unmapped labels raise unless ``fallback`` is given."""
    report = MapReport()
    out = []
    for ex in examples:
        ents = []
        for e in ex.entities:
            if e.label in mapping.table:
                new = mapping.table[e.label]
            elif fallback is not None:
                report.fallback[e.label] += 1
                new = None if fallback == "-" else fallback
            else:
                raise DataError(
                    f"label {e.label!r} (entity {e.text!r}) has no row in the {mapping.source}->{mapping.target} "
                    f"mapping; add one or pass a fallback label",
                    ex.meta.get("source") or ex.id,
                )
            if new is None:
                report.dropped[e.label] += 1
                continue
            report.mapped[(e.label, new)] += 1
            ents.append(Entity(e.start, e.end, new, e.text))
        out.append(Example(ex.id, ex.text, sorted(set(ents)), dict(ex.meta)))
    return out, report
