"""The review workflow: InputRequiredEvent with answer and scores, continue on HumanResponseEvent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from llama_index.llms.semgrad.query_engine import SemGradQueryEngine, guard_result_from_response
from llama_index.llms.semgrad.workflow import ReviewDecision, ReviewRequired, SemGradReviewWorkflow

from semgrad_guard import ConfigurationError, MockScorer, SQLiteReviewQueue

from .helpers import ScriptedLLM, library_index

POLICY = {
    "rules": [{"field": "semgrad", "max": 0.3, "action": "accept"}, {"name": "check", "action": "review"}]
}


def workflow(tmp_path: Path, answer: str, semgrad: float) -> tuple[SemGradReviewWorkflow, SQLiteReviewQueue]:
    queue = SQLiteReviewQueue(tmp_path / "review.db")
    engine = library_index().as_query_engine(llm=ScriptedLLM(answer_fn=lambda p: answer), similarity_top_k=2)
    guarded = SemGradQueryEngine(engine, MockScorer(lambda m, a: semgrad), POLICY, review_queue=queue)
    return SemGradReviewWorkflow(guarded, timeout=60), queue


async def run_with(wf: SemGradReviewWorkflow, decide: Any) -> tuple[Any, list[ReviewRequired]]:
    handler = wf.run(query="What are the late fees?")
    asked: list[ReviewRequired] = []
    async for event in handler.stream_events():
        if isinstance(event, ReviewRequired):
            asked.append(event)
            handler.ctx.send_event(decide(event))
    return await handler, asked


async def test_confident_answers_finish_without_asking(tmp_path: Path) -> None:
    wf, queue = workflow(tmp_path, "20 cents per day.", 0.1)
    response, asked = await run_with(wf, lambda e: pytest.fail("no review expected"))
    assert asked == [] and str(response) == "20 cents per day."
    assert len(queue) == 0


async def test_review_shows_answer_and_scores_and_approval_releases_it(tmp_path: Path) -> None:
    wf, queue = workflow(tmp_path, "20 cents per day.", 0.5)
    response, asked = await run_with(
        wf, lambda e: ReviewDecision(decision="approve", reviewer="ana", note="matches the docs")
    )
    (event,) = asked
    assert event.answer == "20 cents per day." and event.query == "What are the late fees?"
    assert event.scores["semgrad"] == 0.5 and event.rule == "check"
    assert len(event.sources) == 2 and "review" in event.prefix.lower()
    assert str(response) == "20 cents per day."
    assert all("semgrad_status" not in n.node.metadata for n in response.source_nodes)
    item = queue.get(event.review_id)
    assert item.status.value == "approved" and item.reviewer == "ana" and item.note == "matches the docs"
    result = guard_result_from_response(response)
    assert result is not None and result.review_status == "approved"


async def test_edit_replaces_the_answer_and_reject_abstains(tmp_path: Path) -> None:
    wf, queue = workflow(tmp_path, "2 dollars.", 0.5)
    edited, asked = await run_with(
        wf, lambda e: ReviewDecision(decision="edit", answer="20 cents per item per day.", reviewer="bo")
    )
    assert str(edited) == "20 cents per item per day."
    assert queue.get(asked[0].review_id).final_answer == "20 cents per item per day."
    # The same question and answer again: the queue decides it as bo did; no one is asked.
    again, asked = await run_with(wf, lambda e: pytest.fail("a judged answer is not asked again"))
    assert asked == [] and str(again) == "20 cents per item per day."
    result = guard_result_from_response(again)
    assert result is not None and result.review_status == "edited"
    wf, queue = workflow(tmp_path / "fresh", "2 dollars.", 0.5)  # a queue that never judged it
    rejected, asked = await run_with(wf, lambda e: ReviewDecision(decision="reject", reviewer="bo"))
    assert str(rejected) == wf.engine.policy.abstain_message
    assert {n.node.metadata["semgrad_status"] for n in rejected.source_nodes} == {"rejected_by_reviewer"}
    assert queue.get(asked[0].review_id).status.value == "rejected"


def test_the_workflow_needs_a_guarded_engine_that_does_not_block(tmp_path: Path) -> None:
    engine = library_index().as_query_engine(llm=ScriptedLLM(answer_fn=lambda p: "x"))
    with pytest.raises(ConfigurationError, match="needs a SemGradQueryEngine"):
        SemGradReviewWorkflow(engine)  # type: ignore[arg-type]
    blocking = SemGradQueryEngine(
        engine,
        MockScorer(lambda m, a: 0.5),
        {**POLICY, "review": {"wait": 5}},
        review_queue=SQLiteReviewQueue(tmp_path / "r.db"),
    )
    with pytest.raises(ConfigurationError, match="review.wait"):
        SemGradReviewWorkflow(blocking)
