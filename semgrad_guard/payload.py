"""The score payload: one typed, versioned shape for a scored (and maybe judged) answer.

Every adapter writes it under the ``"semgrad"`` key of its framework's metadata (LangChain's
``response_metadata`` / ``generation_info``, LlamaIndex's ``additional_kwargs`` / response ``metadata``),
and the scoring service returns it on each choice, so one reader (:meth:`ScorePayload.read`) serves them all.

Plain data, JSON round-trips, no torch::

    {"version": 1, "result": {...ScoreResult...}, "scores": {...six scores...},
     "confidence": 0.41 | null, "action": "accept" | ... | null, "rule": "..." | null,
     "review_id": 12 | null, "review_status": "pending" | ... | null, "attempts": 1 | null,
     "answer": "..." | null, "annotation": "..." | null, "turn": "answer" | "tool_call" | null,
     "source": "callback" | ..., "run_id": "..." | null, "calibrator_version": "3f2a..." | null,
     "span_decisions": [{"action": "drop", "confidence": 0.1, "reason": "...", "start": 0, ...}] | null}

``result.spans`` holds each span's scores when spans were asked for (``ScoreResult.spans``).

Adapters may add keys of their own (LangGraph's ``interrupt`` flag, say); readers keep them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from .errors import ConfigurationError
from .results import ScoreResult
from .spans import SpanDecision

PAYLOAD_KEY = "semgrad"
"""The metadata key every adapter stores the payload under."""

PAYLOAD_VERSION = 1
"""Bumped when a field changes meaning; readers refuse versions they do not know."""

Source = Literal["callback", "chat_model", "llm", "guard", "parser", "evaluator", "query_engine", "service"]


class ScorePayload(BaseModel):
    """A scored answer as the adapters and the service report it.

    Example:
        >>> r = ScoreResult(semgrad=1e-3, hybridgrad=2e-3, exgrad=5e-3, nll=4.0, mean_nll=0.5,
        ...                 mean_entropy=1.2, answer_tokens=8, anchor_offset=-3, layers=[15, 16])
        >>> p = ScorePayload(result=r, confidence=0.7, action="accept", rule="confident", source="guard")
        >>> data = p.to_json()
        >>> data["version"], data["scores"]["semgrad"], data["action"]
        (1, 0.001, 'accept')
        >>> ScorePayload.read({"semgrad": data}) == p
        True
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    version: int = Field(default=PAYLOAD_VERSION, description="Schema version of this payload.")
    result: ScoreResult | None = Field(description="The score; None when scoring failed (see action/rule).")
    confidence: float | None = Field(default=None, description="Calibrated confidence, when calibrated.")
    action: str | None = Field(default=None, description="The policy's action, when a policy judged it.")
    rule: str | None = Field(default=None, description="The rule that chose the action ('on_error', ...).")
    review_id: int | None = Field(default=None, description="The review item's id, when sent to review.")
    review_status: str | None = Field(
        default=None, description="pending, approved, rejected or edited, when sent to review."
    )
    attempts: int | None = Field(default=None, description="How many answers were generated (with retries).")
    answer: str | None = Field(
        default=None,
        description="The answer that was scored, when the text delivered differs from it (abstained, in "
        "review, or replaced by a reviewer).",
    )
    annotation: str | None = Field(default=None, description="The note of an 'annotate' decision.")
    turn: str | None = Field(
        default=None, description="'tool_call' when the scored message is a tool call, not an answer."
    )
    source: str | None = Field(default=None, description="Which component wrote it (see Source).")
    run_id: str | None = Field(default=None, description="The framework's run id, when it has one.")
    calibrator_version: str | None = Field(
        default=None,
        description="Fingerprint of the calibrator that gave the confidence (Calibrator.fingerprint), so "
        "each past decision stays explainable after a recalibration.",
    )
    span_decisions: list[SpanDecision] | None = Field(
        default=None,
        description="The span policy's decision on each span of the answer (keep, flag, drop, review, "
        "abstain, with confidence and reason); the span scores themselves are in result.spans. When spans "
        "were dropped or marked, 'answer' holds the answer as scored.",
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def scores(self) -> dict[str, float] | None:
        """The six scores as a flat dict (convenience for readers; derived from ``result``)."""
        return self.result.scores() if self.result is not None else None

    @classmethod
    def of(cls, result: ScoreResult | None, verdict: Any = None, **fields: Any) -> ScorePayload:
        """A payload from a result and (optionally) a :class:`~semgrad_guard.Verdict` or
        :class:`~semgrad_guard.GuardResult` (its action, rule, confidence, review and attempts)."""
        if verdict is not None:
            action = verdict.action
            fields.setdefault("action", getattr(action, "value", action))
            fields.setdefault("rule", verdict.rule)
            fields.setdefault("confidence", verdict.confidence)
            for name in ("review_id", "review_status", "annotation", "calibrator_version"):
                if getattr(verdict, name, None) is not None:
                    fields.setdefault(name, getattr(verdict, name))
            if getattr(verdict, "attempts", None) is not None:
                fields.setdefault("attempts", len(verdict.attempts))
            if getattr(verdict, "spans", None) is not None:
                fields.setdefault("span_decisions", verdict.spans)
            if getattr(verdict, "scored_answer", None) is not None:
                fields.setdefault("answer", verdict.scored_answer)
        if fields.get("run_id") is not None:
            fields["run_id"] = str(fields["run_id"])
        return cls(result=result, **fields)

    def to_json(self) -> dict[str, Any]:
        """The JSON-safe dict stored under :data:`PAYLOAD_KEY`."""
        return self.model_dump(mode="json")

    @classmethod
    def read(cls, metadata: Mapping[str, Any] | None) -> ScorePayload | None:
        """The payload under ``metadata["semgrad"]`` (or ``metadata`` itself if it is one), else None.

        Raises:
            ConfigurationError: the payload has a version this release does not know.
        """
        if not isinstance(metadata, Mapping):
            return None
        raw = metadata.get(PAYLOAD_KEY, metadata)
        if isinstance(raw, ScorePayload):
            return raw
        if not isinstance(raw, Mapping) or "result" not in raw:
            return None
        version = raw.get("version", PAYLOAD_VERSION)
        if version != PAYLOAD_VERSION:
            raise ConfigurationError(
                f"score payload version {version!r} is not known to this semgrad-guard (it reads version "
                f"{PAYLOAD_VERSION}); upgrade semgrad-guard on the reading side"
            )
        return cls.model_validate({k: v for k, v in raw.items() if k != "scores"})
