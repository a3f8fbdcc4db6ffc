"""QLoRA fine-tuning: ``train(TrainConfig(...))`` -> output folder (see docs/training.md)."""

from kner.training.config import TrainConfig

__all__ = ["TrainConfig", "train"]


def __getattr__(name: str):
    # The recipe imports torch, transformers and peft (seconds); every kner config reads
    # kner.training.config, which must not pay for them.
    if name == "train":
        from kner.training.recipe import train  # noqa: PLC0415

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
