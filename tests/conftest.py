from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for reference_semgrad

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def default_scorer():
    """The embedded SmolLM2-135M-Instruct (fetched by `make test`'s set-up), loaded once."""
    from semgrad_guard import SemGradScorer

    return SemGradScorer.from_pretrained("default")


@pytest.fixture
def one_thread():
    """torch on one thread for the test, like the servers the parity tests start (``--threads 1``):
    float32 sums then run in the same order on both sides (2 threads vs 1 differ by ~1e-6 relative)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
