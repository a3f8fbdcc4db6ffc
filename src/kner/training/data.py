"""The training data of a run: read, mapped to the scheme, checked, tokenized (with augmented copies).

``kner.training.recipe`` calls ``load_examples`` for train and dev before any model is
loaded, then ``tokenize`` once the tokenizer is there.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from kner.data.augment import AugmentConfig, training_variants
from kner.data.example import Example, read_jsonl
from kner.data.schemes import Mapping, map_examples
from kner.errors import ConfigError, DataError
from kner.model.prompt import PromptEncoder
from kner.training.batching import TokenizedExample, TokenizeReport, tokenize_examples
from kner.training.config import TrainConfig

log = logging.getLogger("kner.train")


@dataclass
class TrainData:
    """The tokenized examples of a run."""

    train: list[TokenizedExample]
    epoch_sets: list[list[TokenizedExample]]  # ``train`` and its augmented copies; epochs cycle through them
    dev: list[TokenizedExample]
    report: TokenizeReport  # of ``train``: what was skipped

    @property
    def all_train(self) -> list[TokenizedExample]:
        return [e for tok in self.epoch_sets for e in tok]

    @property
    def longest(self) -> int:
        """Tokens of the longest example, prefix included: no micro-batch budget may be smaller."""
        return max(e.length for e in self.all_train + self.dev)


def load_examples(path, given, cfg: TrainConfig, scheme, what: str) -> list[Example]:
    if given is not None:
        exs = list(given)
        where = f"<{what} examples>"
    else:
        if not path:
            raise ConfigError(f"no {what} data: pass --{what} FILE.jsonl")
        exs = read_jsonl(path)
        where = str(path)
    if not exs:
        raise DataError(f"no examples in the {what} data", where)
    if cfg.map:
        exs, rep = map_examples(exs, Mapping.load(cfg.map, scheme.name), cfg.map_fallback)
        if rep.dropped:
            log.info("%s: dropped entities by mapping: %s", what, dict(rep.dropped))
        if rep.fallback:
            log.info("%s: entities mapped by the fallback label: %s", what, dict(rep.fallback))
    unknown: dict[str, int] = {}
    fixed = []
    for ex in exs:
        ents = []
        for e in ex.entities:
            lab = scheme.canonical(e.label)
            if lab is None:
                unknown[e.label] = unknown.get(e.label, 0) + 1
            else:
                ents.append(e if lab == e.label else type(e)(e.start, e.end, lab, e.text))
        fixed.append(Example(ex.id, ex.text, ents, ex.meta) if ents != ex.entities else ex)
    if unknown:
        raise DataError(
            f"labels not in scheme {scheme.name!r}: "
            + ", ".join(f"{k} x{v}" for k, v in sorted(unknown.items()))
            + "; pass --map SOURCE_SCHEME to map them, or choose --scheme",
            where,
        )
    return fixed


def tokenize(
    train_exs: list[Example], dev_exs: list[Example], encoder: PromptEncoder, cfg: TrainConfig, separator: str
) -> TrainData:
    train_tok, report = tokenize_examples(train_exs, encoder, cfg.max_seq_len, separator)
    epoch_sets = augmented_sets(train_exs, train_tok, encoder, cfg, separator)
    dev_tok, dev_report = tokenize_examples(dev_exs, encoder, cfg.max_seq_len, separator)
    for name, rep in (("train", report), ("dev", dev_report)):
        if rep.too_long:
            log.warning(
                "%s: skipped %d example(s) longer than max_seq_len=%d tokens (e.g. %s)",
                name,
                len(rep.too_long),
                cfg.max_seq_len,
                ", ".join(rep.too_long[:5]),
            )
        if rep.fallbacks:
            log.info("%s: %d example(s) tokenized piecewise (no clean token boundary)", name, rep.fallbacks)
    if not train_tok:
        raise DataError("no training example left (all longer than max_seq_len?)", cfg.train)
    return TrainData(train_tok, epoch_sets, dev_tok, report)


def augmented_sets(train_exs, train_tok, encoder, cfg: TrainConfig, separator: str) -> list:
    """The tokenized training sets epochs cycle through (``augment``); ``[train_tok]`` without it."""
    aug = AugmentConfig.from_dict(cfg.augment)
    if not aug.active:
        return [train_tok]
    t0 = time.perf_counter()
    sets, changed, copy = [], 0, 0
    for exs in training_variants(train_exs, aug, cfg.seed):
        if exs is train_exs:  # the original, already tokenized
            sets.append(train_tok)
            continue
        copy += 1
        changed += sum(1 for a, b in zip(train_exs, exs) if a is not b)
        tok, rep = tokenize_examples(exs, encoder, cfg.max_seq_len, separator)
        if rep.too_long:
            log.warning(
                "augmented copy %d: skipped %d example(s) longer than max_seq_len=%d tokens",
                copy,
                len(rep.too_long),
                cfg.max_seq_len,
            )
        sets.append(tok)
    log.info(
        "augment: %d copies of the training set with mentions replaced (p=%.2f), %d of %d sentences "
        "changed, tokenized in %.1f s",
        aug.variants,
        aug.mention_replace,
        changed,
        len(train_exs) * aug.variants,
        time.perf_counter() - t0,
    )
    return sets
