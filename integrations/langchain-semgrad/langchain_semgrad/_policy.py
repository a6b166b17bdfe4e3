"""How the callbacks report the core's verdict (the decision itself is ``semgrad_guard.judge``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from semgrad_guard.guard.policy import judge
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
    """The core's :func:`semgrad_guard.judge` (calibrate, then decide), flattened for metadata."""
    verdict = judge(policy, result, calibrator)
    return PolicyOutcome(verdict.action.value, _name(verdict.rule), verdict.confidence, verdict.decision)
