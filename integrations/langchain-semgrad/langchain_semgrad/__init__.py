"""LangChain integration for semgrad-guard.

Score every answer with a callback (:class:`SemGradCallbackHandler`), gate with an output parser
(:class:`SemGradOutputParser`), a guard Runnable (:func:`guard_runnable`) or agent middleware
(:class:`SemGradMiddleware`, needs the ``agents`` extra), or use a local model that scores as it
generates (:class:`ChatSemGrad`).
"""

from __future__ import annotations

import importlib
from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

from semgrad_guard import generation_overrides

from . import _guarding  # noqa: F401  (registers LangGraph's control-flow exceptions with the core)
from .callbacks import SCORE_EVENT, AsyncSemGradCallbackHandler, SemGradCallbackHandler
from .chat_models import ChatSemGrad
from .errors import LowConfidenceError
from .messages import to_chat
from .metadata import read_payload, read_score
from .output_parsers import SemGradOutputParser
from .runnables import GuardedRunnable, guard_runnable

if TYPE_CHECKING:
    from .middleware import REVIEW_INTERRUPT_TYPE, AnswerFromToolResults, SemGradMiddleware

_LAZY = {
    "SemGradMiddleware": "middleware",
    "AnswerFromToolResults": "middleware",
    "REVIEW_INTERRUPT_TYPE": "middleware",
}

__version__ = _metadata.version("langchain-semgrad")  # one source: pyproject.toml

__all__ = [
    "REVIEW_INTERRUPT_TYPE",
    "SCORE_EVENT",
    "AnswerFromToolResults",
    "AsyncSemGradCallbackHandler",
    "ChatSemGrad",
    "GuardedRunnable",
    "LowConfidenceError",
    "SemGradCallbackHandler",
    "SemGradMiddleware",
    "SemGradOutputParser",
    "generation_overrides",
    "guard_runnable",
    "read_payload",
    "read_score",
    "to_chat",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'langchain_semgrad' has no attribute {name!r}")
