"""SemGradLLM's sync and async methods share one implementation: same call, equal responses.

Greedy decoding on a tiny random model with the real tokenizer (a real token stream) and on a
MockScorer (no tokenizer: one scored chunk); every response is compared whole (text, delta, payload).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage
from llama_index.llms.semgrad import SemGradLLM

from semgrad_guard import MockScorer

CHAT = [ChatMessage(role="user", content="Name a colour.")]
PROMPT = "Name a colour."


def _dump(responses: Any) -> list[dict[str, Any]]:
    return [r.model_dump(exclude={"raw"}) for r in responses]


async def _collect(agen: Any) -> list[Any]:
    return [r async for r in await agen]


def _llm(kind: str, tiny: Any) -> SemGradLLM:
    if kind == "tiny":
        return SemGradLLM(tiny, max_new_tokens=6)
    return SemGradLLM(MockScorer(lambda m, a: len(a) / 100, answers=["Blue, like the sky."]))


@pytest.mark.parametrize("kind", ["tiny", "mock"])
def test_stream_chat_and_astream_chat_give_equal_chunks(kind: str, tiny: Any) -> None:
    sync = _dump(_llm(kind, tiny).stream_chat(CHAT))
    asyn = _dump(asyncio.run(_collect(_llm(kind, tiny).astream_chat(CHAT))))
    assert asyn == sync
    assert sync[-1]["additional_kwargs"]["semgrad"]["scores"]["semgrad"] is not None
    assert all(c["additional_kwargs"] == {} for c in sync[:-1])
    if kind == "tiny":
        assert len(sync) > 1  # a real stream, not one chunk


@pytest.mark.parametrize("kind", ["tiny", "mock"])
def test_stream_complete_and_astream_complete_give_equal_chunks(kind: str, tiny: Any) -> None:
    sync = _dump(_llm(kind, tiny).stream_complete(PROMPT))
    asyn = _dump(asyncio.run(_collect(_llm(kind, tiny).astream_complete(PROMPT))))
    assert asyn == sync
    assert "".join(c["delta"] for c in sync) == sync[-1]["text"]


@pytest.mark.parametrize("kind", ["tiny", "mock"])
def test_whole_and_streamed_sync_and_async_give_the_same_last_response(kind: str, tiny: Any) -> None:
    chat = _llm(kind, tiny).chat(CHAT).model_dump(exclude={"raw", "delta"})
    achat = asyncio.run(_llm(kind, tiny).achat(CHAT)).model_dump(exclude={"raw", "delta"})
    streamed = _dump(_llm(kind, tiny).stream_chat(CHAT))[-1]
    streamed.pop("delta")
    assert achat == chat == streamed

    complete = _llm(kind, tiny).complete(PROMPT).model_dump(exclude={"raw", "delta"})
    acomplete = asyncio.run(_llm(kind, tiny).acomplete(PROMPT)).model_dump(exclude={"raw", "delta"})
    assert acomplete == complete
    assert complete["additional_kwargs"] == chat["additional_kwargs"]  # one user message either way
