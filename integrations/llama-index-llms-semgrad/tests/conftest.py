"""Shared fixtures: one tiny random scorer per session, and LlamaIndex globals kept clean."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def tiny() -> Any:
    """A SemGradScorer over a 4-layer random Llama with SmolLM2's real tokenizer (no download)."""
    from semgrad_guard.testing import tiny_scorer

    logging.getLogger("semgrad_guard").setLevel(logging.ERROR)
    return tiny_scorer("llama")


@pytest.fixture(autouse=True)
def _no_leaked_event_handlers() -> Iterator[None]:
    """Each test's instrumentation handlers are removed afterwards, so tests cannot see each other."""
    from llama_index.core.instrumentation import get_dispatcher

    root = get_dispatcher()
    before = list(root.event_handlers)
    yield
    root.event_handlers = before
