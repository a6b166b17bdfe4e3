"""Shared fixtures."""

from __future__ import annotations

from typing import Any

import pytest

from tests._shared import tiny_scorer_once


@pytest.fixture(scope="session")
def tiny() -> Any:
    """A SemGradScorer over a 4-layer random Llama with SmolLM2's tokenizer (no download)."""
    return tiny_scorer_once("llama")
