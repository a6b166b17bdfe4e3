"""Integration fixtures: the embedded SmolLM2-135M-Instruct (fetched by `make test`'s set-up), loaded once."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def scorer() -> Any:
    from semgrad_guard import SemGradScorer

    logging.getLogger("semgrad_guard").setLevel(logging.ERROR)  # the default-profile notice
    return SemGradScorer.from_pretrained("default")


@pytest.fixture(autouse=True)
def _restore_settings() -> Iterator[None]:
    """The cookbooks set LlamaIndex's global LLM and embeddings; put them back afterwards."""
    from llama_index.core import Settings

    llm, embed = Settings._llm, Settings._embed_model
    yield
    Settings._llm, Settings._embed_model = llm, embed
