"""Human review of RAG answers in a LlamaIndex workflow: pause on InputRequiredEvent, resume on HumanResponseEvent.

``SemGradReviewWorkflow`` answers with a ``SemGradQueryEngine``. When the guard policy sends an
answer to review, the workflow emits ``ReviewRequired`` (an ``InputRequiredEvent`` carrying the
answer, its SemGrad scores, the rule and the retrieved sources) and waits. A person (here a scripted
reviewer that checks the answer against the fact it expects) sends back ``ReviewDecision`` (a
``HumanResponseEvent``): approve, edit or reject. The decision is recorded in the durable SQLite
review queue, with its audit trail, and the workflow returns the final response.

This demo's accept bar is deliberately strict, so that most answers of the 135M model go to a
person. Everything runs offline (embedded SmolLM2-135M-Instruct, local MiniLM embeddings).

Run: ``python cookbook/llamaindex_review_workflow.py``.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path
from typing import Any

from semgrad_guard import Calibrator, GuardPolicy

DATA = Path(__file__).resolve().parent / "llamaindex_data"

# question -> (a fact the answer must contain, the answer a librarian would give)
QUESTIONS: dict[str, tuple[str, str]] = {
    "How much are the late fees per day?": (
        "20 cents",
        "20 cents per item per day, at most 5 dollars per item.",
    ),
    "How long can I borrow a DVD?": ("one week", "DVDs are lent for one week."),
}

# Bands over calibrated confidence (the shipped calibrator): cookbook/policies/accept_or_review.yaml.
POLICY = GuardPolicy.from_yaml(Path(__file__).parent / "policies" / "accept_or_review.yaml")


def reviewer(event: Any) -> Any:
    """A scripted librarian: approve answers that state the expected fact, otherwise correct them."""
    from llama_index.llms.semgrad.workflow import ReviewDecision

    fact, correct = QUESTIONS[event.query]
    if fact.lower() in event.answer.lower():
        return ReviewDecision(decision="approve", reviewer="librarian", note=f"states {fact!r}")
    return ReviewDecision(
        decision="edit", answer=correct, reviewer="librarian", note=f"did not state {fact!r}"
    )


async def ask(workflow: Any, question: str) -> tuple[Any, list[Any]]:
    """Run one question; answer every review request; return the final response and the requests."""
    from llama_index.llms.semgrad.workflow import ReviewRequired

    handler = workflow.run(query=question)
    requests = []
    async for event in handler.stream_events():
        if isinstance(event, ReviewRequired):
            requests.append(event)
            print(f"\n[review #{event.review_id}] {event.query}\n  answer: {event.answer!r}")
            print(
                f"  rule: {event.rule}; semgrad={event.scores.get('semgrad', float('nan')):.2e} "
                f"mean_nll={event.scores.get('mean_nll', float('nan')):.3f}; {len(event.sources)} sources"
            )
            decision = reviewer(event)
            print(f"  -> {decision.decision} by {decision.reviewer} ({decision.note})")
            handler.ctx.send_event(decision)
    return await handler, requests


def main(
    scorer: Any = None, *, review_db: str | Path | None = None, max_new_tokens: int = 32
) -> list[dict[str, Any]]:
    """Ask every question through the review workflow; returns one row per question."""
    from llama_index.core import Settings, SimpleDirectoryReader, VectorStoreIndex
    from llama_index.llms.semgrad import SemGradLLM
    from llama_index.llms.semgrad.embeddings import LocalSentenceTransformerEmbedding
    from llama_index.llms.semgrad.query_engine import SemGradQueryEngine, guard_result_from_response
    from llama_index.llms.semgrad.workflow import SemGradReviewWorkflow

    from semgrad_guard import SemGradScorer, SQLiteReviewQueue

    scorer = scorer or SemGradScorer.from_pretrained("default")
    Settings.llm = llm = SemGradLLM(
        scorer, max_new_tokens=max_new_tokens, generate_kwargs={"repetition_penalty": 1.3}
    )
    Settings.embed_model = LocalSentenceTransformerEmbedding()
    logging.getLogger("llama_index.core.readers.file.base").setLevel(logging.ERROR)
    index = VectorStoreIndex.from_documents(SimpleDirectoryReader(str(DATA)).load_data())

    tmp = tempfile.TemporaryDirectory() if review_db is None else None
    queue = SQLiteReviewQueue(Path(tmp.name) / "review.db" if tmp is not None else review_db)
    engine = SemGradQueryEngine(
        index.as_query_engine(llm=llm, similarity_top_k=2),
        scorer,
        POLICY,
        calibrator=Calibrator.default_for(scorer.model_id),
        review_queue=queue,
    )
    workflow = SemGradReviewWorkflow(engine, timeout=900)

    async def run_all() -> list[dict[str, Any]]:
        rows = []
        for question in QUESTIONS:
            response, requests = await ask(workflow, question)
            result = guard_result_from_response(response)
            assert result is not None
            item = queue.get(requests[0].review_id) if requests else None
            rows.append(
                {
                    "question": question,
                    "reviewed": bool(requests),
                    "model_answer": result.original_answer,
                    "final_answer": str(response),
                    "review_status": result.review_status,
                    "audit": [e.event for e in item.audit] if item is not None else [],
                }
            )
            print(f"final: {question} -> {str(response)!r} ({result.review_status or result.action.value})")
        return rows

    try:
        return asyncio.run(run_all())
    finally:
        engine.close()
        queue.close()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
