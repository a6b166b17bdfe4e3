"""Human review in a LlamaIndex workflow: pause on ``InputRequiredEvent``, continue on ``HumanResponseEvent``."""

from __future__ import annotations

import threading
from typing import Any, Literal

from llama_index.core.base.response.schema import Response
from llama_index.core.workflow import (
    Context,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    Workflow,
    step,
)

from semgrad_guard import Action, ConfigurationError, apply_review_decision

from .query_engine import (
    GUARD_RESULT_KEY,
    RESULT_KEY,
    STATUS_KEY,
    SemGradQueryEngine,
    guard_result_from_response,
    mark_status,
)


class ReviewRequired(InputRequiredEvent):
    """The guard sent an answer to human review: everything a reviewer needs to decide."""

    review_id: int
    """Id of the item in the review queue (the decision is recorded there too)."""
    query: str
    """The question."""
    answer: str
    """The unreviewed answer."""
    scores: dict[str, float]
    """SemGrad and its companions for the answer (empty when scoring failed)."""
    confidence: float | None = None
    """Calibrated confidence, when the guard has a calibrator."""
    rule: str | None = None
    """The policy rule that sent it to review."""
    sources: list[str] = []
    """Text of the retrieved source nodes the answer was generated from."""
    prefix: str = ""
    """A one-line prompt for a person (InputRequiredEvent's convention)."""


class ReviewDecision(HumanResponseEvent):
    """A person's decision on a :class:`ReviewRequired` answer."""

    decision: Literal["approve", "reject", "edit"]
    """approve: show the answer; reject: abstain; edit: show ``answer`` instead."""
    review_id: int | None = None
    """Which item (default: the one this run is waiting on)."""
    answer: str | None = None
    """The corrected answer, for ``edit``."""
    reviewer: str | None = None
    """Who decided (stored in the queue's audit trail)."""
    note: str | None = None
    """Why (stored in the queue's audit trail)."""
    response: str = ""
    """HumanResponseEvent's free-text field (unused)."""


class SemGradReviewWorkflow(Workflow):
    """Answers with a :class:`SemGradQueryEngine`; answers the guard sends to review wait for a person.

    Run it with ``query=...``. When the guard's decision is ``review``, the ``answer`` step emits
    :class:`ReviewRequired` (an ``InputRequiredEvent`` with the answer and its scores) and the run
    pauses; the ``human_review`` step continues on a :class:`ReviewDecision` (a
    ``HumanResponseEvent``), records it in the review queue and returns the final response:
    the answer (approve), the reviewer's text (edit), or the abstention message (reject). Other
    decisions (accept, annotate, abstain) finish at once.

    Example:
        >>> async def ask(workflow, question):  # doctest: +SKIP
        ...     handler = workflow.run(query=question)
        ...     async for event in handler.stream_events():
        ...         if isinstance(event, ReviewRequired):
        ...             handler.ctx.send_event(ReviewDecision(decision="approve", reviewer="ana"))
        ...     return await handler
    """

    def __init__(
        self, query_engine: SemGradQueryEngine, *, timeout: float | None = 600.0, **kwargs: Any
    ) -> None:
        if not isinstance(query_engine, SemGradQueryEngine):
            raise ConfigurationError(
                f"SemGradReviewWorkflow needs a SemGradQueryEngine, got {type(query_engine).__name__}"
            )
        if query_engine.policy.review.wait is not None:
            raise ConfigurationError(
                "the policy's review.wait makes the engine block for the decision; the workflow waits "
                "for a ReviewDecision event instead: set review.wait to null"
            )
        super().__init__(timeout=timeout, **kwargs)
        self.engine = query_engine
        # The answers waiting for a decision, by review id (their source nodes are not JSON state).
        self._pending: dict[int, Response] = {}
        self._lock = threading.Lock()

    @step
    async def answer(self, ctx: Context, ev: StartEvent) -> ReviewRequired | StopEvent:
        query = ev.get("query")
        if not isinstance(query, str) or not query.strip():
            raise ConfigurationError("run the workflow with query='your question'")
        response = await self.engine.aquery(query)
        assert isinstance(response, Response)
        result = guard_result_from_response(response)
        if result is None or result.action is not Action.REVIEW or result.review_status != "pending":
            return StopEvent(result=response)
        assert result.review_id is not None
        best = result.best_attempt
        answer = best.answer if best is not None and best.answer is not None else result.answer
        with self._lock:
            self._pending[result.review_id] = response
        await ctx.store.set("review_id", result.review_id)
        return ReviewRequired(
            review_id=result.review_id,
            query=query,
            answer=answer,
            scores=result.result.scores() if result.result is not None else {},
            confidence=result.confidence,
            rule=result.rule,
            sources=[n.node.get_content() for n in response.source_nodes],
            prefix=f"Review answer #{result.review_id} (rule {result.rule!r}): approve, reject or edit.",
        )

    @step
    async def human_review(self, ctx: Context, ev: ReviewDecision) -> StopEvent:
        review_id = ev.review_id if ev.review_id is not None else await ctx.store.get("review_id", None)
        with self._lock:
            pending = self._pending.pop(review_id, None) if review_id is not None else None
        if pending is None:
            raise ConfigurationError(f"no answer of this workflow is waiting for review id {review_id!r}")
        if ev.decision == "edit" and not ev.answer:
            raise ConfigurationError("an 'edit' decision needs the corrected answer in ReviewDecision.answer")
        # The core records the decision (final) and says what the user gets for it.
        item = apply_review_decision(
            self.engine.guard.review_queue,
            review_id,
            ev.decision,
            answer=ev.answer,
            reviewer=ev.reviewer,
            note=ev.note,
        )
        metadata = dict(pending.metadata or {})
        guard = dict(metadata.get(GUARD_RESULT_KEY) or {})
        payload = dict(metadata.get(RESULT_KEY) or {})
        status = item.status.value
        text = self.engine.policy.answer_after_review(status, item.final_answer, item.answer)
        guard.update(review_status=status, answer=text)
        payload.update(review_status=status, answer=item.answer, reviewer=ev.reviewer)
        if status == "rejected":
            nodes = [mark_status(_unmark(n), "rejected_by_reviewer") for n in pending.source_nodes]
        else:
            nodes = [_unmark(n) for n in pending.source_nodes]
        metadata[GUARD_RESULT_KEY] = guard
        metadata[RESULT_KEY] = payload
        return StopEvent(result=Response(response=text, source_nodes=nodes, metadata=metadata))


def _unmark(node: Any) -> Any:
    if STATUS_KEY not in node.node.metadata:
        return node
    meta = {k: v for k, v in node.node.metadata.items() if k != STATUS_KEY}
    inner = node.node.model_copy(update={"metadata": meta})
    return type(node)(node=inner, score=node.score)
