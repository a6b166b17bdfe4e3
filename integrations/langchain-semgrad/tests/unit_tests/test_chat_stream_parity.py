"""ChatSemGrad's stream and astream share one implementation: equal chunks and equal token callbacks.

Every streaming path: a real token stream (tiny random model, real tokenizer), a scorer with no
token stream (MockScorer), stop strings (generated first, cut, re-scored), and bound tools (a tool
call, and a plain answer with tools bound).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.tools import tool
from langchain_semgrad import ChatSemGrad

from semgrad_guard import MockScorer
from semgrad_guard.testing.tools import ScriptedGeneration
from tests._shared import tiny_scorer_once, tiny_tool_scorer_once


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class _Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


class _AsyncTokens(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def _dump(chunks: list[Any]) -> list[dict[str, Any]]:
    # Ids name each run, and a Hermes tool call gets a fresh one per turn; everything else must be equal.
    out = [c.model_dump(exclude={"id"}) for c in chunks]
    for chunk in out:
        for call in (*chunk.get("tool_calls", ()), *chunk.get("tool_call_chunks", ())):
            call.pop("id", None)
    return out


def _both(model: Any, question: str, **kwargs: Any) -> tuple[Any, Any]:
    sync_tokens, async_tokens = _Tokens(), _AsyncTokens()
    sync = list(model.stream(question, config={"callbacks": [sync_tokens]}, **kwargs))

    async def collect() -> list[Any]:
        return [c async for c in model.astream(question, config={"callbacks": [async_tokens]}, **kwargs)]

    asyn = asyncio.run(collect())
    return (_dump(sync), sync_tokens.tokens), (_dump(asyn), async_tokens.tokens)


@pytest.mark.parametrize("stop", [None, ["."]])
def test_a_real_token_stream_is_the_same_both_ways(stop: list[str] | None) -> None:
    chat = ChatSemGrad(scorer=tiny_scorer_once("llama"), max_tokens=8)
    sync, asyn = _both(chat, "Say something.", stop=stop)
    assert asyn == sync
    chunks, tokens = sync
    assert chunks[-1]["response_metadata"]["semgrad"]["scores"]["semgrad"] is not None
    assert "".join(tokens) == "".join(c["content"] for c in chunks)  # every text chunk was a token event
    if stop is None:
        assert len(chunks) > 2  # streamed token by token, not generated whole


@pytest.mark.parametrize("stop", [None, ["Paris"]])
def test_a_scorer_without_a_token_stream_is_the_same_both_ways(stop: list[str] | None) -> None:
    def chat() -> ChatSemGrad:
        return ChatSemGrad(scorer=MockScorer(lambda m, a: len(a) / 100, answers=["It is Paris, in France."]))

    sync_tokens, async_tokens = _Tokens(), _AsyncTokens()
    sync = list(chat().stream("Capital of France?", stop=stop, config={"callbacks": [sync_tokens]}))

    async def collect() -> list[Any]:
        return [
            c
            async for c in chat().astream(
                "Capital of France?", stop=stop, config={"callbacks": [async_tokens]}
            )
        ]

    asyn = asyncio.run(collect())
    assert (_dump(asyn), async_tokens.tokens) == (_dump(sync), sync_tokens.tokens)
    assert [c.content for c in sync] == ["It is " if stop else "It is Paris, in France.", ""]


@pytest.mark.parametrize(
    "script", ['<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>', "5."]
)
def test_bound_tools_stream_the_same_both_ways(script: str) -> None:
    scorer = tiny_tool_scorer_once("hermes")
    chat = ChatSemGrad(scorer=scorer, max_tokens=64).bind_tools([add])
    with ScriptedGeneration(scorer, [script] * 2):
        sync, asyn = _both(chat, "What is 2 + 3?")
    assert asyn == sync
    chunks, tokens = sync
    if script == "5.":
        assert "".join(tokens) == "5."
    else:
        assert "".join(tokens) == "" and chunks[-1]["tool_call_chunks"][0]["name"] == "add"
