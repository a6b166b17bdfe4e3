"""The one place the adapters ask the core for a decision (no policy logic here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from semgrad_guard.results import ScoreResult


@dataclass(frozen=True)
class PolicyOutcome:
    """A core ``Decision`` flattened to plain values for metadata and errors."""

    action: str
    rule: str | None
    confidence: float | None
    decision: Any


def _name(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return str(getattr(value, "name", None) or getattr(value, "value", None) or value)


def apply_policy(policy: Any, calibrator: Any, result: ScoreResult) -> PolicyOutcome:
    """Calibrate (if a calibrator is given) and let ``policy.decide`` choose the action."""
    confidence = float(calibrator.confidence(result)) if calibrator is not None else None
    decision = policy.decide(result, confidence)
    action = getattr(decision.action, "value", decision.action)
    return PolicyOutcome(str(action), _name(getattr(decision, "rule", None)), confidence, decision)
