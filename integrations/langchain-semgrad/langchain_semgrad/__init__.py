"""LangChain integration for semgrad-guard.

Score every answer with a callback (:class:`SemGradCallbackHandler`), gate with an output parser
(:class:`SemGradOutputParser`), a guard Runnable (:func:`guard_runnable`) or agent middleware
(:class:`SemGradMiddleware`), or use a local model that scores as it generates (:class:`ChatSemGrad`).
"""

from __future__ import annotations

from .callbacks import SCORE_EVENT, AsyncSemGradCallbackHandler, SemGradCallbackHandler
from .chat_models import ChatSemGrad
from .errors import LowConfidenceError
from .messages import to_chat
from .metadata import METADATA_KEY, read_payload, read_score

__version__ = "0.1.0"

__all__ = [
    "METADATA_KEY",
    "SCORE_EVENT",
    "AsyncSemGradCallbackHandler",
    "ChatSemGrad",
    "LowConfidenceError",
    "SemGradCallbackHandler",
    "read_payload",
    "read_score",
    "to_chat",
]
