"""Recalibration from review labels: move a calibrator to the base rate of the data it is deployed on.

Calibration does not travel across base rates (a calibrator fitted on one data set is off by
0.1-0.3 ECE on another), but the ranking does. So with few labels only the intercept on the logit
of the current confidence is refitted; with more, slope and intercept; with many, a monotone
piecewise-linear map of that logit (a reliability curve that rises steeply and then levels off is
no logistic curve) and the full recipe (:meth:`Calibrator.fit`). Which one is kept is chosen by
weighted out-of-fold log-loss among those the label count allows (the current calibrator unchanged
is reported next to them). Labels are
weighted by their inverse inclusion probability (review-band labels 1, audit labels 1 / rate), so
the fit stands for every answer served, not only the doubtful middle.

The result is a :class:`Calibrator` whose ``recalibration`` holds the new map of the logit (or a
fresh fit) and whose ``provenance`` says what it was fitted on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..errors import CalibrationError, CalibratorMismatchError
from .calibration import (
    Calibrator,
    expected_calibration_error,
    logit,
    logit_map,
    map_pieces,
    recalibrated,
    reliability_table,
    sigmoid,
)
from .risk import ThresholdSelection, select_threshold

MIN_LABELS = 10
"""Fewest labels ``recalibrate`` accepts by default (and at least 2 right and 2 wrong)."""
SLOPE_FROM = 30
"""Labels from which slope and intercept are also tried."""
MONOTONE_FROM = 100
"""Distinct answers among the labels from which the monotone piecewise map is also tried."""
FULL_FROM = 100
"""Labels from which the full recipe (method and features chosen anew) is also tried."""
_RIDGE = 1.0  # pull towards the current calibrator (slope 1, intercept 0): a prior worth about one label
_PIECES = 5  # of the monotone map, split at quantiles of the labelled answers' logits
_ROUGHNESS = 0.3  # penalty on neighbouring pieces' slopes differing (in labels); infinite: slope+intercept


@dataclass
class Recalibration:
    """What :func:`recalibrate` fitted and how it did, out of fold, on the labels."""

    calibrator: Calibrator
    """The calibrator to deploy."""
    chosen: str
    """'intercept', 'slope+intercept', 'monotone' or 'full'."""
    cv_log_loss: dict[str, float]
    """Weighted out-of-fold log-loss of each candidate tried."""
    ece_before: float | None
    """Weighted ECE of the current calibrator on the labels (it was not fitted on them); None without one."""
    ece_after: float
    """Weighted out-of-fold ECE of the chosen candidate."""
    n_labels: int
    n_audit: int
    accuracy: float
    """Weighted share of right answers among the labels."""
    oof: np.ndarray
    """Out-of-fold confidences of the chosen candidate."""
    correct: np.ndarray
    weights: np.ndarray
    thresholds: list[ThresholdSelection] = field(default_factory=list)
    """``select_threshold`` on the out-of-fold confidences and weighted labels, one per alpha (on
    distinct answers: copies of one answer count once, with their summed weight)."""

    def reliability(self) -> list[dict[str, float]]:
        """Reliability table of the out-of-fold confidences."""
        return reliability_table(self.oof, self.correct)


def recalibrate(
    base: Calibrator | None,
    labels: Sequence[Any],
    *,
    min_labels: int = MIN_LABELS,
    folds: int = 5,
    seed: int = 0,
    alphas: Sequence[float] = (0.1, 0.2, 0.3),
    delta: float = 0.1,
    source: str | None = None,
    full_from: int = FULL_FROM,
) -> Recalibration:
    """Refit ``base`` on review labels (:class:`~semgrad_guard.review.labels.LabelledExample`).

    ``base=None`` (a model without a calibrator, its first day): the full recipe on the labels alone.
    The full recipe is tried from ``full_from`` labels (its cross-validation is the slow part).

    Raises:
        CalibrationError: Fewer than ``min_labels`` labels, or fewer than 2 right or 2 wrong.
        CalibratorMismatchError: A label was scored by another model, profile or exgrad mode.
    """
    labels = list(labels)
    y = np.asarray([bool(lab.correct) for lab in labels], dtype=float)
    n_pos = int(y.sum())
    need = max(int(min_labels), 4)
    if len(labels) < need or n_pos < 2 or len(labels) - n_pos < 2:
        raise CalibrationError(
            f"too few review labels to recalibrate: {len(labels)} ({n_pos} right, {len(labels) - n_pos} wrong); "
            f"need at least {need} with 2 right and 2 wrong. Review more items (semgrad-guard review list) "
            "or turn on audit sampling (policy 'audit: {rate: 0.05}')"
        )
    results = [lab.result for lab in labels]
    models = sorted({str(r.model_id) for r in results})
    if len(models) > 1:
        raise CalibratorMismatchError(
            f"the review labels come from several models ({models}); recalibrate one model's labels at a time"
        )
    modes = sorted({r.exgrad_mode for r in results})
    if len(modes) > 1:
        raise CalibratorMismatchError(
            f"the review labels were scored with several exgrad modes ({modes}); recalibrate one mode at a time"
        )
    for lab in labels:
        if base is None:
            break
        try:
            base.check_result(lab.result)
        except CalibratorMismatchError as e:
            raise CalibratorMismatchError(f"review item {lab.item_id}: {e}") from e
    w = np.asarray([float(lab.weight) for lab in labels])
    groups = _answer_groups(results)
    splits = _folds(y, folds, seed, groups=groups)
    tried: dict[str, np.ndarray] = {}
    p_base = z = None
    if base is not None:
        p_base = base.predict(results, check=False)
        z = logit(p_base)
        tried["unchanged"] = p_base
        tried["intercept"] = _oof(z, y, w, splits, "intercept")
        if len(labels) >= SLOPE_FROM:
            tried["slope+intercept"] = _oof(z, y, w, splits, "slope+intercept")
        if len(set(groups)) >= MONOTONE_FROM:
            tried["monotone"] = _oof(z, y, w, splits, "monotone")
    if base is None or len(labels) >= full_from:
        oof = np.zeros(len(y))
        for tr, te in splits:
            try:
                cal = Calibrator.fit(
                    [results[i] for i in tr], list(y[tr] > 0), weights=list(w[tr]), seed=seed
                )
                oof[te] = cal.predict([results[i] for i in te], check=False)
            except CalibrationError:  # a fold too small to fit: it predicts its training base rate
                oof[te] = np.average(y[tr], weights=w[tr])
        tried["full"] = oof
    losses = {k: _log_loss(p, y, w) for k, p in tried.items()}
    # 'unchanged' is reported, not chosen: with few labels its out-of-fold edge is noise, and the
    # base rate moving between data sets is the failure this exists to fix.
    chosen = min((k for k in losses if k != "unchanged"), key=lambda k: losses[k])

    if chosen == "full":
        out = Calibrator.fit(results, list(y > 0), weights=list(w), seed=seed)
    else:
        assert base is not None and z is not None
        # Composed with the base's own recalibration, so a refit of a refit stays one step.
        params = compose(base.recalibration or {"slope": 1.0, "intercept": 0.0}, _fit_map(z, y, w, chosen))
        out = base.model_copy(update={"recalibration": params})
    dates = sorted(d for d in (lab.decided_at or lab.created_at for lab in labels) if d)
    n_audit = sum(1 for lab in labels if lab.kind == "audit")
    provenance = {
        "fitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "labels": len(labels),
        "right": n_pos,
        "audit_labels": n_audit,
        "weights": "inverse inclusion probability"
        + (f" (sum {w.sum():.1f}, max {w.max():.1f})" if n_audit else " (all 1: no audit items)"),
        "decided_from": dates[0] if dates else None,
        "decided_to": dates[-1] if dates else None,
        "base": base.fingerprint if base is not None else None,
        "base_data": base.data if base is not None else None,
        "step": chosen,
        "cv_log_loss": {k: round(v, 5) for k, v in losses.items()},
        "source": source,
    }
    out = out.model_copy(
        update={
            "provenance": provenance,
            "data": f"review labels: {len(labels)} ({n_audit} audit){f' from {source}' if source else ''}",
            "created": provenance["fitted"],
            "n_samples": len(labels),
            "n_correct": n_pos,
        }
    )
    # The drift monitor's reference: what it says on the deployment's own (weighted) labels.
    own = Calibrator.model_validate(out.model_dump()).predict(results, check=False)  # a throwaway monitor
    out = out.model_copy(
        update={
            "reference": _weighted_quantiles(own, w),
            "n_reference": int(round(w.sum() ** 2 / (w**2).sum())),
        }
    )
    out = Calibrator.model_validate(out.model_dump())  # fresh private state: fingerprint, drift monitor
    oof = tried[chosen]
    # Certified on distinct answers: copies of one answer are one piece of evidence about the next
    # answer, however often traffic repeated it (each keeps its copies' summed weight).
    key = groups * 2 + (y > 0)  # a reviewer who labelled two copies differently: both kept
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    w_answer = np.bincount(inverse, weights=w)
    thresholds = [
        select_threshold(
            oof[first], y[first].astype(bool), alpha=a_, delta=delta, strict=False, weights=w_answer
        )
        for a_ in alphas
    ]
    return Recalibration(
        calibrator=out,
        chosen=chosen,
        cv_log_loss=losses,
        ece_before=None if p_base is None else expected_calibration_error(p_base, y, weights=w),
        ece_after=expected_calibration_error(oof, y, weights=w),
        n_labels=len(labels),
        n_audit=n_audit,
        accuracy=float(np.average(y, weights=w)),
        oof=oof,
        correct=y.astype(bool),
        weights=w,
        thresholds=thresholds,
    )


def _answer_groups(results: Sequence[Any]) -> np.ndarray:
    """One group per distinct scored answer: traffic repeats questions and greedy decoding repeats
    answers, and the queue then holds copies of one answer with identical scores."""
    keys: dict[tuple[Any, ...], int] = {}
    out = np.zeros(len(results), dtype=int)
    for i, r in enumerate(results):
        key = (*r.scores().values(), r.answer_tokens, r.prompt_tokens)
        out[i] = keys.setdefault(key, len(keys))
    return out


def _folds(
    y: np.ndarray, folds: int, seed: int, groups: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds that keep each group (copies of one answer) in one fold: a copy on both
    sides would let the cross-validation reward memorising answers (the full recipe's isotonic
    steps), not calibration."""
    from sklearn.model_selection import StratifiedGroupKFold

    g = np.arange(len(y)) if groups is None else np.asarray(groups)
    distinct = [len(set(g[y == cls])) for cls in (0.0, 1.0)]
    k = max(2, min(folds, *distinct))
    skf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in skf.split(np.zeros(len(y)), y.astype(int), g) if len(te)]


def _oof(
    z: np.ndarray, y: np.ndarray, w: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]], step: str
) -> np.ndarray:
    out = np.zeros(len(y))
    for tr, te in splits:
        out[te] = sigmoid(logit_map(z[te], _fit_map(z[tr], y[tr], w[tr], step)))
    return out


def _fit_map(z: np.ndarray, y: np.ndarray, w: np.ndarray, step: str) -> dict[str, Any]:
    """The recalibration map of the current logit ``z`` that ``step`` fits."""
    if step == "monotone":
        return _fit_monotone(z, y, w)
    a, b = _fit_logit(z, y, w, slope=step == "slope+intercept")
    return {"slope": a, "intercept": b}


def _fit_monotone(
    z: np.ndarray, y: np.ndarray, w: np.ndarray, *, roughness: float = _ROUGHNESS
) -> dict[str, Any]:
    """Weighted logistic regression of y on a continuous piecewise-linear map of z with
    non-negative slopes (so it keeps the ranking), knots at weighted quantiles of z.

    Penalised towards the identity as :func:`_fit_logit` is (its value at the median z and its slopes,
    together worth one label) and by ``roughness`` on neighbouring slopes differing: a large
    ``roughness`` leaves one slope, the slope+intercept map.
    """
    from scipy.optimize import minimize

    w = w / w.mean()
    # Weighted quantiles: each piece holds an equal share of the traffic the labels stand for, so the
    # confident answers (few labels, all audits) get a piece of their own, not the band's slope.
    knots = np.unique(_weighted_quantiles(z, w, np.linspace(0.0, 1.0, _PIECES + 1)[1:-1]))
    pieces = len(knots) + 1  # fewer where quantiles coincide
    centre = float(np.median(z))
    edges = np.r_[-np.inf, knots, np.inf]
    # Each piece's stretch of [centre, z]: the map is its value at the centre plus slopes times these.
    x = np.clip(z[:, None], edges[:-1], edges[1:]) - np.clip(centre, edges[:-1], edges[1:])

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, slopes = theta[0], theta[1:]
        t = value + x @ slopes
        r = w * (sigmoid(t) - y)
        d = np.diff(slopes)
        f = np.sum(w * (np.logaddexp(0.0, t) - y * t))
        f += 0.5 * _RIDGE * ((value - centre) ** 2 + np.sum((slopes - 1.0) ** 2) / pieces)
        f += 0.5 * roughness * np.sum(d**2)
        grad_s = x.T @ r + _RIDGE * (slopes - 1.0) / pieces
        grad_s[:-1] -= roughness * d
        grad_s[1:] += roughness * d
        return float(f), np.r_[np.sum(r) + _RIDGE * (value - centre), grad_s]

    start = np.r_[centre, np.ones(pieces)]  # the identity
    theta = minimize(
        loss, start, jac=True, method="L-BFGS-B", bounds=[(None, None)] + [(0.0, None)] * pieces
    ).x
    fitted = {"intercept": 0.0, "knots": [float(k) for k in knots], "slopes": [float(s) for s in theta[1:]]}
    # Its value at 0 (the stored intercept) from its value at the centre.
    fitted["intercept"] = float(theta[0] - logit_map(np.asarray([centre]), fitted)[0])
    return fitted


def compose(prev: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """One map doing ``prev`` then ``new`` (both :attr:`Calibrator.recalibration` maps), rounded to 6
    decimals: piecewise linear again, with knots at ``prev``'s and where ``prev`` reaches ``new``'s."""
    k_prev, s_prev, b_prev = map_pieces(prev)
    k_new = map_pieces(new)[0]

    def both(u: np.ndarray) -> np.ndarray:
        return logit_map(logit_map(u, prev), new)

    # prev is linear on each of its pieces: through (knot, its value) or, with no knots, (0, b_prev).
    anchors = list(zip(k_prev, logit_map(k_prev, prev), strict=True)) or [(0.0, b_prev)]
    edges = np.r_[-np.inf, k_prev, np.inf]
    points = list(k_prev)
    for target in k_new:  # where prev reaches one of new's knots
        for i, slope in enumerate(s_prev):
            u0, v0 = anchors[max(i - 1, 0)]
            if slope != 0.0 and edges[i] <= (u := u0 + (target - v0) / slope) <= edges[i + 1]:
                points.append(float(u))
    knots = np.unique(np.round(points, 9))
    if len(knots) == 0:
        ends = both(np.asarray([0.0, 1.0]))
        return {"slope": round(float(ends[1] - ends[0]), 6), "intercept": round(float(ends[0]), 6)}
    at = np.r_[knots[0] - 1.0, knots, knots[-1] + 1.0]  # one step past each end: the outer slopes
    slopes = np.diff(both(at)) / np.diff(at)
    return {
        "intercept": round(float(both(np.zeros(1))[0]), 6),
        "knots": [round(float(k), 6) for k in knots],
        "slopes": [round(float(s), 6) for s in slopes],
    }


def _fit_logit(z: np.ndarray, y: np.ndarray, w: np.ndarray, *, slope: bool) -> tuple[float, float]:
    """Weighted logistic regression of y on the current logit z: intercept only (slope fixed at 1) or
    both, with a ridge towards (1, 0) (no blow-up when few labels separate).

    Newton steps, each halved until the penalised loss falls: a plain Newton step overshoots when
    the current logit carries no signal (the optimum slope near 0, z spread over +-6) and then
    diverges to slopes in the hundreds.
    """
    w = w / w.mean()  # the ridge's strength is in labels, whatever the weights' scale
    prior = np.array([1.0, 0.0])
    x = np.c_[z, np.ones_like(z)]

    def loss(theta: np.ndarray) -> float:
        t = x @ theta
        return float(np.sum(w * (np.logaddexp(0.0, t) - y * t)) + 0.5 * _RIDGE * np.sum((theta - prior) ** 2))

    theta, current = prior.copy(), loss(prior)
    for _ in range(100):
        p = sigmoid(theta[0] * z + theta[1])
        grad = x.T @ (w * (p - y)) + _RIDGE * (theta - prior)
        hess = (x * (w * p * (1.0 - p))[:, None]).T @ x + _RIDGE * np.eye(2)
        step = np.linalg.solve(hess, grad) if slope else np.array([0.0, grad[1] / hess[1, 1]])
        scale = 1.0
        while (new := loss(theta - scale * step)) > current and scale > 1e-8:
            scale /= 2
        theta, current = theta - scale * step, new
        if np.max(np.abs(scale * step)) < 1e-9:
            break
    return float(theta[0]), float(theta[1])


def _weighted_quantiles(values: np.ndarray, w: np.ndarray, at: np.ndarray | None = None) -> list[float]:
    """Quantiles of ``values`` under weights ``w`` (by default the 101 percentiles), rounded to 6 decimals."""
    order = np.argsort(values)
    cum = np.cumsum(w[order]) / w.sum()
    q = np.linspace(0, 1, 101) if at is None else at
    idx = np.searchsorted(cum, q, side="left").clip(0, len(values) - 1)
    return [round(float(values[order][i]), 6) for i in idx]


def _log_loss(p: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return float(np.average(-(y * np.log(q) + (1 - y) * np.log(1 - q)), weights=w))


__all__ = [
    "FULL_FROM",
    "MIN_LABELS",
    "MONOTONE_FROM",
    "SLOPE_FROM",
    "Recalibration",
    "compose",
    "recalibrate",
    "recalibrated",
]
