"""Integration fixtures: the embedded default model (SmolLM2-135M-Instruct), loaded once per test process."""

from __future__ import annotations

from typing import Any

import pytest


def default_scorer() -> Any:
    """The process-wide ``SemGradScorer.from_pretrained("default")`` that ChatSemGrad(model="default") shares."""
    from langchain_semgrad.chat_models import _load_scorer

    return _load_scorer("default", "cpu")


@pytest.fixture(scope="session")
def scorer() -> Any:
    return default_scorer()
