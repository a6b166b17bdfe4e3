"""Callback and instrumentation handlers: one score per answer (dedupe), by event id, never stalling a loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage, CompletionResponse, LLMMetadata
from llama_index.core.callbacks import CallbackManager
from llama_index.core.llms import CustomLLM, MockLLM
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.llms.semgrad import SemGradLLM
from llama_index.llms.semgrad.handlers import SemGradCallbackHandler, SemGradEventHandler, capture_scores

from semgrad_guard import ContextLengthError, MockScorer, ScoreResult

HI = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="hi there")]
HI_CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}]


class Flavour:
    """Builds an LLM wired to one handler flavour, so every test runs against both."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def handler(self, scorer: Any, **kwargs: Any) -> Any:
        if self.kind == "callback":
            return SemGradCallbackHandler(scorer, **kwargs)
        return SemGradEventHandler(scorer, **kwargs).register()

    def wire(self, llm: Any, handler: Any) -> Any:
        if self.kind == "callback":
            llm.callback_manager = CallbackManager([handler])
        return llm


@pytest.fixture(params=["callback", "instrumentation"])
def flavour(request: pytest.FixtureRequest) -> Flavour:
    return Flavour(request.param)


def test_chat_over_complete_is_scored_once_with_the_chat(flavour: Flavour, tiny: Any) -> None:
    handler = flavour.handler(tiny)
    llm = flavour.wire(MockLLM(), handler)
    response = llm.chat(HI)
    records = list(handler.scores.values())
    assert len(records) == 1, "CustomLLM.chat() calls complete(): the nested event must not be scored again"
    assert handler.deduplicated == 1
    rec = records[0]
    assert rec.kind == "chat"
    assert rec.messages == HI_CHAT
    assert rec.answer == response.message.content
    assert rec.result == tiny.score(HI_CHAT, response.message.content)
    assert not rec.reused


def test_completion_is_scored_as_one_user_message(flavour: Flavour, tiny: Any) -> None:
    handler = flavour.handler(tiny)
    llm = flavour.wire(MockLLM(max_tokens=3), handler)
    response = llm.complete("Tell me about rain.")
    (rec,) = handler.scores.values()
    assert rec.kind == "completion"
    assert rec.messages == [{"role": "user", "content": "Tell me about rain."}]
    assert rec.answer == response.text == "text text text"
    assert rec.result == tiny.score(rec.messages, "text text text")
    assert handler.deduplicated == 0


def test_scores_are_recorded_by_event_id(flavour: Flavour) -> None:
    handler = flavour.handler(MockScorer(lambda m, a: len(m[-1]["content"]) / 100))
    llm = flavour.wire(MockLLM(), handler)
    llm.complete("a")
    llm.complete("abc")
    ids = list(handler.scores)
    assert len(set(ids)) == 2
    assert [handler.get(i).result.semgrad for i in ids] == [0.01, 0.03]
    if flavour.kind == "instrumentation":
        assert all(i.startswith("MockLLM.complete-") for i in ids)  # the LLM call's span id
    with pytest.raises(KeyError, match="no scored LLM answer"):
        handler.get("nope")


async def test_async_chat_of_a_custom_llm_is_scored_once(flavour: Flavour, tiny: Any) -> None:
    handler = flavour.handler(tiny)
    llm = flavour.wire(MockLLM(), handler)
    response = await llm.achat(HI)  # CustomLLM.achat -> chat -> complete: three LLM events
    records = await handler.await_all()
    assert len(records) == 1
    assert handler.deduplicated == 2
    assert records[0].result == tiny.score(HI_CHAT, response.message.content)


def test_stream_chat_is_scored_once_after_the_stream_ends(flavour: Flavour, tiny: Any) -> None:
    handler = flavour.handler(tiny)
    llm = flavour.wire(MockLLM(), handler)
    chunks = list(llm.stream_chat(HI))
    (rec,) = handler.scores.values()
    assert rec.answer == chunks[-1].message.content
    assert rec.result == tiny.score(HI_CHAT, rec.answer)


def test_semgrad_llm_scores_are_reused_not_recomputed(flavour: Flavour) -> None:
    generating = MockScorer(lambda m, a: 0.3, answers=["Blue light scatters more."])
    judge = MockScorer(lambda m, a: 0.9)
    handler = flavour.handler(judge)
    llm = flavour.wire(SemGradLLM(generating), handler)
    llm.chat(HI)
    (rec,) = handler.scores.values()
    assert rec.reused and rec.result is not None
    assert rec.result.semgrad == 0.3
    assert judge.calls == []


class _Failing(CustomLLM):
    """A CustomLLM whose completion fails on demand."""

    fail: bool = True

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        if self.fail:
            raise RuntimeError("backend down")
        return CompletionResponse(text="fine")

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> Iterator[CompletionResponse]:
        raise NotImplementedError


def test_a_failed_call_leaves_nothing_open(flavour: Flavour) -> None:
    handler = flavour.handler(MockScorer(lambda m, a: 0.2))
    llm = flavour.wire(_Failing(), handler)
    with pytest.raises(RuntimeError, match="backend down"):
        llm.chat(HI)
    assert handler.scores == {}
    llm.fail = False
    llm.complete("again")  # must not be mistaken for a call nested in the failed chat
    (rec,) = handler.scores.values()
    assert rec.answer == "fine" and rec.result is not None


def test_scoring_errors_are_recorded_not_raised(flavour: Flavour) -> None:
    def too_long(messages: Any, answer: str) -> float:
        raise ContextLengthError(5000, 10, 2048)

    handler = flavour.handler(MockScorer(too_long))
    llm = flavour.wire(MockLLM(), handler)
    response = llm.complete("question")
    assert response.text == "question"  # the LLM call itself is untouched
    (rec,) = handler.scores.values()
    assert rec.result is None and not rec.ok
    assert isinstance(rec.error, ContextLengthError)
    assert "exceeds the model's context of 2048 tokens" in str(rec.error)


def test_legacy_handler_can_abort_the_call_on_scoring_errors() -> None:
    def broken(messages: Any, answer: str) -> float:
        raise ContextLengthError(5000, 10, 2048)

    handler = SemGradCallbackHandler(MockScorer(broken), raise_errors=True)
    llm = MockLLM(callback_manager=CallbackManager([handler]))
    with pytest.raises(ContextLengthError):
        llm.complete("question")


def test_only_captured_calls_are_scored_when_asked(flavour: Flavour) -> None:
    scorer = MockScorer(lambda m, a: 0.4)
    handler = flavour.handler(scorer, only_captured=True)
    llm = flavour.wire(MockLLM(), handler)
    llm.complete("outside")
    with capture_scores() as cap:
        llm.complete("inside")
    assert [r.answer for r in handler.scores.values()] == ["inside"]
    assert [r.answer for r in cap.answers()] == ["inside"]
    assert cap.last() is not None and cap.last().answer == "inside"


class _SlowScorer(MockScorer):
    def __init__(self, delay: float) -> None:
        super().__init__(lambda m, a: len(a) / 1000)
        self.delay = delay
        self.threads: set[int] = set()

    def score(self, messages: Any, answer: str) -> ScoreResult:
        self.threads.add(threading.get_ident())
        time.sleep(self.delay)
        return super().score(messages, answer)


async def test_a_slow_score_does_not_stall_the_event_loop(flavour: Flavour) -> None:
    scorer = _SlowScorer(0.3)
    handler = flavour.handler(scorer)
    llm = flavour.wire(MockLLM(), handler)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await llm.acomplete("slow one")
    returned_at = ticks
    (rec,) = await handler.await_all()
    task.cancel()
    assert returned_at < 10, "the LLM call waited for scoring on the event loop"
    assert ticks >= 10, "the loop stalled while scoring"
    assert threading.get_ident() not in scorer.threads
    assert rec.result is not None and rec.answer == "slow one"


async def test_parallel_async_queries_match_sequential_scores(flavour: Flavour, tiny: Any) -> None:
    prompts = ["What is rain?", "Name a planet.", "What is 2 + 2?", "Who wrote Hamlet?", "Define entropy."]
    handler = flavour.handler(tiny)
    llm = flavour.wire(MockLLM(), handler)
    for p in prompts:
        llm.complete(p)
    sequential = {r.answer: r.result for r in handler.wait()}
    handler.clear()

    async def one(p: str) -> Any:
        with capture_scores() as cap:  # each task sees only its own answers
            await llm.acomplete(p)
        return await cap.alast()

    got = await asyncio.gather(*(one(p) for p in prompts))
    assert [g.answer for g in got] == prompts
    for g in got:
        assert g.result is not None
        assert g.result.scores() == pytest.approx(sequential[g.answer].scores(), rel=1e-6)
    assert len(handler.scores) == len(prompts)


def test_handlers_refuse_something_that_is_not_a_scorer() -> None:
    from semgrad_guard import ConfigurationError

    with pytest.raises(ConfigurationError, match="needs a Scorer"):
        SemGradCallbackHandler(object())
    with pytest.raises(ConfigurationError, match="needs a Scorer"):
        SemGradEventHandler(object())


def test_unregister_stops_scoring() -> None:
    handler = SemGradEventHandler(MockScorer(lambda m, a: 0.1)).register()
    MockLLM().complete("one")
    handler.unregister()
    MockLLM().complete("two")
    assert [r.answer for r in handler.scores.values()] == ["one"]
