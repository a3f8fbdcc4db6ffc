"""kner: Korean named-entity recognition with instruction-tuned LLMs."""

from kner.data.example import Entity, Example

__version__ = "0.1.0"
__all__ = ["Entity", "Example", "__version__"]
