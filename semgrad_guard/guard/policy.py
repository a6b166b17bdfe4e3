"""Guard policies: ordered rules that map a confidence (or a raw score) band to an action.

Plain configuration, no torch: load from YAML, JSON or a dict, validate, save back. The
:class:`~semgrad_guard.guard.guard.Guard` carries the actions out.

Bands are half-open: a rule matches when ``min <= value < max``; a missing ``min`` or ``max``
is unbounded on that side. Rules are tried in order and the first match wins; when none
matches, ``default_action`` applies (``review``: fail closed).

A policy that cannot mean what it says is refused when it loads (:class:`ConfigurationError`
naming the rules): a band no value of its field can fall in (``max: -1`` on a non-negative
score), a rule every value of which an earlier rule (or an earlier catch-all) already takes. Two
rules whose bands partly overlap load with a :class:`PolicyOverlapWarning`, except the threshold
ladder (both bands bounded on the same one side, e.g. ``min: 0.8`` then ``min: 0.5``), where
overlap is the point. Every public entry point takes a policy in the same forms, through
:meth:`GuardPolicy.coerce`.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import TypedConfig, format_validation_error
from ..errors import ConfigurationError
from ..results import SCORE_FIELDS, ScoreResult
from .spans import SpanPolicy

RULE_FIELDS: tuple[str, ...] = ("confidence", *SCORE_FIELDS)
"""What a rule's band can be over: the calibrated ``confidence`` or a raw score field."""


class Action(str, Enum):
    """What the guard does with an answer."""

    ACCEPT = "accept"
    ANNOTATE = "annotate"
    RETRY = "retry"
    ABSTAIN = "abstain"
    REVIEW = "review"
    RAISE = "raise"

    def __str__(self) -> str:
        return self.value


class PolicyOverlapWarning(UserWarning):
    """Two rules of a policy have partly overlapping bands: the earlier one wins where they overlap."""


# What values each field can take (all raw scores are non-negative; confidence is a probability).
_DOMAIN_HI: dict[str, float] = {"confidence": 1.0}


class Rule(TypedConfig):
    """One band of ``field`` mapped to an action: matches when ``min <= value < max``.

    Example:
        >>> Rule(min=0.8, action="accept").matches(0.8)
        True
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    """Name reported in results and the review queue (default: ``rules[i]``)."""
    field: str = "confidence"
    """'confidence' (needs a calibrator) or a raw score field: semgrad, hybridgrad, exgrad, nll, mean_nll, mean_entropy."""
    min: float | None = None
    """Inclusive lower edge of the band; None for unbounded."""
    max: float | None = None
    """Exclusive upper edge of the band; None for unbounded."""
    action: Action
    """accept, annotate, retry, abstain, review or raise."""
    message: str | None = None
    """Text for this rule: the annotation (annotate) or the abstention message (abstain)."""

    @field_validator("field")
    @classmethod
    def _known_field(cls, v: str) -> str:
        if v not in RULE_FIELDS:
            raise ValueError(f"unknown field {v!r}; choose one of {list(RULE_FIELDS)}")
        return v

    @field_validator("min", "max")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("band edges must be finite numbers (leave the edge out for unbounded)")
        return v

    @model_validator(mode="after")
    def _band(self) -> Rule:
        if self.min is not None and self.max is not None and not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        if self.field == "confidence":
            for edge in (self.min, self.max):
                if edge is not None and not 0.0 <= edge <= 1.0:
                    raise ValueError(f"a confidence band edge must be in [0, 1], got {edge}")
        return self

    @property
    def unbounded(self) -> bool:
        """True for a catch-all rule (no min, no max)."""
        return self.min is None and self.max is None

    def matches(self, value: float) -> bool:
        """True when ``min <= value < max``."""
        if self.min is not None and value < self.min:
            return False
        return not (self.max is not None and value >= self.max)


class RetrySettings(TypedConfig):
    """How the guard retries: attempts, wait, strategy, and what happens when attempts run out.

    Example:
        >>> RetrySettings(max_attempts=3, strategy=["reconsider", "resample"]).strategies
        ['reconsider', 'resample']
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    max_attempts: int = Field(default=3, ge=1, le=100)
    """Total attempts, the first one included."""
    wait: float = Field(default=0.0, ge=0.0)
    """Seconds to wait between attempts (first wait; see ``backoff``)."""
    backoff: float = Field(default=1.0, ge=1.0)
    """Multiplier of the wait after each attempt (1 = fixed wait)."""
    strategy: str | list[str] = "resample"
    """Retry strategy name, or a list used in turn: resample, reconsider, widen_retrieval, or a name given to Guard(strategies=...)."""
    on_exhausted: Action = Action.REVIEW
    """Action applied to the best-scoring attempt when no attempt passed: accept, annotate, abstain, review or raise."""
    retrying: Any = Field(default=None, exclude=True)
    """A user's own tenacity ``Retrying`` / ``AsyncRetrying`` (its stop and wait replace the fields above; code only, not YAML)."""

    @field_validator("strategy")
    @classmethod
    def _non_empty(cls, v: str | list[str]) -> str | list[str]:
        names = [v] if isinstance(v, str) else v
        if not names or any(not n.strip() for n in names):
            raise ValueError("strategy must be a non-empty name or list of names")
        return v

    @field_validator("on_exhausted")
    @classmethod
    def _final(cls, v: Action) -> Action:
        if v is Action.RETRY:
            raise ValueError("on_exhausted cannot be 'retry'")
        return v

    @field_validator("retrying")
    @classmethod
    def _tenacity(cls, v: Any) -> Any:
        if v is None:
            return v
        from tenacity import BaseRetrying

        if not isinstance(v, BaseRetrying):
            raise ValueError(f"retrying must be a tenacity Retrying or AsyncRetrying, got {type(v).__name__}")
        return v

    @property
    def strategies(self) -> list[str]:
        """The strategy names as a list."""
        return [self.strategy] if isinstance(self.strategy, str) else list(self.strategy)


class ReviewSettings(TypedConfig):
    """Where review items go and whether the guard waits for the human decision."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = None
    """Review queue: a SQLite file path or a postgresql:// URL (default: $SEMGRAD_GUARD_REVIEW_DB or a file in the user data dir)."""
    wait: float | None = Field(default=None, ge=0.0)
    """Seconds to wait for a human decision before returning (None: do not wait)."""
    poll_interval: float = Field(default=1.0, gt=0.0)
    """Seconds between checks while waiting."""
    pending_message: str = "This answer is waiting for review by a person."
    """Answer text returned while the item is pending (unless show_answer)."""
    show_answer: bool = False
    """Return the unreviewed answer instead of pending_message (fail open: off by default)."""
    refit_every: int | None = Field(default=None, ge=1)
    """Opt-in: recalibrate on the queue's labels after every this many new decisions by a person, and
    swap the result in (what ``calibrate --from-reviews`` does; logged; a refit that fails keeps the
    current one). Repeats the queue decides on arrival are labels in the refit but not counted here."""


class AuditSettings(TypedConfig):
    """Audit sampling: a random share of answers the policy did not send to review is copied to the
    queue as ``kind="audit"`` items, so the labels cover the whole confidence range, not only the
    review band. The user gets the policy's answer unchanged (an audit never blocks or alters it)."""

    model_config = ConfigDict(extra="forbid")

    rate: float = Field(gt=0.0, le=1.0)
    """Share of the audited actions' answers copied to the queue (each item stores it as its
    inclusion probability; fitting weights its label by 1 / rate)."""
    seed: int | None = 0
    """Seed of the sampling (None: a fresh random seed per guard)."""
    actions: list[Action] = Field(default_factory=lambda: [Action.ACCEPT, Action.ANNOTATE, Action.ABSTAIN])
    """Which final actions are audited (review items are labelled anyway)."""


class Verdict(BaseModel):
    """A judged answer: the action, the rule that chose it and why (field, value), and the confidence.

    What :meth:`GuardPolicy.decide`, :func:`judge` and :meth:`Guard.judge` return, and what every
    adapter reports.
    """

    model_config = ConfigDict(frozen=True)

    action: Action
    """The action the policy takes."""
    rule: str | None
    """The rule that fired: a rule's name, ``"on_error"`` when scoring failed, None for the default action."""
    confidence: float | None = None
    """Calibrated confidence, when a calibrator was given and the answer was scored."""
    field: str | None = None
    """The field the rule looked at (None: scoring failed, or the default action)."""
    value: float | None = None
    """Its value (None for a catch-all rule)."""
    message: str | None = None
    """The rule's message, if any."""
    calibrator_version: str | None = None
    """The judging calibrator's :attr:`~semgrad_guard.Calibrator.fingerprint` (None without one)."""


def judge(policy: GuardPolicy, result: ScoreResult | None, calibrator: Any = None) -> Verdict:
    """Calibrate (when a calibrator is given) and decide: the one place an answer is judged.

    ``result=None`` means scoring failed: the verdict is the policy's ``on_error`` action.

    Example:
        >>> policy = GuardPolicy.from_dict({"rules": [{"field": "semgrad", "max": 0.5, "action": "accept"},
        ...                                          {"action": "abstain"}]})
        >>> from semgrad_guard import MockScorer
        >>> judge(policy, MockScorer(lambda m, a: 0.2).score("q", "a")).action.value
        'accept'
        >>> judge(policy, None).rule
        'on_error'
    """
    version = getattr(calibrator, "fingerprint", None) if calibrator is not None else None
    if result is None:
        return Verdict(action=policy.on_error, rule="on_error", calibrator_version=version)
    confidence = float(calibrator.confidence(result)) if calibrator is not None else None
    return policy.decide(result, confidence).model_copy(update={"calibrator_version": version})


class GuardPolicy(TypedConfig):
    """Ordered rules from confidence (or raw score) bands to actions, plus retry, review and error settings.

    Example:
        >>> policy = GuardPolicy.from_yaml('''
        ... rules:
        ...   - {name: confident, min: 0.8, action: accept}
        ...   - {name: unsure, min: 0.5, action: retry}
        ...   - {name: lost, action: abstain}
        ... retry: {max_attempts: 3, strategy: resample}
        ... ''')
        >>> policy.decide(None, confidence=0.6).action
        <Action.RETRY: 'retry'>
    """

    model_config = ConfigDict(extra="forbid")

    rules: list[Rule] = Field(min_length=1)
    """Rules tried in order; the first whose band holds the value decides."""
    default_action: Action = Action.REVIEW
    """Action when no rule matches (fail closed)."""
    retry: RetrySettings = Field(default_factory=RetrySettings)
    """Retry settings for rules with action 'retry'."""
    abstain_message: str = "I'm not confident enough to answer that."
    """Answer text returned when the guard abstains (a rule's message overrides it)."""
    annotate_message: str = "Low confidence: please double-check this answer."
    """Note attached to answers accepted with 'annotate' (a rule's message overrides it)."""
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    """Human review queue settings."""
    on_error: Action = Action.REVIEW
    """Action when scoring itself fails (fail closed by default): accept, annotate, abstain, review or raise."""
    rank_by: str | None = None
    """Field ranking attempts when retries run out (default: confidence with a calibrator, else the first rule's field)."""
    audit: AuditSettings | None = None
    """Audit sampling of served answers (off by default), e.g. ``audit: {rate: 0.05}``."""
    spans: SpanPolicy | None = None
    """Span policy (off by default): flag, drop or review the sentences whose span confidence is low,
    e.g. ``spans: {drop_below: 0.2, flag_below: 0.4}`` (docs/spans.md)."""

    @field_validator("rules")
    @classmethod
    def _names(cls, rules: list[Rule]) -> list[Rule]:
        named = [r if r.name else r.model_copy(update={"name": f"rules[{i}]"}) for i, r in enumerate(rules)]
        seen: set[str] = set()
        for r in named:
            assert r.name is not None
            if r.name in seen:
                raise ValueError(f"rule names must be unique; {r.name!r} appears twice")
            seen.add(r.name)
        return named

    @model_validator(mode="after")
    def _every_rule_can_fire(self) -> GuardPolicy:
        _check_rules(self.rules)
        return self

    @field_validator("on_error", "default_action")
    @classmethod
    def _no_retry(cls, v: Action) -> Action:
        if v is Action.RETRY:
            raise ValueError("cannot be 'retry'")
        return v

    @field_validator("rank_by")
    @classmethod
    def _rank_field(cls, v: str | None) -> str | None:
        if v is not None and v not in RULE_FIELDS:
            raise ValueError(f"unknown field {v!r}; choose one of {list(RULE_FIELDS)}")
        return v

    # ------------------------------------------------------------------ queries
    @property
    def uses_confidence(self) -> bool:
        """True when a rule (or rank_by) needs a calibrated confidence."""
        return (
            any(r.field == "confidence" and not r.unbounded for r in self.rules)
            or self.rank_by == "confidence"
        )

    @property
    def actions(self) -> set[Action]:
        """Every action this policy can end in."""
        out = {r.action for r in self.rules} | {self.default_action, self.on_error}
        if Action.RETRY in out:
            out.add(self.retry.on_exhausted)
        return out

    def answer_after_review(self, status: str, final_answer: str | None, model_answer: str) -> str:
        """The text a user gets for an answer sent to review, by the review's status.

        Approved or edited: the reviewer's final answer (the model's when approving); rejected: the
        abstention message; pending: the pending message, or the unreviewed answer if
        ``review.show_answer`` (fail open, off by default).
        """
        if status in ("approved", "edited"):
            return final_answer if final_answer is not None else model_answer
        if status in ("rejected", "cannot_tell"):  # cannot_tell releases nothing: fail closed
            return self.abstain_message
        return model_answer if self.review.show_answer else self.review.pending_message

    def decide(self, result: ScoreResult | None, confidence: float | None = None) -> Verdict:
        """The action for one scored answer: the first rule whose band holds its value.

        Args:
            result: The answer's scores (may be None when every rule is over confidence).
            confidence: Calibrated confidence, needed by rules over ``confidence``.

        Raises:
            ConfigurationError: A rule needs a value that was not given.
        """
        for rule in self.rules:
            if rule.unbounded:  # a catch-all needs no value
                return Verdict(
                    action=rule.action,
                    rule=rule.name,
                    confidence=confidence,
                    field=rule.field,
                    message=rule.message,
                )
            value = self._value(rule.field, result, confidence, rule.name)
            if not math.isfinite(value):
                raise ConfigurationError(f"rule {rule.name!r}: {rule.field} is not finite ({value})")
            if rule.matches(value):
                return Verdict(
                    action=rule.action,
                    rule=rule.name,
                    confidence=confidence,
                    field=rule.field,
                    value=value,
                    message=rule.message,
                )
        return Verdict(action=self.default_action, rule=None, confidence=confidence)

    @staticmethod
    def _value(field: str, result: ScoreResult | None, confidence: float | None, name: str | None) -> float:
        if field == "confidence":
            if confidence is None:
                raise ConfigurationError(
                    f"rule {name!r} is over 'confidence' but no confidence was given; "
                    "pass a Calibrator to the Guard, or write the rule over a raw score field"
                )
            return float(confidence)
        if result is None:
            raise ConfigurationError(f"rule {name!r} is over {field!r} but no ScoreResult was given")
        return float(getattr(result, field))

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def coerce(cls, policy: GuardPolicy | Mapping[str, Any] | str | Path) -> GuardPolicy:
        """The one way every entry point reads a policy: a GuardPolicy, a dict, YAML text, or a YAML/JSON file.

        Raises:
            ConfigurationError: Any other type, or an invalid policy (the message names the field or rules).

        Example:
            >>> GuardPolicy.coerce({"rules": [{"action": "accept"}]}).rules[0].name
            'rules[0]'
        """
        if isinstance(policy, GuardPolicy):
            return policy
        if isinstance(policy, Mapping):
            return cls.from_dict(policy)
        if isinstance(policy, Path) or (isinstance(policy, str) and policy.strip().lower().endswith(".json")):
            if str(policy).strip().lower().endswith(".json"):
                return cls.from_json(policy)
            return cls.from_yaml(policy)
        if isinstance(policy, str):
            return cls.from_yaml(policy)
        raise ConfigurationError(
            f"policy must be a GuardPolicy, a dict, YAML text or a .yaml/.json file path, got {type(policy).__name__}"
        )

    @classmethod
    def from_yaml(cls, source: str | Path) -> GuardPolicy:
        """Load from a YAML file path or YAML text.

        Raises:
            ConfigurationError: Unreadable YAML or an invalid field (the message names it).
        """
        text, where = _read_source(source, (".yaml", ".yml"))
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigurationError(f"policy {where} is not valid YAML: {_yaml_problem(e)}") from None
        return cls.from_dict(data, source=where)

    @classmethod
    def from_json(cls, source: str | Path) -> GuardPolicy:
        """Load from a JSON file path or JSON text."""
        text, where = _read_source(source, (".json",))
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigurationError(f"policy {where} is not valid JSON: {e}") from e
        return cls.from_dict(data, source=where)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "dict") -> GuardPolicy:
        """Validate a dict, turning pydantic's errors into one :class:`ConfigurationError` naming each bad field."""
        if not isinstance(data, Mapping):
            raise ConfigurationError(
                f"policy {source} must be a mapping with 'rules', got {type(data).__name__}"
            )
        if "rules" not in data and not all(isinstance(k, str) and _FIELD_NAME.fullmatch(k) for k in data):
            # Not a policy at all (`--policy /etc/shadow`): name no key, as its keys are its contents.
            # A typo among field-like keys (`rulez:`) is named by the validation below.
            raise ConfigurationError(
                f"policy {source} has no 'rules' ({len(data)} other top-level keys): is it a policy file?"
            )
        try:
            return cls.model_validate(dict(data))
        except ValidationError as e:
            raise ConfigurationError(f"invalid policy {source}: {format_validation_error(e)}") from e

    def to_yaml(self) -> str:
        """The policy as YAML (round-trips through :meth:`from_yaml`)."""
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)

    def to_json(self) -> str:
        """The policy as JSON."""
        return self.model_dump_json(indent=2, exclude_none=True)

    @property
    def fingerprint(self) -> str:
        """A short content hash (12 hex digits) naming this exact policy: review items and payloads
        record it, so each past decision stays explainable."""
        import hashlib

        return hashlib.sha256(self.model_dump_json(exclude_none=True).encode()).hexdigest()[:12]

    @classmethod
    def first_day(cls, audit_rate: float = 0.2, *, seed: int | None = 0, **kwargs: Any) -> GuardPolicy:
        """The policy of a model with no calibrator yet: serve every answer with a note, and audit a
        random ``audit_rate`` share of them into the review queue (no calibrator needed).

        Once the queue holds labels (:data:`~semgrad_guard.guard.recalibrate.MIN_LABELS` at the very
        least; a few dozen do much better), ``semgrad-guard calibrate --from-reviews DB --base none``
        fits the model's first calibrator, and a confidence policy takes over.
        """
        spec: dict[str, Any] = {
            "rules": [{"name": "first-day", "action": "annotate"}],
            "annotate_message": "Not yet verified: the guard is still learning this model (answers are being audited).",
            "audit": {"rate": audit_rate, "seed": seed},
        }
        spec.update(kwargs)
        return cls.from_dict(spec, source="first_day()")

    @classmethod
    def from_threshold(
        cls,
        threshold: float,
        *,
        below: Action | str = Action.REVIEW,
        annotate_above: float | None = None,
        **kwargs: Any,
    ) -> GuardPolicy:
        """Accept at confidence >= ``threshold`` (e.g. from :func:`select_threshold`), else ``below``."""
        rules: list[dict[str, Any]] = []
        if annotate_above is not None and annotate_above < threshold:
            rules.append({"name": "risk-controlled", "min": threshold, "action": "accept"})
            rules.append({"name": "annotated", "min": annotate_above, "action": "annotate"})
        else:
            rules.append({"name": "risk-controlled", "min": threshold, "action": "accept"})
        rules.append({"name": "below-threshold", "action": Action(below).value})
        return cls.model_validate({"rules": rules, **kwargs})


def _interval(rule: Rule) -> tuple[float, float]:
    """The rule's band clipped to the values its field can take, as a half-open [lo, hi)."""
    top = _DOMAIN_HI.get(rule.field, math.inf)
    lo = max(rule.min if rule.min is not None else 0.0, 0.0)
    hi = rule.max if rule.max is not None else math.inf
    if math.isfinite(top):  # a closed top: max=None includes the top value itself
        hi = min(hi, math.nextafter(top, math.inf))
    return lo, hi


def _covered(lo: float, hi: float, earlier: list[tuple[float, float]]) -> bool:
    cur, moved = lo, True
    while cur < hi and moved:
        moved = False
        for a, b in earlier:
            if a <= cur < b:
                cur, moved = b, True
    return cur >= hi


def _band(rule: Rule) -> str:
    lo = "" if rule.min is None else f"{rule.min:g} <= "
    hi = "" if rule.max is None else f" < {rule.max:g}"
    return f"{lo}{rule.field}{hi}" if lo or hi else "any value"


def _check_rules(rules: list[Rule]) -> None:
    """Refuse rules that can never fire; warn on partial overlaps that are not a threshold ladder."""
    catch_all: Rule | None = None
    for j, rule in enumerate(rules):
        if catch_all is not None:
            raise ValueError(
                f"rule {rule.name!r} can never fire: the earlier catch-all rule {catch_all.name!r} (no min, no max) "
                "matches every answer first; move the catch-all to the end or give it a band"
            )
        if rule.unbounded:
            catch_all = rule
            continue
        lo, hi = _interval(rule)
        if lo >= hi:
            top = _DOMAIN_HI.get(rule.field)
            domain = f"[0, {top:g}]" if top is not None else "[0, inf) (it is never negative)"
            raise ValueError(
                f"rule {rule.name!r} can never fire: its band {_band(rule)} holds no value {rule.field} can take, "
                f"which is {domain}"
            )
        same = [(r, _interval(r)) for r in rules[:j] if r.field == rule.field and not r.unbounded]
        if _covered(lo, hi, [iv for _, iv in same]):
            names = ", ".join(repr(r.name) for r, (a, b) in same if max(a, lo) < min(b, hi))
            raise ValueError(
                f"rule {rule.name!r} can never fire: every value of its band {_band(rule)} is taken first by "
                f"earlier rule(s) {names} (rules are tried in order); reorder the rules or narrow the bands"
            )
        for other, (a, b) in same:
            ladder = (other.max is None and rule.max is None) or (other.min is None and rule.min is None)
            if max(a, lo) < min(b, hi) and not ladder:
                warnings.warn(
                    f"rules {other.name!r} ({_band(other)}) and {rule.name!r} ({_band(rule)}) overlap on "
                    f"[{max(a, lo):g}, {min(b, hi):g}); the earlier {other.name!r} decides there (first match wins). "
                    "If that is not intended, make the bands meet edge to edge",
                    PolicyOverlapWarning,
                    stacklevel=2,
                )


_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,39}")


def _yaml_problem(e: Exception) -> str:
    """What is wrong and where, without the snippet of the text PyYAML quotes (the file may be a secret)."""
    problem = getattr(e, "problem", None) or type(e).__name__
    mark = getattr(e, "problem_mark", None)
    return (
        f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(problem)
    )


def _read_source(source: str | Path, suffixes: tuple[str, ...]) -> tuple[str, str]:
    if isinstance(source, Path) or (
        isinstance(source, str) and "\n" not in source and source.strip().lower().endswith(suffixes)
    ):
        from .._files import read_config_text

        return read_config_text(source, "policy"), str(source)
    return str(source), "<text>"
