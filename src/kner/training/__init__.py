"""QLoRA fine-tuning: ``train(TrainConfig(...))`` -> output folder (see docs/training.md)."""

from kner.training.config import TrainConfig
from kner.training.recipe import train

__all__ = ["TrainConfig", "train"]
