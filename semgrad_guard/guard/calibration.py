"""Calibration: map a :class:`ScoreResult` to ``confidence`` = estimated P(answer is correct).

A raw SemGrad value ("is 0.0031 bad?") means nothing to a user; a calibrated confidence does.
:class:`Calibrator` is fitted on labelled examples (scores plus correct / incorrect), by isotonic
regression or logistic (Platt) scaling, on one score field or a combination, and chooses both by
cross-validation when asked to. It is stored as plain JSON: prediction needs numpy only (no
scikit-learn, no torch), and the file records the model, profile and data it was fitted on, so a
calibrator is never silently applied to another model's scores.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from ..config import format_validation_error
from ..errors import CalibrationError, CalibratorMismatchError, ConfigurationError
from ..results import SCORE_FIELDS, ScoreResult
from ..scoring.profile import ModelProfile

logger = logging.getLogger(__name__)

FORMAT = "semgrad-guard-calibrator"
FORMAT_VERSION = 2
_EPS = 1e-12
MIN_EXAMPLES = 10
"""Fewest labelled examples :meth:`Calibrator.fit` accepts (and at least 2 of each class)."""

Method = Literal["isotonic", "platt"]

AUTO_FEATURE_SETS: tuple[tuple[str, ...], ...] = (
    *((f,) for f in SCORE_FIELDS),
    ("mean_nll", "mean_entropy"),
    ("semgrad", "mean_nll", "mean_entropy"),
    ("exgrad", "mean_nll", "mean_entropy"),
    SCORE_FIELDS,
)
"""Feature sets ``features="auto"`` tries: each score alone, the likelihood pair, each gradient score
with it, and all six (several features are combined by a logistic model on log-scores)."""

DRIFT_WINDOW = 200
"""Confidences kept by the drift monitor (the most recent ones)."""
DRIFT_MIN = 50
"""Confidences needed before the drift monitor judges."""
DRIFT_P = 0.001
"""Two-sample Kolmogorov-Smirnov p-value below which the window counts as drifted."""


class CalibrationProfile(BaseModel):
    """Where the scores came from: the anchor and layers SemGrad looked at (and the template hash)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    anchor_offset: int
    """Anchor offset of the profile the scores were computed with."""
    layers: list[int]
    """Hidden-state indices of the profile the scores were computed with."""
    chat_template_hash: str | None = None
    """sha256 of the chat template, when known."""
    exgrad_mode: Literal["logits", "weight"] = "logits"
    """How exgrad was taken (the two modes' values differ by tens of per cent on tied models)."""


class Calibrator(BaseModel):
    """Maps scores to ``confidence`` in [0, 1], the estimated probability that the answer is correct.

    Fit with :meth:`fit`, then :meth:`confidence` per result. Save and load with :meth:`save` /
    :meth:`load` (JSON). :meth:`confidence` refuses results from another model or profile.

    Example:
        >>> from semgrad_guard import MockScorer
        >>> scorer = MockScorer(lambda m, a: 0.1 if a == "right" else 0.9)
        >>> results = [scorer.score("q", a) for a in ["right", "wrong"] * 10]
        >>> cal = Calibrator.fit(results, [True, False] * 10, method="isotonic", features=["semgrad"])
        >>> round(cal.confidence(scorer.score("q", "right")), 2), round(cal.confidence(scorer.score("q", "wrong")), 2)
        (1.0, 0.0)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["semgrad-guard-calibrator"] = "semgrad-guard-calibrator"
    """File-format marker, so a foreign JSON file is recognised as such."""
    version: int = FORMAT_VERSION
    """File-format version."""
    method: Method
    """'isotonic' (monotone, non-parametric) or 'platt' (logistic on log-scores)."""
    features: list[str] = Field(min_length=1)
    """Score fields feeding the calibrator; several are combined by a logistic model."""
    params: dict[str, Any]
    """Fitted parameters (see :meth:`predict`)."""
    model_id: str | None = None
    """Model whose scores it was fitted on; results from another model are refused."""
    profile: CalibrationProfile | None = None
    """Profile (anchor, layers) the scores were computed with; results with another profile are refused."""
    data: str | None = None
    """What labelled data it was fitted on (free text, e.g. 'SciQ test.jsonl, 1000 questions')."""
    n_samples: int = 0
    """Number of labelled examples it was fitted on."""
    n_correct: int = 0
    """How many of them were correct."""
    created: str | None = None
    """When it was fitted (ISO 8601, UTC)."""
    cv: dict[str, float] | None = None
    """Cross-validated Brier score of every candidate considered ('method:feature+feature' -> score)."""
    cv_scheme: str | None = None
    """How ``cv`` was computed: '5-fold, Brier' or 'leave-one-group-out, 1 - AUROC' (one data set
    held out at a time: what transfers across data sets is the ranking, the base rate does not)."""
    reference: list[float] | None = None
    """101 quantiles of the confidences it gives on its own fitting data: the drift monitor's reference."""
    n_reference: int = 0
    """How many confidences the reference quantiles summarise."""
    recalibration: dict[str, float | list[float]] | None = None
    """A map of the logit applied on top: confidence = sigmoid(m(logit(p))), p the fitted map's output
    (written by :func:`~semgrad_guard.guard.recalibrate.recalibrate`). ``{"slope": a, "intercept": b}``:
    m(z) = a * z + b. ``{"intercept": b, "knots": [k1..kK], "slopes": [s0..sK]}``: continuous and
    piecewise linear, slope s0 below k1, s_i between k_i and k_i+1, sK above kK, and m(0) = b."""
    provenance: dict[str, Any] | None = None
    """What a recalibration was fitted on: labels, audit share, date range, weights, base calibrator."""

    _drift: DriftMonitor | None = PrivateAttr(default=None)
    _fingerprint: str | None = PrivateAttr(default=None)

    @field_validator("features")
    @classmethod
    def _known_features(cls, v: list[str]) -> list[str]:
        bad = [f for f in v if f not in SCORE_FIELDS]
        if bad:
            raise ValueError(f"unknown score fields {bad}; choose from {list(SCORE_FIELDS)}")
        return v

    @field_validator("recalibration")
    @classmethod
    def _valid_recalibration(
        cls, v: dict[str, float | list[float]] | None
    ) -> dict[str, float | list[float]] | None:
        if v is not None:
            map_pieces(v)  # raises ValueError naming what is wrong
        return v

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        results: Sequence[ScoreResult],
        correct: Sequence[bool],
        *,
        method: Literal["isotonic", "platt", "auto"] = "auto",
        features: Literal["auto"] | Sequence[str] = "auto",
        model_id: str | None = None,
        profile: ModelProfile | CalibrationProfile | Mapping[str, Any] | None = None,
        data: str | None = None,
        folds: int = 5,
        seed: int = 0,
        groups: Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
    ) -> Calibrator:
        """Fit on labelled results; with ``"auto"``, choose method and/or features by cross-validation.

        Candidates for ``features="auto"`` are :data:`AUTO_FEATURE_SETS`. The candidate with the
        lowest mean Brier score over ``folds`` stratified folds wins; or, when ``groups`` names the
        data set of each example (two or more), the one with the highest mean AUROC on each data set
        held out in turn: the choice that transfers to data it was not fitted on.

        Args:
            results: Scores of the labelled answers.
            correct: Whether each answer was correct.
            method: "isotonic", "platt", or "auto" (chosen by cross-validation).
            features: A list of score fields, or "auto".
            model_id: Model the scores come from; defaults to the results' common ``model_id``.
            profile: Profile the scores were computed with; defaults to the results' common
                anchor offset and layers.
            data: Free-text description of the labelled data, stored in the file.
            folds: Number of cross-validation folds for the "auto" choices.
            seed: Seed of the fold split.
            groups: The data set (or source) of each example, for leave-one-group-out selection.
            weights: Per-example weights, e.g. the inverse inclusion probabilities of review labels
                (an audit label sampled at rate 0.05 stands for 20 served answers).

        Raises:
            CalibrationError: Too few examples, one class only, or lengths differ.
            ConfigurationError: Unknown method or feature name.
        """
        results = list(results)
        y = np.asarray([bool(c) for c in correct], dtype=float)
        if len(results) != len(y):
            raise CalibrationError(f"results ({len(results)}) and correct ({len(y)}) differ in length")
        n_pos = int(y.sum())
        if len(results) < MIN_EXAMPLES or n_pos < 2 or len(y) - n_pos < 2:
            raise CalibrationError(
                f"need at least {MIN_EXAMPLES} labelled examples with at least 2 correct and 2 incorrect; "
                f"got {len(y)} examples, {n_pos} correct"
            )
        if method not in ("isotonic", "platt", "auto"):
            raise ConfigurationError(f"method must be 'isotonic', 'platt' or 'auto', got {method!r}")
        methods: list[Method] = ["isotonic", "platt"] if method == "auto" else [method]
        if features == "auto":
            candidates = [list(fs) for fs in AUTO_FEATURE_SETS]
        elif isinstance(features, str):
            raise ConfigurationError(f"features must be 'auto' or a list of score fields, got {features!r}")
        else:
            candidates = [list(features)]
        for cand in candidates:
            bad = [f for f in cand if f not in SCORE_FIELDS]
            if bad or not cand:
                raise ConfigurationError(
                    f"features: unknown score fields {bad}; choose from {list(SCORE_FIELDS)}"
                )
        w = np.ones(len(y)) if weights is None else np.asarray(list(weights), dtype=float)
        if w.shape != y.shape or not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise CalibrationError(f"weights must be {len(y)} positive finite numbers, one per example")
        x_all = _matrix(results, list(SCORE_FIELDS))
        if not np.all(np.isfinite(x_all)):
            raise CalibrationError("some results have non-finite scores; drop them before fitting")

        cv: dict[str, float] = {}
        scheme = None
        if groups is not None and len(list(groups)) != len(y):
            raise CalibrationError(f"groups ({len(list(groups))}) and correct ({len(y)}) differ in length")
        if len(methods) * len(candidates) > 1:
            if groups is not None and len(set(groups)) >= 2:
                g = np.asarray(list(groups))
                splits = [(np.flatnonzero(g != name), np.flatnonzero(g == name)) for name in sorted(set(g))]
                # Across data sets the base rate shifts, and a Brier score mostly measures that shift;
                # what transfers is the ranking, so choose by held-out AUROC (the fit on all data
                # then calibrates the chosen features on every group's base rate).
                scheme, loss = "leave-one-group-out, 1 - AUROC", _cv_auroc_loss
            else:
                splits = _stratified_folds(y, folds, seed)
                scheme, loss = f"{len(splits)}-fold, Brier", _cv_brier
            for m in methods:
                for cand in candidates:
                    cols = [SCORE_FIELDS.index(f) for f in cand]
                    cv[_key(m, cand)] = loss(m, x_all[:, cols], y, splits, w)
            best = min(cv, key=lambda k: cv[k])
            best_method, best_feats = best.split(":", 1)
            chosen_method: Method = "isotonic" if best_method == "isotonic" else "platt"
            chosen_features = best_feats.split("+")
            logger.info("calibrator: chose %s by %s cross-validation (%.4f)", best, scheme, cv[best])
        else:
            chosen_method, chosen_features = methods[0], candidates[0]
        cols = [SCORE_FIELDS.index(f) for f in chosen_features]
        params = _fit_params(chosen_method, x_all[:, cols], y, w)
        own = _predict_params(chosen_method, params, x_all[:, cols])
        return cls(
            method=chosen_method,
            features=chosen_features,
            params=params,
            model_id=model_id if model_id is not None else _common_model_id(results),
            profile=_profile_of(profile, results),
            data=data,
            n_samples=len(y),
            n_correct=n_pos,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            cv=cv or None,
            cv_scheme=scheme,
            reference=[round(float(q), 6) for q in np.quantile(own, np.linspace(0, 1, 101))],
            n_reference=len(own),
        )

    # ------------------------------------------------------------------ prediction
    def predict(self, results: Sequence[ScoreResult], *, check: bool = True) -> np.ndarray:
        """Confidences for many results (a float array in [0, 1]).

        Args:
            results: Results to calibrate.
            check: Refuse results whose model id or profile differs from the calibrator's.
        """
        results = list(results)
        if check:
            for r in results:
                self.check_result(r)
        return self._predict_matrix(_matrix(results, self.features))

    def confidence(self, result: ScoreResult, *, check: bool = True) -> float:
        """Estimated probability that the answer behind ``result`` is correct.

        Raises:
            CalibratorMismatchError: ``result`` comes from another model or profile (unless ``check=False``).
        """
        return float(self.predict([result], check=check)[0])

    def predict_scores(self, scores: Mapping[str, float] | Sequence[Mapping[str, float]]) -> np.ndarray:
        """Confidences from plain score dicts (no model/profile check), e.g. rows of a JSONL file."""
        rows = [scores] if isinstance(scores, Mapping) else list(scores)
        try:
            x = np.asarray([[float(row[f]) for f in self.features] for row in rows], dtype=float)
        except KeyError as e:
            raise CalibrationError(f"score dict lacks field {e}; this calibrator uses {self.features}") from e
        return self._predict_matrix(x.reshape(len(rows), len(self.features)))

    def _predict_matrix(self, x: np.ndarray) -> np.ndarray:
        if not np.all(np.isfinite(x)):
            raise CalibrationError("cannot calibrate non-finite scores")
        out = _predict_params(self.method, self.params, x)
        if self.recalibration is not None:
            out = recalibrated(out, self.recalibration)
        if self.drift is not None:
            self.drift.update(out)
        return out

    @property
    def drift(self) -> DriftMonitor | None:
        """Watches the confidences this calibrator gives against those on its fitting data.

        None for calibrators saved without a reference (format 1). See :class:`DriftMonitor`.
        """
        if self._drift is None and self.reference:
            self._drift = DriftMonitor(self.reference, self.n_reference, label=self.model_id or "calibrator")
        return self._drift

    @property
    def fingerprint(self) -> str:
        """A short content hash (12 hex digits) naming this exact calibrator: what payloads and
        review items record as ``calibrator_version``, so each past decision stays explainable."""
        if self._fingerprint is None:
            import hashlib

            self._fingerprint = hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]
        return self._fingerprint

    # ------------------------------------------------------------------ compatibility
    def check_compatible(
        self,
        model_id: str | None,
        profile: ModelProfile | CalibrationProfile | Mapping[str, Any] | None = None,
    ) -> None:
        """Raise :class:`CalibratorMismatchError` if ``model_id`` or ``profile`` differ from the fitted ones.

        A side that is unknown (``None``) on either end is not compared.
        """
        if self.model_id is not None and model_id is not None and model_id != self.model_id:
            raise CalibratorMismatchError(
                f"calibrator was fitted on model {self.model_id!r} but is applied to {model_id!r}; "
                "fit a calibrator on this model's scores (Calibrator.fit)"
            )
        if self.profile is None or profile is None:
            return
        other = _as_profile(profile)
        if other.anchor_offset != self.profile.anchor_offset or sorted(other.layers) != sorted(
            self.profile.layers
        ):
            raise CalibratorMismatchError(
                f"calibrator was fitted on profile anchor_offset={self.profile.anchor_offset}, "
                f"layers={self.profile.layers} but is applied to anchor_offset={other.anchor_offset}, "
                f"layers={other.layers}; scores from another profile are not comparable"
            )
        if other.exgrad_mode != self.profile.exgrad_mode and any(
            f in ("exgrad", "hybridgrad") for f in self.features
        ):
            raise CalibratorMismatchError(
                f"calibrator was fitted on exgrad_mode={self.profile.exgrad_mode!r} scores but is applied to "
                f"exgrad_mode={other.exgrad_mode!r} scores; score with the same mode or refit"
            )
        if (
            self.profile.chat_template_hash
            and other.chat_template_hash
            and self.profile.chat_template_hash != other.chat_template_hash
        ):
            raise CalibratorMismatchError(
                "calibrator was fitted under another chat template "
                f"({self.profile.chat_template_hash[:12]} != {other.chat_template_hash[:12]})"
            )

    def check_result(self, result: ScoreResult) -> None:
        """Raise :class:`CalibratorMismatchError` if ``result`` comes from another model or profile."""
        self.check_compatible(
            result.model_id,
            CalibrationProfile(
                anchor_offset=result.anchor_offset, layers=list(result.layers), exgrad_mode=result.exgrad_mode
            ),
        )

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> None:
        """Write the calibrator as JSON."""
        Path(path).write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Calibrator:
        """Read a calibrator written by :meth:`save`.

        Raises:
            ConfigurationError: The file does not exist.
            CalibrationError: The file is not a calibrator or is malformed.
        """
        from .._files import read_config_text

        return cls.from_json(read_config_text(path, "calibrator"), source=str(path))

    @classmethod
    def from_json(cls, text: str, *, source: str = "<string>") -> Calibrator:
        """Parse a calibrator from JSON text."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise CalibrationError(f"calibrator {source} is not valid JSON: {e}") from e
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise CalibrationError(f"{source} is not a semgrad-guard calibrator (no 'format': {FORMAT!r})")
        version = raw.get("version", FORMAT_VERSION)
        if not isinstance(version, int) or isinstance(version, bool):
            raise CalibrationError(f"calibrator {source} has a 'version' that is not an integer")
        if version > FORMAT_VERSION:
            raise CalibrationError(
                f"calibrator {source} has format version {version}; this build reads <= {FORMAT_VERSION}"
            )
        try:
            cal = cls.model_validate(raw)
        except ValidationError as e:
            # Not str(e): pydantic quotes the input values.
            raise CalibrationError(
                f"calibrator {source} is malformed: {format_validation_error(e)}"
            ) from None
        _check_params(cal, source)
        return cal

    @classmethod
    def default_for(cls, model_id: str) -> Calibrator:
        """The calibrator shipped with the package for ``model_id``.

        Shipped: ``HuggingFaceTB/SmolLM2-135M-Instruct`` (the embedded default model), fitted on
        the SciQ development set (see docs/policies.md).

        Raises:
            ConfigurationError: No calibrator is shipped for this model.
        """
        found = shipped_calibrators()
        for cal in found:
            if cal.model_id is not None and cal.model_id.lower() == model_id.lower():
                return cal
        known = sorted(c.model_id for c in found if c.model_id)
        raise ConfigurationError(
            f"no calibrator is shipped for model {model_id!r} (shipped: {known}); fit one on your labelled answers "
            "with `semgrad-guard calibrate --model <your model> --data labelled.jsonl --out calibrator.json` "
            "(or Calibrator.fit) and load it with Calibrator.load('calibrator.json'), or start with "
            "GuardPolicy.first_day() (serve and audit) and 'semgrad-guard calibrate --from-reviews DB --base none'"
        )


def shipped_calibrators() -> list[Calibrator]:
    """Every calibrator shipped in ``semgrad_guard/calibrators/``."""
    out = []
    folder = resources.files("semgrad_guard") / "calibrators"
    if not folder.is_dir():
        return []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            out.append(Calibrator.from_json(entry.read_text(), source=entry.name))
    return out


class DriftMonitor:
    """Is the calibrator seeing scores unlike those it was fitted on? (then its confidence means little)

    Keeps the last :data:`DRIFT_WINDOW` confidences and compares them with the reference quantiles
    stored in the calibrator by a two-sample Kolmogorov-Smirnov statistic. When the p-value falls
    below :data:`DRIFT_P` (with at least :data:`DRIFT_MIN` confidences seen) it logs one warning, and
    :attr:`drifted` stays readable as a metric (``statistic``, ``p_value``, ``n``). Thread-safe.

    Example:
        >>> mon = DriftMonitor(list(np.linspace(0.0, 0.4, 101)), n_reference=500)
        >>> mon.update(np.full(100, 0.9))
        >>> mon.drifted, round(mon.statistic, 2)
        (True, 1.0)
    """

    def __init__(self, reference: Sequence[float], n_reference: int, *, label: str = "calibrator") -> None:
        import threading

        self.reference = np.asarray(reference, dtype=float)
        self.n_reference = max(int(n_reference), len(self.reference))
        self.label = label
        self.statistic = 0.0
        self.p_value = 1.0
        self.n = 0
        self.drifted = False
        self.warned = False
        self.labels: Any = None
        """Optional ``() -> (review db path, label count)``: the Guard sets it, so the advice says how
        many labels the queue already holds."""
        self._window: list[float] = []
        self._lock = threading.Lock()

    def update(self, confidences: np.ndarray) -> None:
        from scipy.special import kolmogorov

        with self._lock:
            self._window.extend(float(c) for c in np.ravel(confidences))
            del self._window[:-DRIFT_WINDOW]
            self.n = len(self._window)
            if self.n < DRIFT_MIN:
                return
            w = np.sort(np.asarray(self._window))
            # Both CDFs are right-continuous steps: their largest gap is at one of their jump points.
            points = np.concatenate([w, self.reference])
            f_w = np.searchsorted(w, points, side="right") / self.n
            f_ref = np.searchsorted(self.reference, points, side="right") / len(self.reference)
            self.statistic = float(np.max(np.abs(f_w - f_ref)))
            n_eff = self.n * self.n_reference / (self.n + self.n_reference)
            self.p_value = float(kolmogorov(self.statistic * np.sqrt(n_eff)))
            self.drifted = self.p_value < DRIFT_P
            warn = self.drifted and not self.warned
            if warn:
                self.warned = True
        if warn:
            logger.warning(
                "%s: the last %d confidences are unlike those on its fitting data (KS %.2f, p=%.1e): its "
                "confidence may be off here. %s",
                self.label,
                self.n,
                self.statistic,
                self.p_value,
                self.advice,
            )

    @property
    def advice(self) -> str:
        """What fixes a drifted calibrator: the command, and how many labels the review queue holds."""
        db, count = "REVIEW_DB", None
        if self.labels is not None:
            try:
                db, count = self.labels()
            except Exception:  # advice must never break scoring
                logger.debug("drift advice: label count unavailable", exc_info=True)
        held = f"the queue holds {count} labels; " if count is not None else ""
        return (
            f"Recalibrate on review labels ({held}review answers, or add 'audit: {{rate: 0.05}}' to the policy): "
            f"semgrad-guard calibrate --from-reviews {db} --out calibrator.json, then reload it "
            "(POST /admin/calibrator or kill -HUP the service)"
        )


def cross_validated_confidence(
    results: Sequence[ScoreResult],
    correct: Sequence[bool],
    *,
    folds: int = 5,
    seed: int = 0,
    **fit_kwargs: Any,
) -> np.ndarray:
    """Out-of-fold confidences: each example calibrated by a calibrator fitted without its fold.

    What the calibrator would say on data it was not fitted on; feed it to
    :func:`expected_calibration_error` or :func:`reliability_table` for honest numbers.
    """
    results = list(results)
    y = np.asarray([bool(c) for c in correct])
    out = np.zeros(len(results))
    for train, test in _stratified_folds(y.astype(float), folds, seed):
        cal = Calibrator.fit([results[i] for i in train], y[train], seed=seed, **fit_kwargs)
        out[test] = cal.predict([results[i] for i in test], check=False)
    return out


def reliability_table(
    confidence: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray, bins: int = 10
) -> list[dict[str, float]]:
    """Per confidence bin: its range, how many answers, their mean confidence and their accuracy."""
    c = np.asarray(confidence, dtype=float)
    y = np.asarray(correct, dtype=float)
    idx = np.minimum((c * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        mask = idx == b
        if mask.any():
            rows.append(
                {
                    "low": b / bins,
                    "high": (b + 1) / bins,
                    "n": int(mask.sum()),
                    "confidence": float(c[mask].mean()),
                    "accuracy": float(y[mask].mean()),
                }
            )
    return rows


def expected_calibration_error(
    confidence: Sequence[float] | np.ndarray,
    correct: Sequence[bool] | np.ndarray,
    bins: int = 10,
    *,
    weights: Sequence[float] | np.ndarray | None = None,
) -> float:
    """Expected calibration error: the |accuracy - mean confidence| gap over equal-width bins, weighted by bin size.

    ``weights`` (e.g. inverse inclusion probabilities) weight each answer in the bins' means and sizes.
    """
    c = np.asarray(confidence, dtype=float)
    y = np.asarray(correct, dtype=float)
    if len(c) != len(y) or len(c) == 0:
        raise ValueError("confidence and correct must be non-empty and of equal length")
    w = np.ones(len(c)) if weights is None else np.asarray(weights, dtype=float)
    idx = np.minimum((c * bins).astype(int), bins - 1)
    ece = 0.0
    total = float(w.sum())
    for b in range(bins):
        mask = idx == b
        if mask.any():
            wb = w[mask]
            gap = abs(np.average(y[mask], weights=wb) - np.average(c[mask], weights=wb))
            ece += float(wb.sum()) / total * gap
    return float(ece)


# ---------------------------------------------------------------------- internals
def _key(method: str, feats: Sequence[str]) -> str:
    return f"{method}:{'+'.join(feats)}"


def _matrix(results: Sequence[ScoreResult], feats: Sequence[str]) -> np.ndarray:
    return np.asarray([[float(getattr(r, f)) for f in feats] for r in results], dtype=float).reshape(
        len(results), len(feats)
    )


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)), clipped so no overflow warns."""
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -500, 500))))


def _log_features(x: np.ndarray) -> np.ndarray:
    # Scores are positive and heavy-tailed (gradients span orders of magnitude): log makes them linear-ish.
    return np.asarray(np.log(np.maximum(x, 0.0) + _EPS))


def _linear(p: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    z: np.ndarray = (_log_features(x) - np.asarray(p["mean"])) / np.asarray(p["scale"])
    return np.asarray(z @ np.asarray(p["coef"], dtype=float) + float(p["intercept"]))


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), with p clipped to [1e-4, 1 - 1e-4] (an isotonic map's 0 and 1 stay finite)."""
    q = np.clip(np.asarray(p, dtype=float), 1e-4, 1.0 - 1e-4)
    return np.asarray(np.log(q / (1.0 - q)))


def recalibrated(p: np.ndarray, recal: Mapping[str, Any]) -> np.ndarray:
    """sigmoid(m(logit(p))): a calibrator's output moved to another deployment (``m``:
    :func:`logit_map` of ``recal``)."""
    return sigmoid(logit_map(logit(p), recal))


def logit_map(z: np.ndarray, recal: Mapping[str, Any]) -> np.ndarray:
    """A recalibration's map of logits ``z`` (see :attr:`Calibrator.recalibration`)."""
    knots, slopes, intercept = map_pieces(recal)
    z = np.asarray(z, dtype=float)
    edges = np.r_[-np.inf, knots, np.inf]
    lo, hi = edges[:-1], edges[1:]
    # Each piece adds its slope times the stretch of [0, z] inside it (signed: z may be below 0).
    stretch = np.clip(z[..., None], lo, hi) - np.clip(0.0, lo, hi)
    return np.asarray(intercept + stretch @ slopes)


def map_pieces(recal: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, float]:
    """(knots, slopes, intercept) of either form of a recalibration map (slope and intercept: no
    knots, one slope); ValueError naming what is wrong if it is malformed."""
    keys = set(recal)
    if keys <= {"slope", "intercept"}:
        knots, slopes = np.zeros(0), np.asarray([recal.get("slope", 1.0)], dtype=float)
    elif keys == {"intercept", "knots", "slopes"}:
        try:
            knots = np.asarray(recal["knots"], dtype=float)
            slopes = np.asarray(recal["slopes"], dtype=float)
        except (TypeError, ValueError):
            raise ValueError("recalibration 'knots' and 'slopes' must be lists of numbers") from None
        if knots.ndim != 1 or slopes.shape != (len(knots) + 1,):
            raise ValueError(
                f"recalibration has {knots.size} knots and {slopes.size} slopes; a piecewise map needs "
                "one slope more than knots (below the first, between each pair, above the last)"
            )
        if np.any(np.diff(knots) <= 0):
            raise ValueError("recalibration knots must be strictly increasing")
    else:
        raise ValueError(
            f"recalibration has keys {sorted(keys)}; expected slope and intercept, or intercept, knots and slopes"
        )
    try:
        intercept = float(recal.get("intercept", 0.0))
    except (TypeError, ValueError):
        raise ValueError("recalibration 'intercept' must be a number") from None
    if not (np.all(np.isfinite(knots)) and np.all(np.isfinite(slopes)) and math.isfinite(intercept)):
        raise ValueError("recalibration numbers must be finite")
    return knots, slopes, intercept


def _fit_linear(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    lx = _log_features(x)
    mean = lx.mean(axis=0)
    scale = lx.std(axis=0)
    scale[scale < 1e-12] = 1.0
    model = LogisticRegression(C=1.0, max_iter=1000)
    model.fit((lx - mean) / scale, y.astype(int), sample_weight=w)
    return {
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "coef": model.coef_[0].tolist(),
        "intercept": float(model.intercept_[0]),
    }


def _fit_params(method: Method, x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> dict[str, Any]:
    if method == "platt":
        return _fit_linear(x, y, w)
    from sklearn.isotonic import IsotonicRegression

    params: dict[str, Any] = {}
    if x.shape[1] == 1:
        z = x[:, 0]
        increasing = False  # a higher score means more uncertain, so less likely correct
    else:
        params["linear"] = _fit_linear(x, y, w)
        z = _linear(params["linear"], x)
        increasing = True
    iso = IsotonicRegression(increasing=increasing, out_of_bounds="clip", y_min=0.0, y_max=1.0)
    iso.fit(z, y, sample_weight=w)
    params["x"] = [float(v) for v in iso.X_thresholds_]
    params["y"] = [float(v) for v in iso.y_thresholds_]
    return params


def _predict_params(method: str, p: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    if method == "platt":
        out = sigmoid(_linear(p, x))
    else:
        z = x[:, 0] if "linear" not in p else _linear(p["linear"], x)
        out = np.interp(z, np.asarray(p["x"], dtype=float), np.asarray(p["y"], dtype=float))
    return np.asarray(np.clip(out, 0.0, 1.0))


def _stratified_folds(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold

    k = max(2, min(folds, int(y.sum()), int(len(y) - y.sum())))
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in skf.split(np.zeros(len(y)), y.astype(int))]


def _cv_brier(
    method: Method,
    x: np.ndarray,
    y: np.ndarray,
    splits: list[tuple[np.ndarray, np.ndarray]],
    w: np.ndarray | None = None,
) -> float:
    w = np.ones(len(y)) if w is None else w
    losses = []
    for tr, te in splits:
        if y[tr].min() == y[tr].max():
            continue
        pred = _predict_params(method, _fit_params(method, x[tr], y[tr], w[tr]), x[te])
        losses.append(float(np.average((pred - y[te]) ** 2, weights=w[te])))
    return float(np.mean(losses)) if losses else math.inf


def _cv_auroc_loss(
    method: Method,
    x: np.ndarray,
    y: np.ndarray,
    splits: list[tuple[np.ndarray, np.ndarray]],
    w: np.ndarray | None = None,
) -> float:
    """1 - mean held-out AUROC of the confidence for telling right from wrong answers."""
    from sklearn.metrics import roc_auc_score

    w = np.ones(len(y)) if w is None else w
    values = []
    for tr, te in splits:
        if y[tr].min() == y[tr].max() or y[te].min() == y[te].max():
            continue
        pred = _predict_params(method, _fit_params(method, x[tr], y[tr], w[tr]), x[te])
        values.append(float(roc_auc_score(y[te], pred, sample_weight=w[te])))
    return 1.0 - float(np.mean(values)) if values else math.inf


def _common_model_id(results: Sequence[ScoreResult]) -> str | None:
    ids = {r.model_id for r in results}
    return ids.pop() if len(ids) == 1 else None


def _as_profile(profile: ModelProfile | CalibrationProfile | Mapping[str, Any]) -> CalibrationProfile:
    if isinstance(profile, CalibrationProfile):
        return profile
    if isinstance(profile, ModelProfile):
        return CalibrationProfile(
            anchor_offset=profile.anchor_offset,
            layers=list(profile.layers),
            chat_template_hash=profile.chat_template_hash,
            exgrad_mode=profile.exgrad_mode,
        )
    try:
        return CalibrationProfile.model_validate(
            {
                k: profile[k]
                for k in ("anchor_offset", "layers", "chat_template_hash", "exgrad_mode")
                if k in profile
            }
        )
    except ValidationError as e:
        raise ConfigurationError(f"profile: {e}") from e


def _profile_of(
    profile: ModelProfile | CalibrationProfile | Mapping[str, Any] | None, results: Sequence[ScoreResult]
) -> CalibrationProfile | None:
    if profile is not None:
        return _as_profile(profile)
    keys = {(r.anchor_offset, tuple(r.layers), r.exgrad_mode) for r in results}
    if len(keys) != 1:
        return None
    anchor, layers, mode = keys.pop()
    return CalibrationProfile(anchor_offset=anchor, layers=list(layers), exgrad_mode=mode)


def _check_params(cal: Calibrator, source: str) -> None:
    p = cal.params
    try:
        if cal.method == "platt":
            _check_linear(p, len(cal.features))
        else:
            if len(cal.features) > 1:
                _check_linear(p["linear"], len(cal.features))
            xs, ys = np.asarray(p["x"], dtype=float), np.asarray(p["y"], dtype=float)
            if xs.ndim != 1 or xs.shape != ys.shape or len(xs) == 0 or np.any(np.diff(xs) < 0):
                raise ValueError("isotonic x/y must be equal-length, non-empty, x sorted")
    except (KeyError, TypeError, ValueError) as e:
        raise CalibrationError(f"calibrator {source} has malformed params: {e}") from e


def _check_linear(p: Mapping[str, Any], k: int) -> None:
    for name in ("mean", "scale", "coef"):
        if len(p[name]) != k:
            raise ValueError(f"{name} must have {k} entries")
    float(p["intercept"])
