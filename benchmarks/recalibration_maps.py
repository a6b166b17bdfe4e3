"""Which recalibration map fits review labels best: an offline comparison behind docs/feedback.md.

The loop's labels are drawn as ``bench_feedback.py`` draws them, but routed by the base calibrator
alone (no refits in between), so each map is fitted once per order: the review band of the README
policy (confidence in [0.2, 0.35), weight 1) plus audit labels of the rest (rate ``--audit-rate``,
weight 1 / rate). Each order splits the held-out set (development and pool rows) in two halves, one
labelled, one judged, and back; the table gives the median ECE over orders on the judged answers.

Maps of the base confidence's logit z: ``intercept``, ``slope`` and ``monotone`` (the piecewise map;
the three ``recalibrate`` chooses among), a ``quadratic`` term (ridge towards the identity),
``isotonic`` steps, their ``stacked`` convex mixture (weights by out-of-fold log-loss), and ``slope``
on power-flattened weights (``w ** 0.5``).

Usage: python benchmarks/recalibration_maps.py [--labels 200] [--audit-rate 0.1] [--orders 12]
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_feedback import PROFILE  # noqa: E402
from benchmarks.devsets.devdata import DEVSETS, NAMES, load  # noqa: E402
from semgrad_guard import Calibrator  # noqa: E402
from semgrad_guard.guard.calibration import expected_calibration_error, logit, logit_map  # noqa: E402
from semgrad_guard.guard.recalibrate import _fit_map, _folds  # noqa: E402

Map = Callable[[np.ndarray], np.ndarray]
BAND = (0.2, 0.35)  # cookbook/policies/default.yaml's review band


def _shipped(step: str) -> Callable[[np.ndarray, np.ndarray, np.ndarray], Map]:
    def fit(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> Map:
        m = _fit_map(z, y, w, step)
        return lambda t: 1.0 / (1.0 + np.exp(-logit_map(t, m)))

    return fit


def _quadratic(z: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float = 1.0) -> Map:
    """Logistic regression on (1, z, z^2), ridge towards the identity (0, 1, 0)."""
    from scipy.optimize import minimize

    def design(t: np.ndarray) -> np.ndarray:
        return np.c_[np.ones_like(t), t, t * t]

    X, w = design(z), w / w.mean()
    prior = np.array([0.0, 1.0, 0.0])

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = X @ theta
        grad = X.T @ (w * (1 / (1 + np.exp(-t)) - y)) + ridge * (theta - prior)
        return float(
            np.sum(w * (np.logaddexp(0, t) - y * t)) + 0.5 * ridge * np.sum((theta - prior) ** 2)
        ), grad

    theta = minimize(loss, prior, jac=True, method="L-BFGS-B").x
    return lambda t: 1 / (1 + np.exp(-design(t) @ theta))


def _isotonic(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> Map:
    from sklearn.isotonic import IsotonicRegression

    return IsotonicRegression(out_of_bounds="clip", y_min=0.01, y_max=0.99).fit(z, y, sample_weight=w).predict


BASIC = {
    "intercept": _shipped("intercept"),
    "slope": _shipped("slope+intercept"),
    "monotone": _shipped("monotone"),
    "quadratic": _quadratic,
    "isotonic": _isotonic,
}


def _log_loss(p: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    q = np.clip(p, 1e-4, 1 - 1e-4)
    return float(np.average(-(y * np.log(q) + (1 - y) * np.log(1 - q)), weights=w))


def _stacked(z: np.ndarray, y: np.ndarray, w: np.ndarray, groups: np.ndarray) -> Map:
    from scipy.optimize import minimize
    from scipy.special import softmax

    oof = np.zeros((len(y), len(BASIC)))
    for tr, te in _folds(y, 5, 0, groups=groups):
        for j, fit in enumerate(BASIC.values()):
            oof[te, j] = fit(z[tr], y[tr], w[tr])(z[te])
    mix = softmax(minimize(lambda v: _log_loss(oof @ softmax(v), y, w), np.zeros(len(BASIC))).x)
    maps = [fit(z, y, w) for fit in BASIC.values()]
    return lambda t: np.c_[[m(t) for m in maps]].T @ mix


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=200)
    parser.add_argument("--audit-rate", type=float, default=0.1)
    parser.add_argument("--orders", type=int, default=12)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the drift monitor's warnings on every held-out set
    warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
    dev, pool = load(), load(folder=DEVSETS / "pool")
    profile = (PROFILE["anchor_offset"], PROFILE["layers"], PROFILE["exgrad_mode"])
    dev_res, pool_res = dev.results(*profile), pool.results(*profile)
    names = [*BASIC, "stacked", "slope, w^0.5"]
    print(f"median ECE on judged answers, {args.labels} labels, audit rate {args.audit_rate}")
    print(f"{'set':<11}" + "".join(f"{n:>13}" for n in names))
    for held in NAMES:
        tr = np.flatnonzero(dev.groups != held)
        base = Calibrator.fit([dev_res[i] for i in tr], list(dev.correct[tr]), groups=list(dev.groups[tr]))
        te, extra = np.flatnonzero(dev.groups == held), np.flatnonzero(pool.groups == held)
        results = [dev_res[i] for i in te] + [pool_res[i] for i in extra]
        y = np.concatenate([dev.correct[te], pool.correct[extra]]).astype(float)
        p = base.predict(results, check=False)
        z, band = logit(p), (p >= BAND[0]) & (p < BAND[1])
        eces: dict[str, list[float]] = {n: [] for n in names}
        for order in range(args.orders):
            rng = np.random.default_rng(order)
            perm = rng.permutation(len(y))
            halves = (perm[: len(y) // 2], perm[len(y) // 2 :])
            conf = {n: np.zeros(len(y)) for n in names}
            for stream, judged in (halves, halves[::-1]):
                idx, w = [], []
                while len(idx) < args.labels:
                    j = int(stream[rng.integers(len(stream))])
                    if band[j]:
                        weight = 1.0
                    elif rng.random() < args.audit_rate:
                        weight = 1.0 / args.audit_rate
                    else:  # accepted or abstained, not audited: no label
                        continue
                    idx.append(j)
                    w.append(weight)
                ix, wa = np.asarray(idx), np.asarray(w)
                maps = {n: fit(z[ix], y[ix], wa) for n, fit in BASIC.items()}
                maps["stacked"] = _stacked(z[ix], y[ix], wa, ix)
                maps["slope, w^0.5"] = _shipped("slope+intercept")(z[ix], y[ix], np.sqrt(wa))
                for n, m in maps.items():
                    conf[n][judged] = m(z[judged])
            for n in names:
                eces[n].append(expected_calibration_error(conf[n], y.astype(bool)))
        print(f"{held:<11}" + "".join(f"{np.median(eces[n]):>13.3f}" for n in names), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
