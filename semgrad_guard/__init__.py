"""semgrad-guard: sampling-free hallucination scores and guard policies for local HF chat models.

Torch-backed names (``SemGradScorer``, ``compute_sps``, ``fetch_default_model``) are imported on
first use, so that policies, calibration and the review queue import in milliseconds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import VERSION
from .errors import (
    AlreadyDecidedError,
    AnswerRejectedError,
    CalibrationError,
    CalibratorMismatchError,
    ChatTemplateError,
    ConfigurationError,
    ContextLengthError,
    ControlTokenError,
    InputTooLargeError,
    MetricError,
    MissingDependencyError,
    ModelError,
    NonFiniteGradientError,
    ProfileError,
    PromptEchoError,
    RequestTooLargeError,
    RetriesExhaustedError,
    ReviewItemNotFoundError,
    ReviewQueueCorruptError,
    ReviewQueueError,
    ReviewQueueMissingError,
    ReviewTimeoutError,
    RiskControlError,
    ScoringError,
    SemGradGuardError,
    ServedModelMismatchError,
    ServiceAuthError,
    ServiceError,
    ServiceUnavailableError,
    SpanError,
    ToolCallingUnsupportedError,
    ToolCallParseError,
    UnknownRoleError,
)
from .generation import generation_overrides, resolve_generation
from .guard.calibration import Calibrator
from .guard.guard import Guard, register_stop_exception
from .guard.outcomes import Attempt, Generated, GuardResult
from .guard.policy import Action, GuardPolicy, RetrySettings, ReviewSettings, Rule, Verdict, judge
from .guard.recalibrate import Recalibration, recalibrate
from .guard.risk import ThresholdSelection, select_threshold
from .guard.spans import SpanPolicy
from .guard.strategies import (
    AttemptContext,
    ReconsiderStrategy,
    ResampleStrategy,
    RetryStrategy,
    WidenRetrievalStrategy,
)
from .payload import PAYLOAD_KEY, ScorePayload
from .results import SCORE_FIELDS, ScoreResult
from .review.labels import LabelledExample, labelled
from .review.postgres import PostgresReviewQueue
from .review.queue import (
    ReviewItem,
    ReviewQueue,
    ReviewStatus,
    SQLiteReviewQueue,
    apply_review_decision,
    open_review_queue,
)
from .scorer import GeneratingScorer, MockScorer, Scorer
from .scoring.profile import ModelProfile
from .scoring.tool_calls import ToolTurn, generate_tool_turn, require_tool_support
from .spans import SpanDecision, SpanScore, split_sentences

if TYPE_CHECKING:
    from .eval.profile_search import select_profile
    from .scoring.default_model import fetch_default_model
    from .scoring.hf_scorer import SemGradScorer
    from .scoring.remote import RemoteScorer
    from .scoring.sps import compute_sps
    from .scoring.streaming import (
        STREAM_MODES,
        GateStop,
        StreamChunk,
        StreamMode,
        check_stream_mode,
        stream_fields,
    )

_LAZY = {
    "RemoteScorer": "scoring.remote",
    "SemGradScorer": "scoring.hf_scorer",
    "compute_sps": "scoring.sps",
    "select_profile": "eval.profile_search",
    "fetch_default_model": "scoring.default_model",
    "StreamChunk": "scoring.streaming",
    "GateStop": "scoring.streaming",
    "StreamMode": "scoring.streaming",
    "STREAM_MODES": "scoring.streaming",
    "check_stream_mode": "scoring.streaming",
    "stream_fields": "scoring.streaming",
}

__version__ = VERSION

__all__ = [
    "Action",
    "AlreadyDecidedError",
    "AnswerRejectedError",
    "Attempt",
    "AttemptContext",
    "CalibrationError",
    "Calibrator",
    "CalibratorMismatchError",
    "ChatTemplateError",
    "ConfigurationError",
    "ContextLengthError",
    "ControlTokenError",
    "GateStop",
    "Generated",
    "GeneratingScorer",
    "Guard",
    "GuardPolicy",
    "GuardResult",
    "InputTooLargeError",
    "LabelledExample",
    "MetricError",
    "MissingDependencyError",
    "MockScorer",
    "ModelError",
    "ModelProfile",
    "NonFiniteGradientError",
    "PAYLOAD_KEY",
    "PostgresReviewQueue",
    "ProfileError",
    "PromptEchoError",
    "Recalibration",
    "ReconsiderStrategy",
    "RemoteScorer",
    "RequestTooLargeError",
    "ResampleStrategy",
    "RetriesExhaustedError",
    "RetrySettings",
    "RetryStrategy",
    "ReviewItem",
    "ReviewItemNotFoundError",
    "ReviewQueue",
    "ReviewQueueCorruptError",
    "ReviewQueueError",
    "ReviewQueueMissingError",
    "ReviewSettings",
    "ReviewStatus",
    "ReviewTimeoutError",
    "RiskControlError",
    "Rule",
    "SCORE_FIELDS",
    "SQLiteReviewQueue",
    "STREAM_MODES",
    "ScorePayload",
    "ScoreResult",
    "Scorer",
    "ScoringError",
    "SemGradGuardError",
    "SemGradScorer",
    "ServedModelMismatchError",
    "ServiceAuthError",
    "ServiceError",
    "ServiceUnavailableError",
    "SpanDecision",
    "SpanError",
    "SpanPolicy",
    "SpanScore",
    "StreamChunk",
    "StreamMode",
    "ThresholdSelection",
    "ToolCallParseError",
    "ToolCallingUnsupportedError",
    "ToolTurn",
    "UnknownRoleError",
    "Verdict",
    "WidenRetrievalStrategy",
    "apply_review_decision",
    "check_stream_mode",
    "compute_sps",
    "fetch_default_model",
    "generate_tool_turn",
    "generation_overrides",
    "judge",
    "labelled",
    "open_review_queue",
    "recalibrate",
    "register_stop_exception",
    "require_tool_support",
    "resolve_generation",
    "select_profile",
    "select_threshold",
    "split_sentences",
    "stream_fields",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'semgrad_guard' has no attribute {name!r}")
