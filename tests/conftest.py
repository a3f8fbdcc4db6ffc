import os
import sys
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
# Benchmark helpers (benchmarks/corpora.py, benchmarks/loadtest.py) are not part of the package; the
# tests that exercise them import them from there.
sys.path.insert(0, str(REPO / "benchmarks"))
SHARED = Path(os.environ.get("KNER_DATA_DIR") or REPO.parent / "shared" / "datasets")
# Laid out like the shared folder: kmou/corpus/ holds the first 15 files of the KMOU corpus.
FIXTURE_DATA = REPO / "tests" / "fixtures"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The full corpora: only for the few tests that check numbers of the real data."""
    if not (SHARED / "kmou" / "corpus").is_dir():
        pytest.skip(f"shared datasets not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """A data folder every clone has (``kmou/corpus``), for tests that need some real-format corpus."""
    return FIXTURE_DATA


@pytest.fixture(scope="session")
def llama_dir() -> Path:
    """A LLaMA-2-style tokenizer folder built from the fixture corpus (see tiny_llama.py)."""
    from tiny_llama import tiny_llama_dir

    return tiny_llama_dir()
