"""SemGradOutputParser: every policy action, retry/fallback interplay, review with the prompt, streaming."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.runnables import RunnableLambda
from langchain_semgrad import ChatSemGrad, LowConfidenceError, SemGradCallbackHandler, SemGradOutputParser

from semgrad_guard import MockScorer
from semgrad_guard.guard.outcomes import GuardResult
from semgrad_guard.guard.policy import GuardPolicy
from semgrad_guard.review.queue import SQLiteReviewQueue

# semgrad < 0.2 accept, < 0.4 annotate, < 0.6 retry, < 0.8 review, else abstain; exactly 0.99 raises
POLICY = GuardPolicy.from_dict(
    {
        "rules": [
            {"name": "sure", "field": "semgrad", "max": 0.2, "action": "accept"},
            {
                "name": "fairly",
                "field": "semgrad",
                "max": 0.4,
                "action": "annotate",
                "message": "double-check",
            },
            {"name": "shaky", "field": "semgrad", "max": 0.6, "action": "retry"},
            {"name": "ask-a-human", "field": "semgrad", "max": 0.8, "action": "review"},
            {"name": "hopeless", "field": "semgrad", "max": 0.99, "action": "abstain"},
            {"name": "alarm", "field": "semgrad", "action": "raise"},
        ],
        "abstain_message": "I don't know.",
    }
)


def scored_by_table(table: dict[str, float]) -> MockScorer:
    return MockScorer(lambda m, a: table[a], answers=lambda messages, **kw: "")


def chain_for(answer: str, score: float, tmp_path: Path, **kw: Any) -> Any:
    scorer = MockScorer(lambda m, a: score, answers=[answer])
    queue = SQLiteReviewQueue(tmp_path / "review.db")
    return ChatSemGrad(scorer=scorer) | SemGradOutputParser(policy=POLICY, review_queue=queue, **kw), queue


@pytest.mark.parametrize(
    ("score", "expected"),
    [(0.1, "Paris"), (0.3, "Paris\n\n[double-check]"), (0.9, "I don't know.")],
)
def test_accept_annotate_abstain(score: float, expected: str, tmp_path: Path) -> None:
    chain, _ = chain_for("Paris", score, tmp_path)
    assert chain.invoke("Capital of France?") == expected


def test_retry_raises_low_confidence_error_which_is_an_output_parser_exception(tmp_path: Path) -> None:
    chain, _ = chain_for("Lyon", 0.5, tmp_path)
    with pytest.raises(LowConfidenceError) as info:
        chain.invoke("Capital of France?")
    assert isinstance(info.value, OutputParserException) and isinstance(info.value, ValueError)
    assert info.value.action == "retry" and info.value.rule == "shaky"
    assert info.value.result.semgrad == 0.5 and info.value.answer == "Lyon"


def test_raise_action_raises_too(tmp_path: Path) -> None:
    chain, _ = chain_for("x", 0.995, tmp_path)
    with pytest.raises(LowConfidenceError) as info:
        chain.invoke("q")
    assert info.value.action == "raise" and info.value.rule == "alarm"


def test_with_retry_regenerates_until_accepted(tmp_path: Path) -> None:
    table = {"Lyon": 0.5, "Paris": 0.1}
    scorer = MockScorer(lambda m, a: table[a], answers=["Lyon", "Paris"])
    chain = (ChatSemGrad(scorer=scorer) | SemGradOutputParser(policy=POLICY)).with_retry(
        retry_if_exception_type=(LowConfidenceError,), stop_after_attempt=3, wait_exponential_jitter=False
    )
    assert chain.invoke("Capital of France?") == "Paris"
    assert [a for _, a in scorer.calls] == ["Lyon", "Paris"]


def test_with_fallbacks_takes_over_on_low_confidence(tmp_path: Path) -> None:
    chain, _ = chain_for("Lyon", 0.5, tmp_path)
    fallback = RunnableLambda(lambda _: "escalated to a bigger model")
    assert chain.with_fallbacks([fallback], exceptions_to_handle=(LowConfidenceError,)).invoke("q") == (
        "escalated to a bigger model"
    )


def test_review_enqueues_with_the_prompt_from_the_handler(tmp_path: Path) -> None:
    scorer = MockScorer(lambda m, a: 0.7)
    handler = SemGradCallbackHandler(scorer)
    queue = SQLiteReviewQueue(tmp_path / "review.db")
    parser = SemGradOutputParser(policy=POLICY, review_queue=queue, handler=handler, return_guard_result=True)
    chain = FakeListChatModel(responses=["Maybe 12"]) | parser
    out = chain.invoke("How many moons?", config={"callbacks": [handler]})
    assert isinstance(out, GuardResult)
    assert out.action.value == "review" and out.review_status == "pending"
    assert out.answer == POLICY.review.pending_message
    item = queue.get(out.review_id)
    assert item.answer == "Maybe 12" and item.rule == "ask-a-human"
    assert item.messages == [{"role": "user", "content": "How many moons?"}]
    assert item.result is not None and item.result.semgrad == 0.7


async def test_async_parse_and_astream_match_sync(tmp_path: Path) -> None:
    chain, _ = chain_for("Paris", 0.3, tmp_path)
    assert await chain.ainvoke("q") == "Paris\n\n[double-check]"
    assert [p async for p in chain.astream("q")] == ["Paris", "Paris\n\n[double-check]"]


def test_streaming_passes_text_through_and_final_is_gated(tmp_path: Path) -> None:
    chain, _ = chain_for("Paris", 0.9, tmp_path)
    pieces = list(chain.stream("q"))
    # partial results pass the text through; the final, scored message is gated (abstain here)
    assert pieces == ["Paris", "I don't know."]


def test_missing_score_is_a_clear_error() -> None:
    chain = FakeListChatModel(responses=["x"]) | SemGradOutputParser(policy=POLICY)
    with pytest.raises(OutputParserException, match="SemGradCallbackHandler"):
        chain.invoke("q")


def test_needs_a_policy() -> None:
    with pytest.raises(ValueError, match="policy"):
        SemGradOutputParser()
