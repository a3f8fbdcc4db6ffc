"""Model stage: loading (dtype, 4-bit quantization, adapters), the prompt format and its encoder,
from-scratch models, model shapes for memory planning, the output folder manifest, and
``compat``: every transformers/peft/bitsandbytes internal kner touches, in one place."""
