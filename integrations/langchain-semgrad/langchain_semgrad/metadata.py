"""Where scores live on LangChain objects: ``response_metadata["semgrad"]`` / ``generation_info["semgrad"]``.

The payload is the core's :class:`~semgrad_guard.payload.ScorePayload` as JSON (versioned; the same shape
the LlamaIndex adapter and the scoring service write), so it survives serialisation and tracing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, Generation

from semgrad_guard import PAYLOAD_KEY, ScorePayload, ScoreResult

# The payload sits under semgrad_guard.PAYLOAD_KEY in ``response_metadata`` / ``generation_info``.


def score_payload(result: ScoreResult | None, verdict: Any = None, **fields: Any) -> dict[str, Any]:
    """The JSON-able payload stored under :data:`PAYLOAD_KEY` (see :meth:`ScorePayload.of`)."""
    return ScorePayload.of(result, verdict, **fields).to_json()


def attach_payload(generation: Generation, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` into a generation's ``generation_info`` and its message's ``response_metadata``."""
    info = dict(generation.generation_info or {})
    info[PAYLOAD_KEY] = dict(payload)
    generation.generation_info = info
    if isinstance(generation, ChatGeneration):
        generation.message.response_metadata[PAYLOAD_KEY] = dict(payload)


def _read(obj: BaseMessage | Generation | Mapping[str, Any]) -> ScorePayload | None:
    """The typed payload on a message, a generation or a metadata mapping (validated once), or ``None``."""
    found: Any
    if isinstance(obj, ChatGeneration):
        found = obj.message.response_metadata.get(PAYLOAD_KEY)
        if found is None and obj.generation_info:
            found = obj.generation_info.get(PAYLOAD_KEY)
    elif isinstance(obj, Generation):
        found = (obj.generation_info or {}).get(PAYLOAD_KEY)
    elif isinstance(obj, BaseMessage):
        found = obj.response_metadata.get(PAYLOAD_KEY)
    else:
        found = obj
    return ScorePayload.read(found) if isinstance(found, Mapping) else None


def read_payload(obj: BaseMessage | Generation | Mapping[str, Any]) -> dict[str, Any] | None:
    """The score payload (JSON) on a message, a generation or a metadata mapping, or ``None``."""
    payload = _read(obj)
    return payload.to_json() if payload is not None else None


def read_score(obj: BaseMessage | Generation | Mapping[str, Any]) -> ScoreResult | None:
    """The :class:`~semgrad_guard.ScoreResult` stored on ``obj``, or ``None`` if it carries none.

    Example:
        >>> from langchain_core.messages import AIMessage
        >>> read_score(AIMessage("hi")) is None
        True
    """
    payload = _read(obj)
    return payload.result if payload is not None else None
