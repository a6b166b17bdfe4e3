"""The OpenAI wire format of chat completions: content parts in, headers and SSE chunks out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ..errors import ScoringError
from ..payload import ScorePayload


def flatten_content(message: Mapping[str, Any], i: int) -> dict[str, Any]:
    """OpenAI content parts (``[{"type": "text", "text": ...}]``) as one string; other part types are refused."""
    out = dict(message)
    content = out.get("content")
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if (
                not isinstance(part, Mapping)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise ScoringError(
                    f"messages[{i}].content[{j}] is a {kind!r} part; this service takes text only"
                )
            texts.append(part["text"])
        out["content"] = "".join(texts)
    return out


def _ascii(value: Any) -> str:
    return str(value).encode("ascii", "backslashreplace").decode("ascii")


def score_headers(model_id: str, payload: ScorePayload) -> dict[str, str]:
    """The key numbers as headers (for clients that see headers but not extra JSON fields: ChatOpenAI)."""
    headers = {"x-semgrad-model": _ascii(model_id)}
    if payload.result is not None:
        headers["x-semgrad-semgrad"] = repr(payload.result.semgrad)
    if payload.confidence is not None:
        headers["x-semgrad-confidence"] = repr(payload.confidence)
    if payload.action is not None:
        headers["x-semgrad-action"] = payload.action
    if payload.rule is not None:
        headers["x-semgrad-rule"] = _ascii(payload.rule)
    if payload.review_id is not None:
        headers["x-semgrad-review-id"] = str(payload.review_id)
    headers["x-semgrad-payload"] = json.dumps(payload.to_json(), separators=(",", ":"), ensure_ascii=True)
    return headers


async def sse(
    cid: str,
    created: int,
    model: str,
    text: str,
    finish: str,
    payload: ScorePayload,
    usage: dict[str, int] | None,
) -> AsyncIterator[bytes]:
    """The answer as OpenAI chunks; the guard decided before the first byte, the score rides on the last chunk."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "finish_reason": finish_reason,
            "logprobs": None,
        }
        choice.update(extra)
        body: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [choice],
        }
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for piece in pieces(text):
        yield chunk({"content": piece})
    yield chunk({}, finish, semgrad=payload.to_json())
    if usage is not None:
        tail = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage,
        }
        yield b"data: " + json.dumps(tail).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


def pieces(text: str, size: int = 64) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]
