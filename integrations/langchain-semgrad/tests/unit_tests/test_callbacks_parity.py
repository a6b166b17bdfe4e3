"""SemGradCallbackHandler and AsyncSemGradCallbackHandler share one implementation: same inputs, equal outputs.

Each case runs both handlers on the same real LangChain run (messages in, an ``LLMResult`` with one or
several generations out) and compares everything they write: the payload on every generation, the
registries, the verdicts, the skip reasons, the errors and the custom events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid4

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables import RunnableLambda
from langchain_semgrad import SCORE_EVENT, AsyncSemGradCallbackHandler, SemGradCallbackHandler

from semgrad_guard import Calibrator, GuardPolicy, MockScorer, ScoreResult

PROMPT: list[BaseMessage] = [SystemMessage("Be brief."), HumanMessage("Capital of France?")]
POLICY = GuardPolicy.model_validate(
    {
        "rules": [
            {"name": "calm", "field": "semgrad", "max": 0.05, "action": "accept"},
            {"name": "wild", "field": "semgrad", "action": "review"},
        ]
    }
)


def _length(messages: list[dict[str, Any]], answer: str) -> float:
    if "boom" in answer:
        raise ValueError("scorer exploded")
    return len(answer) / 100


class _VerdictScorer(MockScorer):
    """A scorer that reports its own verdict, as RemoteScorer does for a service's policy."""

    def score_with_verdict(self, messages: Any, answer: str) -> tuple[ScoreResult, dict[str, Any]]:
        return self.score(messages, answer), {"action": "review", "rule": "server", "confidence": 0.4}

    async def ascore_with_verdict(self, messages: Any, answer: str) -> tuple[ScoreResult, dict[str, Any]]:
        return await asyncio.to_thread(self.score_with_verdict, messages, answer)


def _generations(*texts: str) -> LLMResult:
    tool_turn = AIMessage(content="", tool_calls=[{"name": "search", "args": {"q": "x"}, "id": "c1"}])
    return LLMResult(
        generations=[
            [ChatGeneration(message=tool_turn if t == "<tool>" else AIMessage(content=t)) for t in texts]
        ]
    )


def _state(handler: Any, response: LLMResult) -> dict[str, Any]:
    """Everything a handler wrote, with errors as (type, message) so two runs compare equal."""
    return {
        "payloads": [(g.generation_info or {}).get("semgrad") for gens in response.generations for g in gens],
        "messages": [
            g.message.response_metadata.get("semgrad") for gens in response.generations for g in gens
        ],
        "results": handler.results,
        "all_results": handler.all_results,
        "outcomes": handler.outcomes,
        "chats": handler.chats,
        "skipped": handler.skipped,
        "errors": {k: (type(e).__name__, str(e)) for k, e in handler.errors.items()},
        "pending": (handler._prompts, handler._tools),
    }


def _run_sync(handler: SemGradCallbackHandler, run_id: UUID, response: LLMResult) -> None:
    handler.on_chat_model_start({}, [PROMPT], run_id=run_id)
    handler.on_llm_end(response, run_id=run_id)


async def _run_async(handler: AsyncSemGradCallbackHandler, run_id: UUID, response: LLMResult) -> None:
    await handler.on_chat_model_start({}, [PROMPT], run_id=run_id)
    await handler.on_llm_end(response, run_id=run_id)


def _calibrator() -> Calibrator:
    scorer = MockScorer(_length)
    answers = ["a", "bb", "c" * 30, "d" * 40] * 3  # short answers right, long ones wrong
    results = [scorer.score("q", a) for a in answers]
    return Calibrator.fit(results, [len(a) < 5 for a in answers], method="platt", features=["semgrad"])


CASES: dict[str, tuple[Callable[[], Any], dict[str, Any], tuple[str, ...]]] = {
    "plain": (lambda: MockScorer(_length), {}, ("Paris.",)),
    "several generations": (lambda: MockScorer(_length), {}, ("Paris.", "It is Paris, surely.")),
    "policy": (lambda: MockScorer(_length), {"policy": POLICY}, ("Paris.", "Lyon, or maybe Paris.")),
    "policy and calibrator": (
        lambda: MockScorer(_length),
        {
            "policy": GuardPolicy.model_validate({"rules": [{"min": 0.5, "action": "accept"}]}),
            "calibrator": _calibrator(),
        },
        ("Paris.",),
    ),
    "policy error": (
        lambda: MockScorer(_length),
        {"policy": GuardPolicy.model_validate({"rules": [{"min": 0.5, "action": "accept"}]})},
        ("Paris.",),
    ),
    "scoring error": (lambda: MockScorer(_length), {}, ("boom", "Paris.")),
    "tool call": (lambda: MockScorer(_length), {}, ("<tool>", "Paris.")),
    "server verdict": (lambda: _VerdictScorer(_length), {}, ("Paris.",)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sync_and_async_handlers_write_the_same(case: str) -> None:
    make_scorer, options, texts = CASES[case]
    run_id = uuid4()
    sync, sync_response = SemGradCallbackHandler(make_scorer(), **options), _generations(*texts)
    _run_sync(sync, run_id, sync_response)
    asyn, async_response = AsyncSemGradCallbackHandler(make_scorer(), **options), _generations(*texts)
    asyncio.run(_run_async(asyn, run_id, async_response))

    expected = _state(sync, sync_response)
    assert _state(asyn, async_response) == expected
    assert any(p is not None for p in expected["payloads"]) or expected["errors"]  # a case that scored


@pytest.mark.parametrize("case", ["scoring error", "policy"])
def test_sync_and_async_handlers_raise_the_same(case: str) -> None:
    make_scorer, options, texts = CASES[case]
    run_id = uuid4()
    options = {**options, "raise_error": True}
    sync, asyn = (
        SemGradCallbackHandler(make_scorer(), **options),
        AsyncSemGradCallbackHandler(make_scorer(), **options),
    )
    with pytest.raises(Exception) as sync_error:
        _run_sync(sync, run_id, _generations(*texts))
    with pytest.raises(Exception) as async_error:
        asyncio.run(_run_async(asyn, run_id, _generations(*texts)))
    assert type(async_error.value) is type(sync_error.value)
    assert str(async_error.value) == str(sync_error.value)
    assert _state(asyn, _generations()) == _state(sync, _generations())


class _Events(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        self.events.append((name, data))


def test_sync_and_async_handlers_dispatch_the_same_events_and_messages() -> None:
    def chain() -> Any:
        return RunnableLambda(lambda x: x) | FakeListChatModel(responses=["Paris is the capital."])

    sync, sync_events = SemGradCallbackHandler(MockScorer(_length), policy=POLICY), _Events()
    sync_msg = chain().invoke(PROMPT, config={"callbacks": [sync, sync_events]})
    asyn, async_events = AsyncSemGradCallbackHandler(MockScorer(_length), policy=POLICY), _Events()
    async_msg = asyncio.run(chain().ainvoke(PROMPT, config={"callbacks": [asyn, async_events]}))

    def without_run_id(payload: dict[str, Any], handler: Any) -> dict[str, Any]:
        assert UUID(payload["run_id"]) in handler.results  # each names its own run
        return {k: v for k, v in payload.items() if k != "run_id"}

    assert async_msg.content == sync_msg.content
    assert without_run_id(async_msg.response_metadata["semgrad"], asyn) == without_run_id(
        sync_msg.response_metadata["semgrad"], sync
    )
    assert [n for n, _ in async_events.events] == [n for n, _ in sync_events.events] == [SCORE_EVENT]
    assert without_run_id(async_events.events[0][1], asyn) == without_run_id(sync_events.events[0][1], sync)
    assert list(asyn.outcomes.values()) == list(sync.outcomes.values())
    assert list(asyn.chats.values()) == list(sync.chats.values())
