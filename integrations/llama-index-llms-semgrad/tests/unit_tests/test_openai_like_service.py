"""LlamaIndex's ``OpenAILike`` against the scoring service's /v1/chat/completions: guarded, scored answers
by changing the base URL (the score payload rides on the choice as ``semgrad``)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip(
    "llama_index.llms.openai_like",
    reason="llama-index-llms-openai-like is not installed (the [test] extra has it)",
)

from llama_index.core.llms import ChatMessage  # noqa: E402
from llama_index.llms.openai_like import OpenAILike  # noqa: E402

from semgrad_guard import GuardPolicy, ScorePayload  # noqa: E402
from semgrad_guard.serve import BackgroundServer, create_app  # noqa: E402
from semgrad_guard.testing import tiny_scorer  # noqa: E402

CHAT = [{"role": "user", "content": "Name a primary colour."}]


@pytest.fixture(scope="module")
def tiny() -> Any:
    return tiny_scorer("llama")


@pytest.fixture(scope="module")
def server(tiny: Any) -> Any:
    policy = GuardPolicy.from_dict(
        {"rules": [{"name": "low", "field": "semgrad", "max": 1e9, "action": "accept"}]}
    )
    with BackgroundServer(create_app(tiny, token="tok", policy=policy)) as s:
        yield s


def payload_of(raw: Any) -> ScorePayload | None:
    choice = raw.choices[0] if hasattr(raw, "choices") else raw["choices"][0]
    data = choice.model_extra.get("semgrad") if hasattr(choice, "model_extra") else choice["semgrad"]
    return ScorePayload.read({"semgrad": data}) if data is not None else None


def test_openai_like_chat_gets_the_guarded_scored_answer(tiny: Any, server: Any) -> None:
    llm = OpenAILike(
        model="tiny-random-llama",
        api_base=server.url + "/v1",
        api_key="tok",
        is_chat_model=True,
        temperature=0.0,  # LlamaIndex's default is 0.1 (sampled); 0 is greedy on the service
        max_tokens=12,
        max_retries=0,
    )
    response = llm.chat([ChatMessage(role="user", content="Name a primary colour.")])
    want_text, want = tiny.generate(CHAT, max_new_tokens=12)
    assert response.message.content == want_text
    payload = payload_of(response.raw)
    assert payload is not None and payload.action == "accept" and payload.result is not None
    assert abs(payload.result.semgrad - want.semgrad) <= 1e-6 * want.semgrad


def test_openai_like_with_a_wrong_token_gets_the_services_401(server: Any) -> None:
    llm = OpenAILike(
        model="tiny-random-llama",
        api_base=server.url + "/v1",
        api_key="wrong",
        is_chat_model=True,
        max_tokens=4,
        max_retries=0,
    )
    import openai

    with pytest.raises(openai.AuthenticationError, match="ServiceAuthError"):
        llm.chat([ChatMessage(role="user", content="hi")])
