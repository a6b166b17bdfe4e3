"""Exceptions the LangChain adapters raise."""

from __future__ import annotations

from typing import Any

from langchain_core.exceptions import OutputParserException

from semgrad_guard import SemGradGuardError


class LowConfidenceError(OutputParserException, SemGradGuardError):
    """An answer's score fell in a band whose policy action asks for another try (or for raising).

    It is an ``OutputParserException`` (hence a ``ValueError``), so LangChain's
    ``.with_retry(retry_if_exception_type=(LowConfidenceError,))`` and ``.with_fallbacks(...)``
    act on it; it is also a :class:`semgrad_guard.SemGradGuardError`.

    Attributes:
        answer: the answer text that was judged.
        result: the :class:`semgrad_guard.ScoreResult` (``None`` if no score was found).
        action: the policy's action name (``"retry"``, ``"raise"``, ...).
        rule: the name of the policy rule that fired, if any.
        confidence: the calibrated confidence, if a calibrator was used.
    """

    def __init__(
        self,
        message: str,
        *,
        answer: str = "",
        result: Any = None,
        action: str | None = None,
        rule: str | None = None,
        confidence: float | None = None,
    ) -> None:
        super().__init__(message, llm_output=answer)
        self.answer = answer
        self.result = result
        self.action = action
        self.rule = rule
        self.confidence = confidence
