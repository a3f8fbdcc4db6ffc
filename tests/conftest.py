import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KNER_DATA_DIR") or REPO.parent / "shared" / "datasets")


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not (SHARED / "kmou" / "corpus").is_dir():
        pytest.skip(f"shared datasets not found at {SHARED}")
    return SHARED
