"""What a guard run produced: each :class:`Attempt` and the final :class:`GuardResult`. Plain data.

Kept apart from :mod:`semgrad_guard.guard.guard` so that retry strategies (which read earlier attempts)
and adapters can import the records without the Guard, and no import cycle remains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..results import ScoreResult
from ..spans import SpanDecision
from .policy import Action


@dataclass(frozen=True)
class Generated:
    """What a ``generate_fn`` may return when it scored the answer itself: the score, or why scoring failed.

    ``Generated(answer, result=r)`` is the same as returning ``(answer, r)``; ``Generated(answer, error=e)``
    makes the guard apply the policy's ``on_error`` to this answer instead of scoring it again (e.g. the
    prompt the model saw was too long to score: a shorter re-score would not be about the same answer).
    """

    answer: str
    result: ScoreResult | None = None
    error: Exception | None = None

    def __post_init__(self) -> None:
        if self.result is not None and self.error is not None:
            raise ValueError("Generated carries a result or an error, not both")


class Attempt(BaseModel):
    """One attempt of a guard run: the answer, its scores (or the error), and what the policy said."""

    model_config = ConfigDict(extra="forbid")

    number: int
    """1 for the first attempt, 2 for the first retry, ..."""
    answer: str | None = None
    """The answer produced (None when generation failed)."""
    result: ScoreResult | None = None
    """Its scores (None when generation or scoring failed)."""
    error: str | None = None
    """'ExceptionType: message' when generation or scoring failed."""
    error_stage: str | None = None
    """'generate' or 'score'."""
    confidence: float | None = None
    """Calibrated confidence (None without a calibrator)."""
    action: Action | None = None
    """What the policy said about this attempt."""
    rule: str | None = None
    """Rule that fired."""
    strategy: str | None = None
    """Retry strategy that prepared this attempt (None for the first)."""
    changes: dict[str, Any] = Field(default_factory=dict)
    """What the strategy changed (temperature, seed, reconsider, widened, ...)."""
    timings: dict[str, float] = Field(default_factory=dict)
    """Seconds spent: generate_s, score_s."""
    calibrator_version: str | None = None
    """Fingerprint of the calibrator that judged this attempt (None without one)."""
    spans: list[SpanDecision] | None = None
    """The span policy's decision on each span of the answer (when the policy has ``spans``)."""
    delivered: str | None = None
    """The text the span policy delivers (the answer with spans dropped or marked), when it differs."""


class GuardResult(BaseModel):
    """What the guard did with an answer. JSON-serialisable (``model_dump_json``).

    Example:
        >>> from semgrad_guard import Guard, GuardPolicy, MockScorer
        >>> policy = GuardPolicy.from_dict({"rules": [{"field": "semgrad", "max": 0.5, "action": "accept"},
        ...                                           {"action": "abstain"}]})
        >>> guard = Guard(policy, scorer=MockScorer(lambda m, a: 0.1))
        >>> r = guard.check("Capital of France?", "Paris")
        >>> r.action, r.answer, r.accepted
        (<Action.ACCEPT: 'accept'>, 'Paris', True)
    """

    model_config = ConfigDict(extra="forbid")

    action: Action
    """Final action: accept, annotate, abstain, review, raise (retry only from check(): the caller should regenerate)."""
    answer: str
    """Final answer text: the original, a retried one, a reviewer's, the abstention or the pending-review message."""
    original_answer: str | None
    """The first attempt's answer."""
    attempts: list[Attempt]
    """Every attempt, in order."""
    rule: str | None = None
    """Rule (or 'on_error' / 'retry.on_exhausted' / default) that decided."""
    confidence: float | None = None
    """Confidence of the answer the decision is about."""
    result: ScoreResult | None = None
    """Scores of the answer the decision is about."""
    annotation: str | None = None
    """Note attached by an 'annotate' decision."""
    review_id: int | None = None
    """Review item id when the answer went to human review."""
    review_status: str | None = None
    """pending, approved, rejected, edited or cannot_tell (when it went to review)."""
    error: str | None = None
    """Scoring error that triggered on_error, if any."""
    timings: dict[str, float] = Field(default_factory=dict)
    """Seconds: total_s, generate_s, score_s, review_s."""
    calibrator_version: str | None = None
    """:attr:`~semgrad_guard.Calibrator.fingerprint` of the calibrator that judged it (None without one)."""
    audit_id: int | None = None
    """Review item id of this answer's audit copy, when audit sampling picked it (the answer is unchanged)."""
    spans: list[SpanDecision] | None = None
    """The span policy's decision on each span (sentence) of the answer, when the policy has ``spans``."""
    scored_answer: str | None = None
    """The answer as scored, when the span policy changed the text returned (spans dropped or marked)."""

    @property
    def removed_spans(self) -> list[SpanDecision]:
        """The spans the span policy cut from the answer, with why."""
        return [d for d in self.spans or [] if d.action == "drop"]

    @property
    def accepted(self) -> bool:
        """True when the answer can be shown as is: accepted, annotated, or approved/edited by a reviewer."""
        if self.action in (Action.ACCEPT, Action.ANNOTATE):
            return True
        return self.action is Action.REVIEW and self.review_status in ("approved", "edited")

    @property
    def best_attempt(self) -> Attempt | None:
        """The attempt whose answer the decision is about."""
        for a in reversed(self.attempts):
            if a.result is not None and a.result == self.result:
                return a
        return self.attempts[-1] if self.attempts else None
