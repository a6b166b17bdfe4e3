"""semgrad-guard: sampling-free hallucination scores and guard policies for local HF chat models.

Torch-backed names (``SemGradScorer``, ``compute_sps``, ``fetch_default_model``) are imported on
first use, so that policies, calibration and the review queue import in milliseconds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    ChatTemplateError,
    ConfigurationError,
    ContextLengthError,
    MissingDependencyError,
    ModelError,
    NonFiniteGradientError,
    ProfileError,
    RetriesExhaustedError,
    ScoringError,
    SemGradGuardError,
    UnknownRoleError,
)
from .profile import ModelProfile
from .results import SCORE_FIELDS, ScoreResult
from .scorer import GeneratingScorer, MockScorer, Scorer

if TYPE_CHECKING:
    from .default_model import fetch_default_model
    from .hf_scorer import SemGradScorer
    from .sps import compute_sps

_LAZY = {
    "SemGradScorer": "hf_scorer",
    "compute_sps": "sps",
    "fetch_default_model": "default_model",
}

__version__ = "0.1.0"

__all__ = [
    "SCORE_FIELDS",
    "ChatTemplateError",
    "ConfigurationError",
    "ContextLengthError",
    "GeneratingScorer",
    "MissingDependencyError",
    "MockScorer",
    "ModelError",
    "ModelProfile",
    "NonFiniteGradientError",
    "ProfileError",
    "RetriesExhaustedError",
    "ScoreResult",
    "Scorer",
    "ScoringError",
    "SemGradGuardError",
    "SemGradScorer",
    "UnknownRoleError",
    "compute_sps",
    "fetch_default_model",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'semgrad_guard' has no attribute {name!r}")
