"""Translating between LlamaIndex's chat types and semgrad-guard's plain role/content dicts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage

from semgrad_guard import PAYLOAD_KEY, ScorePayload, ScoreResult

# The payload sits under semgrad_guard.PAYLOAD_KEY in ``response.additional_kwargs`` (Cleanlab's convention).
# LlamaIndex has roles that chat templates do not know; map them to the template's names.
_ROLE_ALIASES = {"model": "assistant", "chatbot": "assistant", "function": "tool"}


def to_chat(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex ``ChatMessage`` objects as ``{"role", "content"}`` dicts (text blocks only)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.role.value if hasattr(m.role, "value") else str(m.role)
        out.append({"role": _ROLE_ALIASES.get(role, role), "content": m.content or ""})
    return out


def prompt_as_chat(prompt: str) -> list[dict[str, Any]]:
    """A completion prompt as a one-message chat (how the scorer renders it through the chat template)."""
    return [{"role": "user", "content": prompt}]


def score_payload(result: ScoreResult | None, verdict: Any = None, **fields: Any) -> dict[str, Any]:
    """The JSON-safe :class:`~semgrad_guard.ScorePayload` stored under ``additional_kwargs["semgrad"]``
    (and a query engine response's ``metadata["semgrad"]``): the same shape LangChain's adapter and the
    scoring service write."""
    out: dict[str, Any] = ScorePayload.of(result, verdict, **fields).to_json()
    return out


def score_from_response(response: Any) -> ScoreResult | None:
    """The :class:`~semgrad_guard.ScoreResult` a :class:`SemGradLLM` response carries, or ``None``.

    Works on ``ChatResponse`` and ``CompletionResponse`` (and on a chat response's message).

    Example:
        >>> from llama_index.core.base.llms.types import CompletionResponse
        >>> score_from_response(CompletionResponse(text="hi")) is None
        True
    """
    for holder in (response, getattr(response, "message", None)):
        kwargs = getattr(holder, "additional_kwargs", None)
        if isinstance(kwargs, Mapping) and PAYLOAD_KEY in kwargs:
            payload = ScorePayload.read(kwargs)
            return payload.result if payload is not None else None
    return None


def response_text(response: Any) -> str:
    """The answer text of a chat or completion response."""
    message = getattr(response, "message", None)
    if message is not None:
        return str(message.content or "")
    return str(getattr(response, "text", "") or "")
