"""Objects built once per test process (a tiny scorer loads SmolLM2's tokenizer: seconds, not ms)."""

from __future__ import annotations

import functools
import logging
from typing import Any


@functools.cache
def tiny_scorer_once(arch: str = "llama") -> Any:
    """A SemGradScorer over a 4-layer random ``arch`` model with SmolLM2's tokenizer (no download)."""
    from semgrad_guard.testing import tiny_scorer

    logging.getLogger("semgrad_guard").setLevel(logging.ERROR)
    return tiny_scorer(arch)


@functools.cache
def tiny_tool_scorer_once(fmt: str = "hermes") -> Any:
    """A SemGradScorer over a tiny random model whose chat template renders tools (``fmt``'s format)."""
    from semgrad_guard.testing.tools import tiny_tool_scorer

    logging.getLogger("semgrad_guard").setLevel(logging.ERROR)
    return tiny_tool_scorer(fmt)
