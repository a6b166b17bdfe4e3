"""SemGradCallbackHandler / AsyncSemGradCallbackHandler over fake chat models and tiny scorers."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from langchain_core.language_models.fake import FakeListLLM
from langchain_core.language_models.fake_chat_models import FakeListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_semgrad import (
    SCORE_EVENT,
    AsyncSemGradCallbackHandler,
    LowConfidenceError,
    SemGradCallbackHandler,
    read_score,
)

from semgrad_guard import MockScorer
from semgrad_guard.guard.policy import GuardPolicy


def length_score(messages: list[dict[str, Any]], answer: str) -> float:
    return len(answer) / 100


def test_scores_chat_model_and_writes_metadata_registry() -> None:
    scorer = MockScorer(length_score)
    handler = SemGradCallbackHandler(scorer)
    model = FakeListChatModel(responses=["Paris is the capital."])
    msg = model.invoke(
        [SystemMessage("Be brief."), HumanMessage("Capital of France?")], config={"callbacks": [handler]}
    )
    # the scorer saw the exact chat, rebuilt from LangChain messages
    assert scorer.calls == [
        (
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
            "Paris is the capital.",
        )
    ]
    assert msg.response_metadata["semgrad"]["scores"]["semgrad"] == pytest.approx(0.21)
    assert read_score(msg) == handler.last_result
    assert len(handler.results) == 1
    (run_id,) = handler.results
    assert handler.get(str(run_id)).semgrad == pytest.approx(0.21)
    assert msg.response_metadata["semgrad"]["run_id"] == str(run_id)


def test_real_tiny_scorer_matches_direct_score(tiny: Any) -> None:
    handler = SemGradCallbackHandler(tiny)
    model = FakeListChatModel(responses=["Water boils at 100 degrees."])
    msg = model.invoke("When does water boil?", config={"callbacks": [handler]})
    direct = tiny.score("When does water boil?", "Water boils at 100 degrees.")
    assert read_score(msg) == direct


def test_llm_prompt_is_scored_as_one_user_message() -> None:
    scorer = MockScorer(length_score)
    handler = SemGradCallbackHandler(scorer)
    FakeListLLM(responses=["42"]).invoke("The answer?", config={"callbacks": [handler]})
    assert scorer.calls == [([{"role": "user", "content": "The answer?"}], "42")]
    assert handler.last_result is not None


def test_a_pipeline_echoing_its_prompt_gets_the_echo_cut_not_scored(tiny: Any) -> None:
    # HuggingFacePipeline(return_full_text=True) returns prompt + completion.
    handler = SemGradCallbackHandler(tiny)
    FakeListLLM(responses=["When does water boil? At 100 degrees."]).invoke(
        "When does water boil?", config={"callbacks": [handler]}
    )
    result = handler.last_result
    assert result is not None and result.flags == ["prompt_echo_stripped"]
    assert result.answer_start == len("When does water boil?")
    assert result == tiny.score("When does water boil?", "When does water boil? At 100 degrees.")
    assert result.semgrad == pytest.approx(tiny.score("When does water boil?", " At 100 degrees.").semgrad)


def test_batch_gives_each_prompt_its_own_run_id() -> None:
    handler = SemGradCallbackHandler(MockScorer(length_score))
    model = FakeListChatModel(responses=["a", "bbbb", "cc"])
    out = model.batch(["q1", "q2", "q3"], config={"callbacks": [handler]})
    assert len(handler.results) == 3
    assert sorted(read_score(m).semgrad for m in out) == pytest.approx([0.01, 0.02, 0.04])


def test_tool_call_only_messages_are_skipped_with_reason() -> None:
    scorer = MockScorer(length_score)
    handler = SemGradCallbackHandler(scorer)
    tool_msg = AIMessage(content="", tool_calls=[{"name": "search", "args": {"q": "x"}, "id": "call_1"}])
    model = GenericFakeChatModel(messages=iter([tool_msg]))
    out = model.invoke("look it up", config={"callbacks": [handler]})
    assert out.tool_calls
    assert scorer.calls == []
    assert handler.results == {}
    (reason,) = handler.skipped.values()
    assert "tool-call message" in reason
    assert read_score(out) is None


def test_scoring_error_is_recorded_not_raised_by_default() -> None:
    def boom(messages: list[dict[str, Any]], answer: str) -> float:
        raise ValueError("scorer exploded")

    handler = SemGradCallbackHandler(MockScorer(boom))
    msg = FakeListChatModel(responses=["x"]).invoke("q", config={"callbacks": [handler]})
    assert msg.content == "x"
    (err,) = handler.errors.values()
    assert "scorer exploded" in str(err)


def test_policy_decision_recorded_and_raise_error_stops_chain() -> None:
    policy = GuardPolicy.model_validate(
        {
            "rules": [
                {"name": "calm", "field": "semgrad", "max": 0.5, "action": "accept"},
                {"name": "wild", "field": "semgrad", "action": "abstain"},
            ]
        }
    )
    scorer = MockScorer(lambda m, a: 0.9 if "maybe" in a else 0.1)
    quiet = SemGradCallbackHandler(scorer, policy=policy)
    msg = FakeListChatModel(responses=["maybe 7"]).invoke("q", config={"callbacks": [quiet]})
    assert msg.response_metadata["semgrad"]["action"] == "abstain"
    assert msg.response_metadata["semgrad"]["rule"] == "wild"

    strict = SemGradCallbackHandler(scorer, policy=policy, raise_error=True)
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | FakeListChatModel(responses=["maybe 7"])
    with pytest.raises(LowConfidenceError) as info:
        chain.invoke({"q": "x"}, config={"callbacks": [strict]})
    assert info.value.action == "abstain" and info.value.rule == "wild"
    assert info.value.result.semgrad == pytest.approx(0.9)

    ok = FakeListChatModel(responses=["7"]).invoke("q", config={"callbacks": [strict]})
    assert ok.response_metadata["semgrad"]["action"] == "accept"


def test_policy_over_confidence_without_calibrator_is_a_recorded_error() -> None:
    policy = GuardPolicy.model_validate({"rules": [{"min": 0.5, "action": "accept"}]})
    handler = SemGradCallbackHandler(MockScorer(length_score), policy=policy)
    FakeListChatModel(responses=["x"]).invoke("q", config={"callbacks": [handler]})
    (err,) = handler.errors.values()
    assert "calibrator" in str(err).lower() or "confidence" in str(err)


async def test_custom_event_inside_a_chain() -> None:
    handler = SemGradCallbackHandler(MockScorer(length_score))
    chain = RunnableLambda(lambda x: x) | FakeListChatModel(responses=["abc"])
    events = [e async for e in chain.astream_events("q", version="v2", config={"callbacks": [handler]})]
    custom = [e for e in events if e["event"] == "on_custom_event" and e["name"] == SCORE_EVENT]
    assert len(custom) == 1
    assert custom[0]["data"]["scores"]["semgrad"] == pytest.approx(0.03)


def test_sync_handler_is_thread_safe_under_concurrent_runs() -> None:
    handler = SemGradCallbackHandler(MockScorer(length_score))
    model = FakeListChatModel(responses=["x" * i for i in range(1, 41)])

    def work(i: int) -> None:
        model.invoke(f"q{i}", config={"callbacks": [handler]})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(handler.results) == 40
    assert handler._prompts == {}


async def test_async_handler_scores_and_annotates() -> None:
    handler = AsyncSemGradCallbackHandler(MockScorer(length_score))
    msg = await FakeListChatModel(responses=["four"]).ainvoke("2+2?", config={"callbacks": [handler]})
    assert read_score(msg).semgrad == pytest.approx(0.04)
    assert handler.get(next(iter(handler.results))) is not None


async def test_async_handler_does_not_stall_the_event_loop() -> None:
    def slow(messages: list[dict[str, Any]], answer: str) -> float:
        time.sleep(0.6)
        return 0.3

    handler = AsyncSemGradCallbackHandler(MockScorer(slow))
    ticks: list[float] = []

    async def ticker() -> None:
        for _ in range(10):
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.03)

    t = asyncio.create_task(ticker())
    await FakeListChatModel(responses=["x"]).ainvoke("q", config={"callbacks": [handler]})
    await t
    # while the 0.6 s score ran in its thread, the ticker kept ticking (no 0.6 s gap)
    assert max(b - a for a, b in zip(ticks, ticks[1:], strict=False)) < 0.3
    assert handler.last_result.semgrad == 0.3


async def test_eight_parallel_ainvokes_match_sequential(tiny: Any) -> None:
    answers = [f"Answer number {i} is {i * 7}." for i in range(8)]
    questions = [f"What is {i} times 7?" for i in range(8)]

    def make() -> tuple[AsyncSemGradCallbackHandler, list[Any]]:
        h = AsyncSemGradCallbackHandler(tiny)
        return h, [FakeListChatModel(responses=[a]) for a in answers]

    h_seq, models = make()
    seq = [
        read_score(await m.ainvoke(q, config={"callbacks": [h_seq]}))
        for m, q in zip(models, questions, strict=True)
    ]
    h_par, models = make()
    par = await asyncio.gather(
        *(m.ainvoke(q, config={"callbacks": [h_par]}) for m, q in zip(models, questions, strict=True))
    )
    assert [read_score(p) for p in par] == seq
    assert len(h_par.results) == 8
