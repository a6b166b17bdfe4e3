"""Building a core :class:`~semgrad_guard.guard.guard.Guard` from adapter arguments (no policy logic here)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from semgrad_guard import Action, Guard, GuardResult, register_stop_exception

from .errors import LowConfidenceError

try:  # LangGraph's interrupts and Command(graph=PARENT) are control flow: a guard must never retry them
    from langgraph.errors import GraphBubbleUp
except ImportError:  # the agents extra is not installed: no LangGraph, nothing to register
    pass
else:
    register_stop_exception(GraphBubbleUp)


def make_guard(
    guard: Guard | None,
    scorer: Any,
    policy: Any,
    calibrator: Any,
    review_queue: Any,
    strategies: Mapping[str, Any] | None,
) -> Guard:
    """``guard`` itself, or a new ``Guard(policy, scorer=..., calibrator=..., review_queue=..., strategies=...)``."""
    if guard is not None:
        if policy is not None:
            raise ValueError("pass either guard= or policy= (with scorer/calibrator/review_queue), not both")
        return guard
    if policy is None:
        raise ValueError("a policy is needed: pass policy=GuardPolicy(...) (or a ready guard=Guard(...))")
    return Guard(
        policy, scorer=scorer, calibrator=calibrator, review_queue=review_queue, strategies=strategies
    )


def retry_error(result: GuardResult, answer: str) -> LowConfidenceError:
    """The exception for a 'retry' (or 'raise') decision: LangChain retries and fallbacks act on it."""
    action = result.action.value if isinstance(result.action, Action) else str(result.action)
    score = f"semgrad={result.result.semgrad:.4g}" if result.result is not None else "no score"
    conf = f", confidence={result.confidence:.3f}" if result.confidence is not None else ""
    return LowConfidenceError(
        f"SemGrad policy says {action!r} (rule {result.rule!r}; {score}{conf})",
        answer=answer,
        result=result.result,
        action=action,
        rule=result.rule,
        confidence=result.confidence,
    )
