"""Typed exceptions. Everything semgrad-guard raises derives from :class:`SemGradGuardError`.

Where callers already catch a built-in (``ValueError`` for bad input, ``ImportError`` for a
missing package), the exception inherits from it too.
"""

from __future__ import annotations

from typing import Any


class SemGradGuardError(Exception):
    """Base class of every error semgrad-guard raises."""


class ConfigurationError(SemGradGuardError, ValueError):
    """A setting, profile, policy or file is invalid; the message names the field."""


class MissingDependencyError(SemGradGuardError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str = "") -> None:
        self.package = package
        self.extra = extra
        why = f" (needed for {purpose})" if purpose else ""
        super().__init__(
            f"{package!r} is not installed{why}. Install it with: pip install 'semgrad-guard[{extra}]'"
        )


class ModelError(SemGradGuardError):
    """The model or tokenizer cannot be loaded or used (missing files, bad checksum, no weights)."""


class ProfileError(ConfigurationError):
    """A model profile does not fit the model (offset or layers out of range) or is malformed."""


class ScoringError(SemGradGuardError, ValueError):
    """Scoring one (messages, answer) pair failed."""


class ChatTemplateError(ScoringError):
    """The tokenizer has no chat template and none was passed, or the template rejected the chat."""


class UnknownRoleError(ScoringError):
    """A message has a role the scorer does not know."""


class ToolCallingUnsupportedError(ChatTemplateError):
    """Tools were given for a model whose chat template does not render them; the message names the model."""


class ToolCallParseError(ScoringError):
    """The model started a tool call (a known marker) that is not valid JSON or has no tool name."""


class ContextLengthError(ScoringError):
    """Prompt plus answer is longer than the model's context window."""

    def __init__(self, prompt_tokens: int, answer_tokens: int, limit: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.answer_tokens = answer_tokens
        self.limit = limit
        super().__init__(
            f"prompt ({prompt_tokens} tokens) plus answer ({answer_tokens} tokens) = "
            f"{prompt_tokens + answer_tokens} tokens exceeds the model's context of {limit} tokens; "
            "shorten the prompt (fewer retrieved documents) or the answer"
        )


class NonFiniteGradientError(ScoringError):
    """A gradient or loss came out NaN or infinite; no score is returned for it."""


class RetriesExhaustedError(SemGradGuardError):
    """Every retry attempt stayed below the policy's bar. Carries the attempts and the last result."""

    def __init__(self, message: str, *, attempts: list[Any] | None = None, last_result: Any = None) -> None:
        self.attempts = list(attempts or [])
        self.last_result = last_result
        super().__init__(message)


class MetricError(SemGradGuardError, ValueError):
    """A detection metric is undefined for the given labels (e.g. all answers correct, or all wrong)."""


class CalibrationError(SemGradGuardError, ValueError):
    """A calibrator cannot be fitted (too few examples, one class only) or its file is malformed."""


class CalibratorMismatchError(ConfigurationError):
    """A calibrator is applied to scores from another model or profile than it was fitted on."""


class RiskControlError(SemGradGuardError, ValueError):
    """The calibration data cannot support the requested error rate alpha at confidence 1 - delta.

    Carries the closest achievable upper bound (``best_bound``) so the caller can relax alpha.
    """

    def __init__(self, message: str, *, best_bound: float | None = None, n: int = 0) -> None:
        self.best_bound = best_bound
        self.n = n
        super().__init__(message)


class AnswerRejectedError(SemGradGuardError):
    """A guard policy rule with action ``raise`` fired. Carries the :class:`GuardResult`."""

    def __init__(self, message: str, *, guard_result: Any = None) -> None:
        self.guard_result = guard_result
        super().__init__(message)


class ReviewQueueError(SemGradGuardError):
    """The review queue cannot be used: unknown item, or a database problem."""


class ReviewQueueCorruptError(ReviewQueueError):
    """The review database file is corrupted or is not a semgrad-guard review database. Never overwritten."""


class ReviewItemNotFoundError(ReviewQueueError, KeyError):
    """No review item has this id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ReviewQueueMissingError(ReviewQueueError):
    """There is no review queue where one was named and creating one was not asked for (``create=False``)."""


class ReviewTimeoutError(ReviewQueueError, TimeoutError):
    """Waiting for a human decision timed out; the item is still pending."""


class ControlTokenError(ScoringError):
    """The answer holds chat-template control tokens and the scorer was told to refuse such answers
    (``control_tokens="refuse"``); by default they are scored as literal text and flagged."""


class PromptEchoError(ScoringError):
    """The answer begins with the prompt (a pipeline that echoes its input) and the scorer was told
    to refuse it (``echo="refuse"``); by default the echo is cut off, flagged and not scored."""


class AlreadyDecidedError(ReviewQueueError):
    """A reviewer tried to decide an item that is no longer pending: decisions are final.

    Carries who decided what and when (``item_id``, ``status``, ``reviewer``, ``decided_at``).
    Re-opening a decided item is an explicit, audited action (``SQLiteReviewQueue.reopen``).
    """

    def __init__(
        self,
        item_id: int,
        status: str,
        reviewer: str | None,
        decided_at: str | None,
        *,
        attempted: str | None = None,
    ) -> None:
        self.item_id = item_id
        self.status = status
        self.reviewer = reviewer
        self.decided_at = decided_at
        self.attempted = attempted
        tried = f"cannot {attempted} it: " if attempted else ""
        super().__init__(
            f"review item {item_id} was already {status} by {reviewer or 'an unnamed reviewer'} at "
            f"{decided_at or 'an unknown time'}; {tried}decisions are final. To decide again, re-open it "
            f"first (SQLiteReviewQueue.reopen({item_id}, reviewer=...) or `semgrad-guard review reopen {item_id}`)"
        )


class RequestTooLargeError(ScoringError):
    """A request to the scoring service is over its limits (body bytes, answer characters, batch items,
    new tokens); the message names the limit and the setting that raises it."""


class ServiceError(SemGradGuardError):
    """The scoring service answered with an error no more specific class describes.

    Carries the HTTP ``status`` and the service's error ``type`` name.
    """

    def __init__(self, message: str, *, status: int | None = None, error_type: str | None = None) -> None:
        self.status = status
        self.error_type = error_type
        super().__init__(message)


class ServiceUnavailableError(ServiceError):
    """The scoring service could not be reached, or stayed overloaded (503), through every retry.

    ``retry_after`` is the service's last ``Retry-After`` in seconds, when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status, error_type=error_type)


class ServiceAuthError(ServiceError, PermissionError):
    """The scoring service refused the bearer token (missing or wrong)."""


class ServedModelMismatchError(ConfigurationError):
    """The scoring service holds another model (id or weights) than the one the client named."""


class InputTooLargeError(RequestTooLargeError):
    """Scoring the input would need more memory than the scorer's budget (``max_memory``); refused
    before anything runs. The service answers 413."""


class SpanError(ScoringError):
    """Spans asked of a scorer are malformed (not ``None``, ``"sentences"`` or ``(start, end)`` character
    offsets inside the answer) or cover no scored token; the message says which span."""
