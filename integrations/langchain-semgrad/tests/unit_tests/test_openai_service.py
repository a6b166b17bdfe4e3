"""The scoring service behind LangChain: ChatOpenAI against its /v1/chat/completions, and
SemGradCallbackHandler(RemoteScorer) on a ChatOpenAI whose model is served elsewhere with the same weights."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_openai import ChatOpenAI
from langchain_semgrad import SemGradCallbackHandler

from semgrad_guard import GuardPolicy, RemoteScorer, ScorePayload
from semgrad_guard.serve import BackgroundServer, create_app
from semgrad_guard.testing import tiny_scorer

CHAT = [{"role": "user", "content": "Name a primary colour."}]


@pytest.fixture(scope="module")
def tiny() -> Any:
    return tiny_scorer("llama")


@pytest.fixture(scope="module")
def server(tiny: Any) -> Any:
    policy = GuardPolicy.from_dict({"rules": [{"field": "semgrad", "max": 1e9, "action": "accept"}]})
    with BackgroundServer(create_app(tiny, token="tok", policy=policy)) as s:
        yield s


def test_chat_openai_gets_guarded_scored_answers_unchanged(tiny: Any, server: Any) -> None:
    llm = ChatOpenAI(
        base_url=server.url + "/v1",
        api_key="tok",  # type: ignore[arg-type]
        model="tiny-random-llama",
        max_tokens=12,
        max_retries=0,
        include_response_headers=True,
    )
    msg = llm.invoke("Name a primary colour.")
    want_text, want = tiny.generate(CHAT, max_new_tokens=12)
    assert msg.content == want_text
    payload = ScorePayload.read(json.loads(msg.response_metadata["headers"]["x-semgrad-payload"]))
    assert payload is not None and payload.action == "accept" and payload.result is not None
    assert abs(payload.result.semgrad - want.semgrad) <= 1e-6 * want.semgrad
    streamed = "".join(str(chunk.content) for chunk in llm.stream("Name a primary colour."))
    assert streamed == want_text


def test_callback_handler_scores_a_chat_openai_answer_through_remote_scorer(tiny: Any, server: Any) -> None:
    handler = SemGradCallbackHandler(RemoteScorer(server.url, token="tok", model="tiny-random-llama"))
    llm = ChatOpenAI(
        base_url=server.url + "/v1",
        api_key="tok",  # type: ignore[arg-type]
        model="tiny-random-llama",
        max_tokens=12,
        max_retries=0,
    )
    msg = llm.invoke("Name a primary colour.", config={"callbacks": [handler]})
    want = tiny.score(CHAT, str(msg.content))
    got = ScorePayload.read(msg.response_metadata)
    assert got is not None and got.result is not None
    assert abs(got.result.semgrad - want.semgrad) <= 1e-6 * want.semgrad


def _chat_openai(server: Any) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=server.url + "/v1",
        api_key="tok",  # type: ignore[arg-type]
        model="tiny-random-llama",
        max_tokens=12,
        max_retries=0,
    )


def test_the_handler_through_remote_scorer_carries_the_servers_verdict(server: Any) -> None:
    handler = SemGradCallbackHandler(RemoteScorer(server.url, token="tok", model="tiny-random-llama"))
    msg = _chat_openai(server).invoke("Name a primary colour.", config={"callbacks": [handler]})
    got = ScorePayload.read(msg.response_metadata)
    assert got is not None and got.action == "accept" and got.rule == "rules[0]"
    (outcome,) = handler.outcomes.values()
    assert outcome.action.value == "accept" and outcome.rule == "rules[0]"


async def test_the_async_handler_through_remote_scorer_carries_the_servers_verdict(server: Any) -> None:
    from langchain_semgrad import AsyncSemGradCallbackHandler

    handler = AsyncSemGradCallbackHandler(RemoteScorer(server.url, token="tok", model="tiny-random-llama"))
    msg = await _chat_openai(server).ainvoke("Name a primary colour.", config={"callbacks": [handler]})
    got = ScorePayload.read(msg.response_metadata)
    assert got is not None and got.action == "accept" and got.rule == "rules[0]"


def test_remote_scorer_reports_the_verdict_the_service_holds(server: Any) -> None:
    result, verdict = RemoteScorer(server.url, token="tok").score_with_verdict(CHAT, "Red.")
    assert result.answer_tokens > 0 and verdict == {"action": "accept", "rule": "rules[0]"}
