"""The span policy: flag, drop or send to review the sentences of an answer whose confidence is low.

Plain configuration, no torch. A policy file's ``spans:`` section (:class:`SpanPolicy`) names a span
calibrator (fitted on sentence labels: P(this sentence is supported)) and confidence bands; each span
of a scored answer gets a :class:`SpanDecision`, and :meth:`SpanPolicy.apply` builds the text the user
gets from the scored answer: dropped spans cut out, flagged ones marked, nothing else changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from ..config import TypedConfig
from ..errors import ConfigurationError
from ..results import ScoreResult
from ..spans import SpanAction, SpanDecision, SpanScore
from .calibration import Calibrator

# The bands in the order they are tried: the most severe action whose band holds the confidence wins.
_BANDS: tuple[tuple[str, SpanAction], ...] = (
    ("abstain_below", "abstain"),
    ("drop_below", "drop"),
    ("review_below", "review"),
    ("flag_below", "flag"),
)


class SpanJudge(Protocol):
    """Anything that judges one span (what gate-mode streaming needs of a span policy)."""

    def judge(self, span: SpanScore) -> SpanDecision: ...


class SpanPolicy(TypedConfig):
    """Confidence bands over each span (sentence) of an answer, from a span calibrator.

    A span whose confidence is below a band's edge gets that band's action; the bands are tried from
    the most severe (``abstain_below``, ``drop_below``, ``review_below``, ``flag_below``), and a span
    below none is kept. ``drop`` cuts the span from the returned text, ``flag`` marks it
    (``flag_format``), ``review`` sends the whole answer to review, ``abstain`` abstains on it.

    Example:
        >>> from semgrad_guard import MockScorer
        >>> scorer = MockScorer(lambda m, a: 0.9 if "moon" in a else 0.1)
        >>> rows = [scorer.score("q", a) for a in ["The sky is blue.", "The moon is cheese."] * 10]
        >>> cal = Calibrator.fit(rows, [True, False] * 10, method="isotonic", features=["semgrad"])
        >>> policy = SpanPolicy(drop_below=0.5).with_calibrator(cal)
        >>> answer = "The sky is blue. The moon is cheese."
        >>> out = policy.apply(answer, scorer.score("q", answer, spans="sentences"))
        >>> out.text, [d.action for d in out.decisions]
        ('The sky is blue.', ['keep', 'drop'])
    """

    model_config = ConfigDict(extra="forbid")

    calibrator: str | None = "default"
    """Span calibrator: a JSON file path, or ``default`` (the one shipped for the scorer's model)."""
    flag_below: float | None = Field(default=None, ge=0.0, le=1.0)
    """Mark spans whose confidence is below this."""
    review_below: float | None = Field(default=None, ge=0.0, le=1.0)
    """Send the answer to review when a span's confidence is below this."""
    drop_below: float | None = Field(default=None, ge=0.0, le=1.0)
    """Cut spans whose confidence is below this from the answer."""
    abstain_below: float | None = Field(default=None, ge=0.0, le=1.0)
    """Abstain on the answer when a span's confidence is below this (gate-mode streaming stops there)."""
    flag_format: str = "{text} [unverified]"
    """How a flagged span reads in the returned text; ``{text}`` is the span."""

    _calibrator: Calibrator | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _bands(self) -> SpanPolicy:
        set_ = [(name, getattr(self, name)) for name, _ in _BANDS if getattr(self, name) is not None]
        if not set_:
            raise ValueError(
                "a span policy needs at least one of flag_below, review_below, drop_below, abstain_below"
            )
        for i, (name, edge) in enumerate(set_):
            for earlier, e in set_[:i]:
                if e >= edge:
                    raise ValueError(
                        f"{name} ({edge:g}) can never fire: {earlier} ({e:g}) is tried first and takes every "
                        f"confidence below it; make {name} higher than {earlier}"
                    )
        if "{text}" not in self.flag_format:
            raise ValueError("flag_format must contain {text} (the span)")
        return self

    # ------------------------------------------------------------------ calibrator
    def with_calibrator(self, calibrator: Calibrator) -> SpanPolicy:
        """This policy judging with ``calibrator`` (instead of loading its ``calibrator`` setting)."""
        other = self.model_copy()
        other._calibrator = calibrator
        return other

    def resolve(self, model_id: str | None) -> SpanPolicy:
        """This policy with its calibrator loaded (a file, or the one shipped for ``model_id``).

        Raises:
            ConfigurationError: no such file, or no span calibrator is shipped for ``model_id``.
        """
        if self._calibrator is not None:
            return self
        if self.calibrator in (None, "default"):
            if model_id is None:
                raise ConfigurationError(
                    "spans.calibrator: 'default' needs the scorer's model id; give a file path"
                )
            return self.with_calibrator(default_span_calibrator(model_id))
        return self.with_calibrator(Calibrator.load(self.calibrator))

    @property
    def span_calibrator(self) -> Calibrator:
        if self._calibrator is None:
            raise ConfigurationError(
                "the span policy has no calibrator loaded yet: call policy.resolve(model_id) or with_calibrator(cal)"
            )
        return self._calibrator

    # ------------------------------------------------------------------ judging
    def judge(self, span: SpanScore) -> SpanDecision:
        """The decision for one span: the most severe band below whose edge its confidence falls."""
        confidence = float(self.span_calibrator.predict_scores(span.scores())[0])
        for name, action in _BANDS:
            edge = getattr(self, name)
            if edge is not None and confidence < edge:
                reason = f"confidence {confidence:.3g} < {name} {edge:g}"
                return SpanDecision(
                    action=action,
                    confidence=confidence,
                    reason=reason,
                    start=span.start,
                    end=span.end,
                    text=span.text,
                )
        return SpanDecision(
            action="keep",
            confidence=confidence,
            reason=f"confidence {confidence:.3g} is above every band",
            start=span.start,
            end=span.end,
            text=span.text,
        )

    def apply(self, answer: str, result: ScoreResult) -> SpanOutcome:
        """Judge every span of ``result`` (scored with spans) and build the text the user gets.

        ``answer`` is the text that was scored; the returned text is it with the dropped spans cut out
        (with the whitespace after each) and the flagged ones marked, nothing else changed.

        Raises:
            ConfigurationError: ``result`` has no spans (score with ``spans="sentences"``).
        """
        if result.spans is None:
            raise ConfigurationError(
                "the span policy needs span scores: score the answer with spans='sentences' (the Guard does "
                "when the policy has a spans section)"
            )
        self.span_calibrator.check_result(result)
        decisions = [self.judge(s) for s in result.spans]
        return SpanOutcome(decisions=decisions, text=self.render(answer, decisions), scored=answer)

    def render(self, answer: str, decisions: Sequence[SpanDecision]) -> str:
        """``answer`` with the dropped spans cut out and the flagged ones marked."""
        out, pos = [], 0
        for d in sorted((d for d in decisions if d.action in ("drop", "flag")), key=lambda d: d.start or 0):
            assert d.start is not None and d.end is not None
            if d.start < pos:
                continue  # overlapping caller spans: the first one decides
            out.append(answer[pos : d.start])
            if d.action == "flag":
                out.append(self.flag_format.format(text=answer[d.start : d.end]))
                pos = d.end
            else:
                pos = d.end
                while pos < len(answer) and answer[pos] in " \t":  # the gap after the sentence goes too
                    pos += 1
        out.append(answer[pos:])
        return "".join(out).rstrip() if any(d.action == "drop" for d in decisions) else "".join(out)


class SpanOutcome(BaseModel):
    """The span policy's decisions on one answer and the text the user gets."""

    model_config = ConfigDict(frozen=True)

    decisions: list[SpanDecision]
    """One decision per span, in order."""
    text: str
    """The scored answer with dropped spans cut out and flagged ones marked."""
    scored: str
    """The answer as scored (``text`` differs from it when spans were dropped or flagged)."""

    @property
    def removed(self) -> list[SpanDecision]:
        """The dropped spans, with why."""
        return [d for d in self.decisions if d.action == "drop"]

    @property
    def worst(self) -> SpanAction:
        """The most severe action taken on any span (``keep`` when none)."""
        order: list[SpanAction] = ["abstain", "review", "drop", "flag"]
        actions = {d.action for d in self.decisions}
        return next((a for a in order if a in actions), "keep")


def default_span_calibrator(model_id: str) -> Calibrator:
    """The span calibrator shipped for ``model_id`` (``semgrad_guard/calibrators/spans/``).

    Raises:
        ConfigurationError: none is shipped for this model.
    """
    folder = resources.files("semgrad_guard") / "calibrators" / "spans"
    found = []
    if folder.is_dir():
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".json"):
                found.append(Calibrator.from_json(entry.read_text(), source=f"spans/{entry.name}"))
    for cal in found:
        if cal.model_id is not None and cal.model_id.lower() == model_id.lower():
            return cal
    raise ConfigurationError(
        f"no span calibrator is shipped for model {model_id!r} (shipped: {sorted(c.model_id or '' for c in found)}); "
        "fit one on sentence labels (benchmarks/bench_spans.py shows how) and set spans.calibrator to its path"
    )


def coerce_span_policy(value: SpanPolicy | Mapping[str, Any] | str | Path) -> SpanPolicy:
    """A span policy from a SpanPolicy or a dict (a policy file's ``spans:`` section)."""
    if isinstance(value, SpanPolicy):
        return value
    if isinstance(value, Mapping):
        return SpanPolicy(**dict(value))
    raise ConfigurationError(f"spans must be a mapping of span-policy settings, got {type(value).__name__}")
