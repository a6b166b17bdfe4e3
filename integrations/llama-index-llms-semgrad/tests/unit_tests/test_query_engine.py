"""SemGradQueryEngine: accept, abstain, retry (wider retrieval, resampling), review, raise, errors, async."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.base.response.schema import Response
from llama_index.core.embeddings import MockEmbedding
from llama_index.llms.semgrad import SemGradLLM
from llama_index.llms.semgrad.evaluation import default_qa_messages
from llama_index.llms.semgrad.handlers import SemGradEventHandler
from llama_index.llms.semgrad.query_engine import SemGradQueryEngine, guard_result_from_response

from semgrad_guard import (
    AnswerRejectedError,
    ConfigurationError,
    ContextLengthError,
    MockScorer,
    ScoreResult,
    SQLiteReviewQueue,
)

from .helpers import ScriptedLLM, context_chunks, library_index

ACCEPT_LOW = {"field": "semgrad", "max": 0.5, "action": "accept"}


def policy(*rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"rules": list(rules), **extra}


def by_answer(table: dict[str, float]) -> MockScorer:
    return MockScorer(lambda m, a: table.get(a.strip(), 0.99))


def test_accepted_answer_is_scored_on_the_exact_prompt_the_llm_saw() -> None:
    llm = ScriptedLLM(answer_fn=lambda p: "At 9 am.")
    engine = library_index().as_query_engine(llm=llm, similarity_top_k=2)
    scorer = by_answer({"At 9 am.": 0.1})
    guarded = SemGradQueryEngine(engine, scorer, policy(ACCEPT_LOW, {"action": "abstain"}))
    response = guarded.query("When does the library open?")
    assert isinstance(response, Response)
    assert str(response) == "At 9 am."
    result = guard_result_from_response(response)
    assert result is not None and result.action.value == "accept" and result.accepted
    assert result.result is not None and result.result.semgrad == 0.1
    # The score came from the LLM call itself: the whole RAG prompt, context included.
    messages, answer = scorer.calls[-1]
    assert messages == [{"role": "user", "content": llm.prompts[-1]}]
    assert context_chunks(messages) == 2
    assert response.metadata["semgrad_attempts"]["1"]["scored_prompt"] == "observed"
    assert all("semgrad_status" not in n.node.metadata for n in response.source_nodes)
    guarded.close()


def test_abstain_keeps_and_marks_source_nodes_without_touching_the_index() -> None:
    index = library_index()
    engine = index.as_query_engine(llm=ScriptedLLM(answer_fn=lambda p: "Maybe on Mars."), similarity_top_k=3)
    guarded = SemGradQueryEngine(
        engine,
        by_answer({}),
        policy(ACCEPT_LOW, {"name": "unsure", "action": "abstain"}, abstain_message="I don't know."),
    )
    response = guarded.query("Where is the library?")
    assert str(response) == "I don't know."
    assert len(response.source_nodes) == 3
    assert {n.node.metadata["semgrad_status"] for n in response.source_nodes} == {"abstained"}
    result = guard_result_from_response(response)
    assert result is not None and result.rule == "unsure" and result.original_answer == "Maybe on Mars."
    stored = index.docstore.docs.values()
    assert all("semgrad_status" not in d.metadata for d in stored)
    guarded.close()


def test_retry_widens_retrieval_and_reformulates_the_query() -> None:
    # Confident only when at least 4 documents were in the prompt.
    scorer = MockScorer(lambda m, a: 0.1 if context_chunks(m) >= 4 else 0.9)
    llm = ScriptedLLM(answer_fn=lambda p: "Up to 12 items.")
    engine = library_index().as_query_engine(llm=llm, similarity_top_k=2)
    guarded = SemGradQueryEngine(
        engine,
        scorer,
        policy(
            ACCEPT_LOW,
            {"action": "retry"},
            retry={"max_attempts": 3, "strategy": "widen_retrieval", "on_exhausted": "abstain"},
        ),
    )
    response = guarded.query("How many items can I borrow?")
    result = guard_result_from_response(response)
    assert result is not None and result.action.value == "accept"
    assert [a.strategy for a in result.attempts] == [None, "widen_retrieval"]
    attempts = response.metadata["semgrad_attempts"]
    assert "similarity_top_k" not in attempts["1"] and attempts["2"]["similarity_top_k"] == 4
    assert len(response.source_nodes) == 4
    assert "Answer only from the context information" in attempts["2"]["query"]
    assert "Answer only from the context information" in llm.prompts[-1]
    # The shared engine's retriever keeps its own top-k.
    assert engine.retriever.similarity_top_k == 2
    guarded.close()


def test_retries_run_out_into_the_policys_on_exhausted_action() -> None:
    engine = library_index().as_query_engine(
        llm=ScriptedLLM(answer_fn=lambda p: "No idea."), similarity_top_k=1
    )
    guarded = SemGradQueryEngine(
        engine,
        by_answer({}),
        policy(
            ACCEPT_LOW,
            {"action": "retry"},
            retry={"max_attempts": 3, "strategy": "widen_retrieval", "on_exhausted": "abstain"},
        ),
        top_k_growth=3,
    )
    response = guarded.query("Who founded it?")
    result = guard_result_from_response(response)
    assert result is not None and result.action.value == "abstain" and result.rule == "retry.on_exhausted"
    assert [response.metadata["semgrad_attempts"][k].get("similarity_top_k") for k in ("1", "2", "3")] == [
        None,
        3,
        9,
    ]
    guarded.close()


def test_resample_reaches_a_semgrad_llm_inside_the_engine() -> None:
    seen: list[dict[str, Any]] = []

    def answer(messages: Any, **kwargs: Any) -> str:
        seen.append(kwargs)
        return "greedy" if not kwargs.get("do_sample") else "sampled"

    scorer = MockScorer(lambda m, a: 0.1 if a == "sampled" else 0.9, answers=answer)
    engine = library_index().as_query_engine(llm=SemGradLLM(scorer), similarity_top_k=2)
    guarded = SemGradQueryEngine(
        engine,
        scorer,
        policy(ACCEPT_LOW, {"action": "retry"}, retry={"max_attempts": 2, "strategy": "resample"}),
    )
    response = guarded.query("Is there story time?")
    assert str(response) == "sampled"
    assert seen[0]["do_sample"] is False
    assert seen[1]["do_sample"] is True and seen[1]["temperature"] == 0.7 and seen[1]["seed"] == 1
    # SemGradLLM's own score was used: no second scoring call for the answers it generated.
    assert len(scorer.calls) == 2
    guarded.close()


def test_reconsider_folds_the_previous_answer_into_the_query() -> None:
    llm = ScriptedLLM(answer_fn=lambda p: "Saturdays at 10 am." if "previous answer" in p else "Sundays.")
    engine = library_index().as_query_engine(llm=llm, similarity_top_k=2)
    guarded = SemGradQueryEngine(
        engine,
        by_answer({"Saturdays at 10 am.": 0.2}),
        policy(ACCEPT_LOW, {"action": "retry"}, retry={"max_attempts": 2, "strategy": "reconsider"}),
    )
    response = guarded.query("When is story time?")
    assert str(response) == "Saturdays at 10 am."
    assert 'A previous answer was: "Sundays."' in llm.prompts[-1]
    guarded.close()


def test_review_enqueues_and_returns_a_pending_response(tmp_path: Path) -> None:
    queue = SQLiteReviewQueue(tmp_path / "review.db")
    engine = library_index().as_query_engine(
        llm=ScriptedLLM(answer_fn=lambda p: "20 cents a day."), similarity_top_k=2
    )
    guarded = SemGradQueryEngine(
        engine,
        by_answer({"20 cents a day.": 0.7}),
        policy(ACCEPT_LOW, {"name": "check", "action": "review"}),
        review_queue=queue,
    )
    response = guarded.query("What are the late fees?")
    result = guard_result_from_response(response)
    assert result is not None and result.review_id is not None and result.review_status == "pending"
    assert str(response) == guarded.policy.review.pending_message
    assert {n.node.metadata["semgrad_status"] for n in response.source_nodes} == {"pending_review"}
    item = queue.get(result.review_id)
    assert item.answer == "20 cents a day." and item.rule == "check"
    assert item.metadata["query"] == "What are the late fees?"
    assert len(item.metadata["semgrad_attempts"]["1"]["sources"]) == 2
    guarded.close()


def test_raise_rule_raises_answer_rejected() -> None:
    engine = library_index().as_query_engine(llm=ScriptedLLM(answer_fn=lambda p: "Nope."), similarity_top_k=1)
    guarded = SemGradQueryEngine(
        engine, by_answer({}), policy(ACCEPT_LOW, {"name": "reject", "action": "raise"})
    )
    with pytest.raises(AnswerRejectedError, match="rule 'reject' rejected the answer"):
        guarded.query("Anything?")
    guarded.close()


def test_scoring_failure_on_the_real_prompt_applies_on_error() -> None:
    def too_long(messages: Any, answer: str) -> float:
        if context_chunks(messages):
            raise ContextLengthError(5000, 12, 2048)
        return 0.0  # a context-free rescoring would wrongly pass

    engine = library_index().as_query_engine(llm=ScriptedLLM(answer_fn=lambda p: "Yes."), similarity_top_k=2)
    guarded = SemGradQueryEngine(engine, MockScorer(too_long), policy(ACCEPT_LOW, on_error="abstain"))
    response = guarded.query("Is it open on holidays?")
    result = guard_result_from_response(response)
    assert result is not None and result.action.value == "abstain" and result.rule == "on_error"
    assert result.error is not None and "exceeds the model's context" in result.error
    guarded.close()


def test_unobserved_llm_calls_are_scored_on_the_rebuilt_qa_prompt() -> None:
    scorer = MockScorer(lambda m, a: 0.1)
    detached = SemGradEventHandler(scorer, only_captured=True)  # never registered: sees nothing
    engine = library_index().as_query_engine(llm=ScriptedLLM(answer_fn=lambda p: "Two."), similarity_top_k=2)
    guarded = SemGradQueryEngine(engine, scorer, policy(ACCEPT_LOW, {"action": "abstain"}), handler=detached)
    response = guarded.query("How many 3D printers?")
    assert str(response) == "Two."
    messages, _ = scorer.calls[-1]
    contexts = [n.get_content() for n in response.source_nodes]
    assert messages == default_qa_messages("How many 3D printers?", contexts)
    assert response.metadata["semgrad_attempts"]["1"]["scored_prompt"] == "rebuilt"


def test_a_streaming_inner_engine_is_refused() -> None:
    engine = library_index().as_query_engine(llm=ScriptedLLM(answer_fn=lambda p: "x"), streaming=True)
    guarded = SemGradQueryEngine(engine, by_answer({}), policy(ACCEPT_LOW, {"action": "abstain"}))
    with pytest.raises(ConfigurationError, match="streaming=False"):
        guarded.query("q")
    guarded.close()


def test_widening_an_engine_without_a_retriever_explains_itself() -> None:
    from llama_index.core import Document, SummaryIndex

    engine = SummaryIndex.from_documents([Document(text="a fact")]).as_query_engine(
        llm=ScriptedLLM(answer_fn=lambda p: "x")
    )
    guarded = SemGradQueryEngine(
        engine,
        by_answer({}),
        policy(ACCEPT_LOW, {"action": "retry"}, retry={"max_attempts": 2, "strategy": "widen_retrieval"}),
    )
    with pytest.raises(ConfigurationError, match="no retriever with similarity_top_k"):
        guarded.query("q")
    guarded.close()


def test_bad_settings_are_configuration_errors() -> None:
    engine = library_index().as_query_engine(llm=ScriptedLLM(answer_fn=lambda p: "x"))
    with pytest.raises(ConfigurationError, match="top_k_growth"):
        SemGradQueryEngine(engine, by_answer({}), policy(ACCEPT_LOW), top_k_growth=0)
    with pytest.raises(ConfigurationError, match="no calibrator"):
        SemGradQueryEngine(engine, by_answer({}), policy({"min": 0.8, "action": "accept"}))


class _SlowScorer(MockScorer):
    def __init__(self) -> None:
        super().__init__(lambda m, a: 0.1 if "9 am" in a else 0.9)
        self.threads: set[int] = set()

    def score(self, messages: Any, answer: str) -> ScoreResult:
        self.threads.add(threading.get_ident())
        time.sleep(0.2)
        return super().score(messages, answer)


async def test_async_queries_do_not_block_and_match_sync_decisions() -> None:
    questions = ["When does it open?", "Is it open at 9 am?", "Where is it?"]
    llm = ScriptedLLM(answer_fn=lambda p: "At 9 am." if "open" in p.split("Query:")[-1] else "Unknown.")
    engine = library_index().as_query_engine(
        llm=llm, similarity_top_k=2, embed_model=MockEmbedding(embed_dim=8)
    )
    scorer = _SlowScorer()
    guarded = SemGradQueryEngine(engine, scorer, policy(ACCEPT_LOW, {"action": "abstain"}))
    sync = [guarded.query(q) for q in questions]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    parallel = await asyncio.gather(*(guarded.aquery(q) for q in questions))
    task.cancel()
    assert (
        [str(r) for r in parallel]
        == [str(r) for r in sync]
        == ["At 9 am.", "At 9 am.", "I'm not confident enough to answer that."]
    )
    for a, b in zip(parallel, sync, strict=True):
        ra, rb = guard_result_from_response(a), guard_result_from_response(b)
        assert ra is not None and rb is not None
        assert ra.action == rb.action and ra.result == rb.result
    assert ticks >= 15, "scoring stalled the event loop"
    assert threading.get_ident() not in scorer.threads
    guarded.close()


def test_review_queue_named_by_a_path_string(tmp_path: Path) -> None:
    """review_queue= takes what the core takes: a queue, a path or a postgresql:// URL."""
    db = tmp_path / "named.db"
    engine = library_index().as_query_engine(
        llm=ScriptedLLM(answer_fn=lambda p: "20 cents a day."), similarity_top_k=2
    )
    guarded = SemGradQueryEngine(
        engine,
        by_answer({"20 cents a day.": 0.7}),
        policy(ACCEPT_LOW, {"name": "check", "action": "review"}),
        review_queue=str(db),
    )
    guarded.query("What are the late fees?")
    with SQLiteReviewQueue(db) as q:
        assert [it.answer for it in q.list()] == ["20 cents a day."]
    guarded.close()
