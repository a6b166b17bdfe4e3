"""The answer policy applied to each sentence: gate mode's span judge when no span policy is given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..results import SCORE_FIELDS, ScoreResult
from .policy import Action, GuardPolicy

# What a sentence gets for the answer policy's action: released, withheld for review, or cut off.
SPAN_ACTIONS: dict[Action, str] = {
    Action.ACCEPT: "keep",
    Action.ANNOTATE: "flag",
    Action.REVIEW: "review",
    Action.ABSTAIN: "abstain",
    Action.RETRY: "abstain",  # a streamed sentence cannot be taken back and asked again
    Action.RAISE: "abstain",
}


@dataclass(frozen=True)
class SentenceDecision:
    """A sentence's decision in the span contract's shape (``action``, ``confidence``, ``reason``)."""

    action: str
    confidence: float | None
    reason: str


class PolicySpanJudge:
    """Judges a sentence's span score as the answer policy judges an answer (same bands, same calibrator).

    The span's six scores stand in for an answer's (length-normalised scores carry over best:
    ``mean_entropy``, ``mean_nll``); the verdict's action maps through :data:`SPAN_ACTIONS`. A span
    policy fitted on span labels (``SpanPolicy``) is the better judge where one exists.

    Example:
        >>> from types import SimpleNamespace
        >>> policy = GuardPolicy.from_dict({"rules": [{"field": "semgrad", "max": 0.5, "action": "accept"},
        ...                                          {"action": "abstain"}]})
        >>> span = SimpleNamespace(semgrad=0.9, hybridgrad=0.9, exgrad=0.9, nll=3.0, mean_nll=1.0,
        ...                        mean_entropy=1.0, token_start=0, token_end=3)
        >>> PolicySpanJudge(policy).judge(span).action
        'abstain'
    """

    def __init__(
        self,
        policy: GuardPolicy,
        calibrator: Any = None,
        *,
        anchor_offset: int = -1,
        layers: list[int] | None = None,
    ) -> None:
        self.policy = policy
        self.calibrator = calibrator
        self.anchor_offset = anchor_offset
        self.layers = list(layers or [])

    def judge(self, span: Any) -> SentenceDecision:
        fields: dict[str, Any] = {name: float(getattr(span, name)) for name in SCORE_FIELDS}
        result = ScoreResult(
            **fields,
            answer_tokens=max(1, int(getattr(span, "token_end", 1)) - int(getattr(span, "token_start", 0))),
            anchor_offset=self.anchor_offset,
            layers=self.layers,
            model_id=getattr(self.calibrator, "model_id", None),
        )
        confidence = float(self.calibrator.confidence(result, check=False)) if self.calibrator else None
        verdict = self.policy.decide(result, confidence)
        return SentenceDecision(
            action=SPAN_ACTIONS[verdict.action],
            confidence=verdict.confidence,
            reason=f"the answer policy's rule {verdict.rule!r} on this sentence",
        )
