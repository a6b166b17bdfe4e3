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
