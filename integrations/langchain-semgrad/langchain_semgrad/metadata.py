"""Where scores live on LangChain objects: ``response_metadata["semgrad"]`` / ``generation_info["semgrad"]``.

The payload is plain JSON-able data, so it survives serialisation and tracing::

    {"result": ScoreResult.model_dump(), "scores": {...six scores...},
     "action": "accept" | ... | None, "rule": str | None, "confidence": float | None,
     "source": "callback" | "chat_semgrad" | "guard", "run_id": str | None}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, Generation

from semgrad_guard.results import ScoreResult

METADATA_KEY = "semgrad"
"""Key under ``response_metadata`` / ``generation_info`` holding the score payload."""


def score_payload(
    result: ScoreResult,
    *,
    source: str,
    run_id: Any = None,
    action: str | None = None,
    rule: str | None = None,
    confidence: float | None = None,
) -> dict[str, Any]:
    """The JSON-able payload stored under :data:`METADATA_KEY`."""
    return {
        "result": result.model_dump(mode="json"),
        "scores": result.scores(),
        "action": action,
        "rule": rule,
        "confidence": confidence,
        "source": source,
        "run_id": str(run_id) if run_id is not None else None,
    }


def attach_payload(generation: Generation, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` into a generation's ``generation_info`` and its message's ``response_metadata``."""
    info = dict(generation.generation_info or {})
    info[METADATA_KEY] = dict(payload)
    generation.generation_info = info
    if isinstance(generation, ChatGeneration):
        generation.message.response_metadata[METADATA_KEY] = dict(payload)


def read_payload(obj: BaseMessage | Generation | Mapping[str, Any]) -> dict[str, Any] | None:
    """The score payload on a message, a generation or a metadata mapping, or ``None``."""
    if isinstance(obj, ChatGeneration):
        found = obj.message.response_metadata.get(METADATA_KEY)
        if found is None and obj.generation_info:
            found = obj.generation_info.get(METADATA_KEY)
    elif isinstance(obj, Generation):
        found = (obj.generation_info or {}).get(METADATA_KEY)
    elif isinstance(obj, BaseMessage):
        found = obj.response_metadata.get(METADATA_KEY)
    else:
        found = obj.get(METADATA_KEY, obj if "result" in obj else None)
    return dict(found) if isinstance(found, Mapping) else None


def read_score(obj: BaseMessage | Generation | Mapping[str, Any]) -> ScoreResult | None:
    """The :class:`~semgrad_guard.ScoreResult` stored on ``obj``, or ``None`` if it carries none.

    Example:
        >>> from langchain_core.messages import AIMessage
        >>> read_score(AIMessage("hi")) is None
        True
    """
    payload = read_payload(obj)
    if payload is None or payload.get("result") is None:
        return None
    return ScoreResult.model_validate(payload["result"])
