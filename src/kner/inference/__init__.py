"""Batched, constrained extraction with a fine-tuned causal LM (issue 4).

``Extractor.load(out_dir)(texts)`` -> entity spans per text. See docs/inference.md.
"""

from kner.inference.extractor import Extractor
from kner.inference.options import ExtractorConfig
from kner.inference.results import Prediction, RunStats

__all__ = ["Extractor", "ExtractorConfig", "Prediction", "RunStats"]
