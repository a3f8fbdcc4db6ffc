"""The ``kner run`` config: one schema, checked whole before the first stage runs.

Every key a stage reads is a field here, with its default; an unknown key at any
depth is an error with a did-you-mean, a wrong type names the key and the type
expected. The ``train:`` section is :class:`kner.training.config.TrainConfig`, the
model ``kner train --config`` reads. :func:`load_run_config` also checks what needs
the file system (data and model folders, schemes, mappings) so a typo cannot
surface 40 minutes into a run.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError, create_model, field_validator

from kner.data import readers
from kner.data.acquire import SOURCES
from kner.data.schemes import Mapping, load_scheme
from kner.data.splits import parse_ratios
from kner.errors import ConfigError, KnerError
from kner.inference.options import ExtractorConfig
from kner.model.loading import TINY_ARCHS
from kner.training.config import (
    Settings,
    TrainConfig,
    _as_value_error,
    check_model_path,
    config_error,
    did_you_mean,
    line_of,
    read_yaml,
)

# The run sets these from its other sections: a value under train: would be silently replaced.
_SET_BY_RUN = {
    "train": "the prepare stage's train split",
    "output": "the run's output folder",
    "scheme": "data.scheme",
    "resume": "kner run (it resumes an interrupted stage itself)",
    "model": "model.base",
    "trust_remote_code": "model.trust_remote_code",
    "revision": "model.revision",
}


class SplitSection(Settings):
    ratios: list[float] = [0.8, 0.1, 0.1]  # train, dev, test shares of the documents
    seed: int | None = None  # default: the run's seed

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v):
        _as_value_error(parse_ratios, v)
        return v


class LimitSection(Settings):
    """A seeded sample of at most this many sentences per split (None: all)."""

    train: int | None = Field(None, ge=0)
    dev: int | None = Field(None, ge=0)
    test: int | None = Field(None, ge=0)


class DataSection(Settings):
    dataset: str | None = None  # a dataset kner can fetch (kner.data.acquire.SOURCES), e.g. kmou
    format: str | None = None  # reader (kner.data.readers.FORMATS); default: dataset, else kmou
    path: str | None = None  # local file or folder; default: fetch dataset
    reader_options: dict[str, Any] = {}  # options of the reader, e.g. {check_bio: false}
    scheme: str | None = None  # target label scheme; default: the format's own
    map_from: str | None = None  # source scheme; default: the format's own
    map_file: str | None = None  # mapping TSV; default: the built-in MAP_FROM-to-SCHEME.tsv
    fallback: str | None = None  # label for source labels without a mapping row
    split: SplitSection = SplitSection()
    limit: LimitSection = LimitSection()

    @property
    def reader(self) -> str:
        return self.format or self.dataset or "kmou"

    def mapping(self) -> tuple[str, str] | None:
        """(source, target) schemes when prepare maps labels, else None."""
        native = self.map_from or readers.native_scheme(self.reader, **self.reader_options)
        scheme = self.target_scheme()
        return (native, scheme) if native is not None and scheme != native else None

    def target_scheme(self) -> str:
        """The scheme prepare writes and train learns (one answer for both stages)."""
        return self.scheme or readers.native_scheme(self.reader, **self.reader_options) or "spacy19"


class TokenizerSection(Settings):
    """kner.model.scratch.train_tokenizer."""

    kind: Literal["bpe", "char"] = "bpe"
    vocab_size: int = Field(4000, gt=0)
    min_count: int = Field(2, ge=1)
    prompt_pieces: bool = True  # char: instruction lines and <LABEL: openers as single tokens


class ScratchSection(Settings, extra="allow"):
    """kner.model.scratch.build_scratch_model; other keys are settings of the architecture's transformers config."""

    arch: Literal[TINY_ARCHS] = "llama"  # type: ignore[valid-type]  # pydantic reads the tuple's names
    hidden: int = Field(128, gt=0)
    layers: int = Field(4, gt=0)
    heads: int = Field(4, gt=0)
    kv_heads: int | None = None
    intermediate: int | None = None
    max_positions: int = 1024
    seed: int = 0
    tokenizer: TokenizerSection = TokenizerSection()

    def arch_settings(self) -> dict:
        return self.model_dump(exclude={"tokenizer"})


class ModelSection(Settings):
    base: str = TrainConfig.model_fields["model"].default  # Hub id or local folder
    trust_remote_code: bool = False
    revision: str | None = None
    from_scratch: ScratchSection | None = None  # a tiny model built from this config instead of base


def _predict_section() -> type[Settings]:
    """``name`` plus Extractor.load's options: ExtractorConfig's fields, so a new option is a key at once."""
    hints = typing.get_type_hints(ExtractorConfig)
    opts: dict[str, Any] = {
        f.name: (hints[f.name], f.default) for f in dataclasses.fields(ExtractorConfig) if f.name != "logits_hook"
    }  # a Python callable (tests)
    return create_model(
        "PredictSection",
        __base__=Settings,
        __module__=__name__,
        name=(str, "llm"),
        quantize_4bit=(bool | None, None),
        compute_dtype=(str | None, None),
        **opts,
    )


if TYPE_CHECKING:
    PredictSection = Any  # a model built at import time: its fields are ExtractorConfig's
else:
    PredictSection = _predict_section()


class SpacySection(Settings):
    """kner.baselines.spacy_ner.train_spacy."""

    enabled: bool = True
    tokenizer: str = "kiwi"  # char | kiwi | whitespace
    config: str | None = None  # spaCy config file; default: kner's
    max_steps: int | None = Field(None, gt=0)
    seed: int | None = None  # default: the run's seed
    handling: str = "expand"  # gold spans off token boundaries: expand | contract | split
    overrides: dict[str, Any] | None = None  # spaCy config overrides, e.g. {training.max_epochs: 3}
    verbose: bool = True

    def options(self, seed: int) -> dict:
        """train_spacy's keyword arguments: the keys written (its defaults are these fields' defaults)."""
        d = self.model_dump(exclude={"enabled"}, exclude_unset=True)
        if d.get("seed") is None:
            d["seed"] = seed
        return d


class BaselineSection(Settings):
    spacy: SpacySection = SpacySection()


class ReportSection(Settings):
    sample: int = Field(20, ge=0)  # sentences shown side by side
    seed: int = 0


class RunConfig(Settings):
    name: str | None = None
    output_dir: str | None = None  # default: runs/CONFIG-NAME
    seed: int = 13
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    train: TrainConfig = TrainConfig()
    predict: PredictSection = PredictSection()
    baseline: BaselineSection = BaselineSection()
    report: ReportSection = ReportSection()

    def given(self, section: str) -> dict:
        """The keys the config file wrote in ``section`` (what a stage key hashes: defaults are kner's version)."""
        return getattr(self, section).model_dump(exclude_unset=True)

    def problems(self) -> Iterator[tuple[tuple, str]]:
        """(key path, message) for what the types cannot say: files, folders, schemes, names."""
        yield from self._data_problems()
        if self.model.from_scratch is None:
            try:
                check_model_path(self.model.base)
            except ConfigError as err:
                yield ("model", "base"), str(err)
        elif self.model.from_scratch.model_extra:
            yield from self._scratch_extras()
        for k in sorted(self.train.model_fields_set & set(_SET_BY_RUN)):
            yield ("train", k), f"set by kner run from {_SET_BY_RUN[k]}; remove it here"
        sp = self.baseline.spacy
        if sp.model_fields_set & {"tokenizer", "handling"}:
            # lazy: importing kner.baselines imports spaCy (it registers the tokenizer), seconds for a config check
            from kner.baselines.tokenization import HANDLINGS, MODES  # noqa: PLC0415

            if sp.tokenizer not in MODES:
                yield ("baseline", "spacy", "tokenizer"), f"expected one of {', '.join(MODES)}, got {sp.tokenizer!r}"
            if sp.handling not in HANDLINGS:
                yield (
                    ("baseline", "spacy", "handling"),
                    f"expected one of {', '.join(HANDLINGS)}, got {sp.handling!r}",
                )
        if sp.config and not Path(sp.config).is_file():
            yield ("baseline", "spacy", "config"), f"spaCy config not found: {sp.config}"

    def _data_problems(self) -> Iterator[tuple[tuple, str]]:
        d = self.data
        fmt_key = ("data", "format") if d.format else ("data", "dataset")
        if d.reader not in readers.FORMATS:
            hint = "" if d.format else "; for your own data set data.format and data.path"
            yield (
                fmt_key,
                (f"unknown data format {d.reader!r}" + did_you_mean(d.reader, readers.FORMATS, "formats") + hint),
            )
            return
        if d.path is None:
            if (d.dataset or d.reader) not in SOURCES:
                yield (
                    ("data", "path"),
                    (f"required for dataset {d.dataset or d.reader!r} (only {', '.join(SOURCES)} can be fetched)"),
                )
        elif not Path(d.path).expanduser().exists():
            yield ("data", "path"), f"no such file or folder: {d.path}"
        known = readers.FORMATS[d.reader].options
        for k in d.reader_options:
            if k not in known:
                yield (
                    ("data", "reader_options", k),
                    f"format {d.reader!r} has no option {k!r}"
                    + (did_you_mean(k, known, "options") if known else "; it takes none"),
                )
        try:
            load_scheme(d.target_scheme())
        except KnerError as err:
            yield ("data", "scheme"), str(err)
            return
        if d.map_file and not Path(d.map_file).is_file():
            yield ("data", "map_file"), f"mapping file not found: {d.map_file}"
        elif (pair := d.mapping()) is not None:
            try:
                Mapping.load(*pair, d.map_file)
            except KnerError as err:
                yield ("data", "map_file" if d.map_file else "map_from"), str(err)

    def _scratch_extras(self) -> Iterator[tuple[tuple, str]]:
        from transformers import AutoConfig  # noqa: PLC0415  lazy: transformers takes a second to import

        scratch = self.model.from_scratch
        assert scratch is not None  # called for a from_scratch model only
        known = AutoConfig.for_model(scratch.arch).to_dict()
        for k in scratch.model_extra or {}:
            if k not in known:
                yield (
                    ("model", "from_scratch", k),
                    f"unknown key (neither a from_scratch setting nor a {scratch.arch} config setting)"
                    + did_you_mean(k, [*ScratchSection.model_fields, *known]).split(";")[0],
                )


def section(model: type[Settings], d: dict, name: str) -> Settings:
    """One section checked on its own (a caller that holds the YAML mapping of it)."""
    try:
        return model.model_validate(d)
    except ValidationError as err:
        raise config_error(err, model, name, prefix=(name,)) from None


def load_run_config(path: str | Path) -> RunConfig:
    """Read and check a run config; every problem in it is in one ConfigError naming file, line and key."""
    raw, lines = read_yaml(path)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as err:
        raise config_error(err, RunConfig, str(path), lines) from None
    found = []
    for key, msg in cfg.problems():
        line = line_of(lines, key)
        found.append(f"{path}:{line}: {'.'.join(key)}: {msg}" if line else f"{path}: {'.'.join(key)}: {msg}")
    if found:
        raise ConfigError("; ".join(found))
    return cfg
