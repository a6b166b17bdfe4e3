"""guard_runnable over chat models and LCEL chains: retries, strategies, abstain, review, async, batch."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_semgrad import ChatSemGrad, guard_runnable, read_payload, read_score

from semgrad_guard import MockScorer, ScorePayload
from semgrad_guard.errors import ConfigurationError
from semgrad_guard.guard.outcomes import GuardResult
from semgrad_guard.guard.policy import Action, GuardPolicy
from semgrad_guard.review.queue import SQLiteReviewQueue


def band_policy(**retry: Any) -> GuardPolicy:
    return GuardPolicy.from_dict(
        {
            "rules": [
                {"name": "ok", "field": "semgrad", "max": 0.3, "action": "accept"},
                {"name": "again", "field": "semgrad", "max": 0.7, "action": "retry"},
                {"name": "human", "field": "semgrad", "max": 0.9, "action": "review"},
                {"name": "no", "field": "semgrad", "action": "abstain"},
            ],
            "retry": {"max_attempts": 3, "strategy": "resample", "on_exhausted": "abstain", **retry},
            "abstain_message": "I cannot answer that reliably.",
        }
    )


TABLE = {"Sydney": 0.5, "Melbourne": 0.6, "Canberra": 0.1, "Perth": 0.8, "Atlantis": 0.95}


def table_scorer(answers: Any) -> MockScorer:
    return MockScorer(lambda m, a: TABLE[a], answers=answers)


def test_chat_model_retries_with_resample_settings_until_accepted() -> None:
    seen: list[dict[str, Any]] = []
    answers = iter(["Sydney", "Melbourne", "Canberra"])

    def answer(messages: list[dict[str, Any]], **kwargs: Any) -> str:
        seen.append(kwargs)
        return next(answers)

    scorer = table_scorer(answer)
    guarded = guard_runnable(ChatSemGrad(scorer=scorer), scorer, band_policy())
    out = guarded.invoke("Capital of Australia?")
    result: GuardResult = out["guard_result"]
    assert out["answer"] == "Canberra" and result.action is Action.ACCEPT
    assert [a.answer for a in result.attempts] == ["Sydney", "Melbourne", "Canberra"]
    # the retry strategy's generation settings reached the model (greedy first, then sampled, new seeds)
    assert seen[0]["do_sample"] is False
    assert seen[1]["do_sample"] is True and seen[1]["temperature"] == 0.7 and seen[1]["seed"] == 1
    assert seen[2]["temperature"] == pytest.approx(0.9) and seen[2]["seed"] == 2
    # ChatSemGrad's own scores were reused: the scorer scored each answer once (inside generate)
    assert [a for _, a in scorer.calls] == ["Sydney", "Melbourne", "Canberra"]


def test_exhausted_retries_abstain_with_best_attempt_recorded() -> None:
    scorer = table_scorer(["Sydney", "Melbourne", "Sydney"])
    out = guard_runnable(ChatSemGrad(scorer=scorer), scorer, band_policy(), output="guard_result").invoke("q")
    assert out.action is Action.ABSTAIN and out.rule == "retry.on_exhausted"
    assert out.answer == "I cannot answer that reliably."
    assert out.result.semgrad == 0.5  # the best attempt


def test_reconsider_sends_the_rewritten_chat_to_a_chat_model() -> None:
    received: list[list[dict[str, Any]]] = []
    answers = iter(["Sydney", "Canberra"])

    def answer(messages: list[dict[str, Any]], **kwargs: Any) -> str:
        received.append(messages)
        return next(answers)

    scorer = table_scorer(answer)
    guarded = guard_runnable(
        ChatSemGrad(scorer=scorer), scorer, band_policy(strategy="reconsider"), output="text"
    )
    assert guarded.invoke("Capital of Australia?") == "Canberra"
    assert [m["role"] for m in received[1]] == ["user", "assistant", "user"]
    assert received[1][1]["content"] == "Sydney"
    # the reconsidered answer is scored against the original question, not the reconsider chat
    assert scorer.calls[-1] == ([{"role": "user", "content": "Capital of Australia?"}], "Canberra")


def test_rag_chain_is_scored_against_the_prompt_the_model_saw() -> None:
    scorer = MockScorer(lambda m, a: 0.1)
    prompt = ChatPromptTemplate.from_messages([("system", "Context: {context}"), ("human", "{question}")])
    chain = (
        {"context": RunnableLambda(lambda q: "Canberra is the capital."), "question": RunnablePassthrough()}
        | prompt
        | FakeListChatModel(responses=["Canberra"])
        | StrOutputParser()
    )
    out = guard_runnable(chain, scorer, band_policy(), output="message").invoke("Capital of Australia?")
    assert isinstance(out, AIMessage) and out.content == "Canberra"
    assert scorer.calls == [
        (
            [
                {"role": "system", "content": "Context: Canberra is the capital."},
                {"role": "user", "content": "Capital of Australia?"},
            ],
            "Canberra",
        )
    ]
    payload = read_payload(out)
    assert payload["action"] == "accept" and payload["rule"] == "ok" and read_score(out).semgrad == 0.1
    typed = ScorePayload.read(out.response_metadata)  # the one schema every adapter writes
    assert typed is not None and (typed.version, typed.source, typed.attempts) == (1, "guard", 1)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_an_lcel_chain_called_with_a_dict_is_scored_on_the_captured_chat(
    tmp_path: Path, asynchronous: bool
) -> None:
    # The usual LCEL call: a prompt template's variables in, the chat the model saw is what gets scored.
    scorer = MockScorer(lambda m, a: 0.1)
    prompt = ChatPromptTemplate.from_messages([("system", "Context: {context}"), ("human", "{question}")])
    chain = prompt | FakeListChatModel(responses=["Canberra"])
    guarded = guard_runnable(chain, scorer, band_policy(), output="guard_result")
    question = {"context": "Canberra is the capital.", "question": "Capital of Australia?"}
    result = asyncio.run(guarded.ainvoke(question)) if asynchronous else guarded.invoke(question)
    assert (result.action, result.answer) == (Action.ACCEPT, "Canberra")
    assert scorer.calls == [
        (
            [
                {"role": "system", "content": "Context: Canberra is the capital."},
                {"role": "user", "content": "Capital of Australia?"},
            ],
            "Canberra",
        )
    ]


def test_a_dict_input_with_no_observable_model_call_fails_the_policy_way_not_silently(tmp_path: Path) -> None:
    scorer = MockScorer(lambda m, a: 0.1)
    chain = RunnableLambda(lambda d: "Canberra")  # no chat model inside: no prompt to score against
    queue = SQLiteReviewQueue(tmp_path / "review.db")  # on_error: review
    guarded = guard_runnable(chain, scorer, band_policy(), review_queue=queue, output="guard_result")
    result = guarded.invoke({"question": "Q?"})
    assert scorer.calls == [] and result.error is not None and "no chat model" in result.error


def test_chain_with_chat_semgrad_gets_resample_settings_through_context() -> None:
    seen: list[dict[str, Any]] = []
    answers = iter(["Sydney", "Canberra"])

    def answer(messages: list[dict[str, Any]], **kwargs: Any) -> str:
        seen.append(kwargs)
        return next(answers)

    scorer = table_scorer(answer)
    prompt = ChatPromptTemplate.from_messages([("human", "Q: {question}")])
    chain = {"question": RunnablePassthrough()} | prompt | ChatSemGrad(scorer=scorer) | StrOutputParser()
    out = guard_runnable(chain, scorer, band_policy(), output="text").invoke("Capital?")
    assert out == "Canberra"
    assert seen[0]["do_sample"] is False and seen[1]["do_sample"] is True


def test_attempt_input_hook_turns_the_attempt_into_chain_input() -> None:
    scorer = MockScorer(lambda m, a: TABLE[a])
    model = FakeListChatModel(responses=["Sydney", "Canberra"])
    prompt = ChatPromptTemplate.from_messages([("human", "{question} (k={k})")])
    chain = prompt | model | StrOutputParser()
    inputs: list[Any] = []

    def attempt_input(original: str, ctx: Any) -> dict[str, Any]:
        inputs.append(ctx.number)
        return {"question": original, "k": 4 * ctx.number}

    out = guard_runnable(
        chain, scorer, band_policy(), output="guard_result", attempt_input=attempt_input
    ).invoke("Capital?")
    assert out.answer == "Canberra" and inputs == [1, 2]
    assert scorer.calls[1][0] == [{"role": "user", "content": "Capital? (k=8)"}]


def test_review_enqueues_and_returns_pending(tmp_path: Path) -> None:
    scorer = table_scorer(["Perth"])
    queue = SQLiteReviewQueue(tmp_path / "r.db")
    out = guard_runnable(ChatSemGrad(scorer=scorer), scorer, band_policy(), review_queue=queue).invoke(
        "Capital?"
    )
    result = out["guard_result"]
    assert result.action is Action.REVIEW and result.review_status == "pending"
    assert out["answer"] == band_policy().review.pending_message
    assert queue.get(result.review_id).answer == "Perth"


async def test_async_and_batch_and_eight_parallel_match_sequential() -> None:
    def answer(messages: list[dict[str, Any]], **kwargs: Any) -> str:
        return "Canberra" if "Australia" in messages[-1]["content"] else "Atlantis"

    scorer = table_scorer(answer)
    guarded = guard_runnable(ChatSemGrad(scorer=scorer), scorer, band_policy(), output="text")
    questions = [f"Capital of {'Australia' if i % 2 else 'Mu'} #{i}?" for i in range(8)]
    seq = [guarded.invoke(q) for q in questions]
    assert seq == ["I cannot answer that reliably." if i % 2 == 0 else "Canberra" for i in range(8)]
    assert guarded.batch(questions) == seq
    assert await asyncio.gather(*(guarded.ainvoke(q) for q in questions)) == seq
    assert await guarded.abatch(questions) == seq


async def test_eight_parallel_ainvokes_with_tiny_scorer_match_sequential(tiny: Any) -> None:
    policy = GuardPolicy.from_dict({"rules": [{"field": "semgrad", "action": "accept"}]})
    guarded = guard_runnable(ChatSemGrad(scorer=tiny, max_tokens=6), tiny, policy, output="guard_result")
    questions = [f"Question {i}?" for i in range(8)]
    seq = [await guarded.ainvoke(q) for q in questions]
    par = await asyncio.gather(*(guarded.ainvoke(q) for q in questions))
    assert [r.answer for r in par] == [r.answer for r in seq]
    assert [r.result for r in par] == [r.result for r in seq]


def test_bad_output_type_and_bad_option_are_clear_errors() -> None:
    scorer = MockScorer(lambda m, a: 0.1)
    with pytest.raises(ConfigurationError, match="output must be"):
        guard_runnable(RunnableLambda(lambda x: x), scorer, band_policy(), output="everything")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="returned a int"):
        guard_runnable(RunnableLambda(lambda x: 42), scorer, band_policy()).invoke("q")
