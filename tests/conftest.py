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
