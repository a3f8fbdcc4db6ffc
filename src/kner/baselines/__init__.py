"""Conventional NER baselines to compare the LLM against (spaCy tok2vec + NER).

Importing this package registers kner's Korean tokenizer with spaCy, which a
saved baseline pipeline needs before ``spacy.load``.
"""

from kner.baselines.spacy_ner import load_pipeline, predict_spacy, predict_spacy_with_report, train_spacy
from kner.baselines.tokenization import alignment_report

__all__ = ["alignment_report", "load_pipeline", "predict_spacy", "predict_spacy_with_report", "train_spacy"]
