"""The OpenAI wire format of chat completions: content parts in, headers and SSE chunks out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from ..errors import ScoringError
from ..payload import ScorePayload
from ..scoring.streaming import StreamChunk


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


def _chunk(
    cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None, **extra: Any
) -> bytes:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    choice.update(extra)
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [choice],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _tail(cid: str, created: int, model: str, usage: dict[str, int] | None) -> list[bytes]:
    out = []
    if usage is not None:
        tail = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage,
        }
        out.append(b"data: " + json.dumps(tail).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


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
    yield _chunk(cid, created, model, {"role": "assistant", "content": ""})
    for piece in pieces(text):
        yield _chunk(cid, created, model, {"content": piece})
    yield _chunk(cid, created, model, {}, finish, semgrad=payload.to_json())
    for part in _tail(cid, created, model, usage):
        yield part


StreamEnd = Callable[[StreamChunk], Awaitable[tuple[str, str, ScorePayload, dict[str, int]]]]
"""``end(last_chunk) -> (text still to send, finish_reason, payload, usage)``: the verdict on a stream."""


async def live_sse(
    cid: str,
    created: int,
    model: str,
    first: StreamChunk,
    chunks: AsyncIterator[StreamChunk],
    end: StreamEnd,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """A stream's chunks (``first``, then the rest of ``chunks``) as OpenAI chunks while they are
    generated; the verdict rides on the last one.

    Closing this (the client disconnected) closes ``chunks``, which stops generation.
    """

    async def every() -> AsyncIterator[StreamChunk]:
        yield first
        async for chunk in chunks:
            yield chunk

    try:
        yield _chunk(cid, created, model, {"role": "assistant", "content": ""})
        async for chunk in every():
            if chunk.result is None:
                yield _chunk(cid, created, model, {"content": chunk.delta})
                continue
            rest, finish, payload, usage = await end(chunk)
            text = chunk.delta + rest
            if text:
                yield _chunk(cid, created, model, {"content": text})
            yield _chunk(cid, created, model, {}, finish, semgrad=payload.to_json())
            for part in _tail(cid, created, model, usage if include_usage else None):
                yield part
            return
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


def pieces(text: str, size: int = 64) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]
