import os
from pathlib import Path

import pytest

try:
    import torch

    # The tests run tiny models, which gain nothing from intra-op threads: one thread avoids
    # oversubscribing 2-core CI machines (measured: the inference tests went from 110 s to 15 s).
    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KNER_DATA_DIR") or REPO.parent / "shared" / "datasets")


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not (SHARED / "kmou" / "corpus").is_dir():
        pytest.skip(f"shared datasets not found at {SHARED}")
    return SHARED
