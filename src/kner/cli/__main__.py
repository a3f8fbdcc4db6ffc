"""``python -m kner.cli`` (and ``torchrun -m kner.cli train ...``)."""

from kner.cli import main

main()
