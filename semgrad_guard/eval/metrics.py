"""Error-detection metrics: AUROC, AUPRC, PRR, risk-coverage, with bootstrap intervals. No torch.

Convention: ``scores`` are uncertainty scores (higher = more likely wrong) and ``errors`` are
booleans (True = the answer is wrong). The positive class of AUROC/AUPRC is "wrong answer".
Ties in the scores are handled as the expectation over a random order of the tied examples, so a
constant score gives the chance level exactly (AUROC 0.5, PRR 0, AURC = the error rate).

A metric that is undefined for the labels (all answers right, or all wrong) raises
:class:`~semgrad_guard.errors.MetricError` instead of returning a number.

Example:
    >>> auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
    0.75
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import MetricError

Scores = Sequence[float] | np.ndarray
"""Uncertainty scores: a sequence of floats or a 1-D array."""
Labels = Sequence[bool] | np.ndarray
"""Error labels (True = wrong answer): a sequence of bools or a 1-D array."""

__all__ = [
    "Interval",
    "RiskCoverage",
    "aurc",
    "auprc",
    "auroc",
    "bootstrap",
    "prr",
    "risk_coverage",
    "roc_curve",
]


def _arrays(scores: Scores, errors: Labels, metric: str) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    e = np.asarray(errors, dtype=bool)
    if s.shape != e.shape or s.ndim != 1:
        raise MetricError(
            f"{metric}: scores and labels must be 1-D and of equal length, got {s.shape} and {e.shape}"
        )
    if s.size == 0:
        raise MetricError(f"{metric}: no examples")
    if not np.all(np.isfinite(s)):
        raise MetricError(f"{metric}: scores contain NaN or infinite values")
    return s, e


def _need_both_classes(e: np.ndarray, metric: str) -> None:
    n_err = int(e.sum())
    if n_err == 0 or n_err == e.size:
        which = "wrong" if n_err == e.size else "correct"
        raise MetricError(
            f"{metric} is undefined: all {e.size} answers are {which}; error detection needs both "
            "correct and wrong answers"
        )


def auroc(scores: Scores, errors: Labels) -> float:
    """Probability that a wrong answer scores higher than a right one (ties count one half)."""
    s, e = _arrays(scores, errors, "AUROC")
    _need_both_classes(e, "AUROC")
    from scipy.stats import rankdata

    ranks = rankdata(s)  # average ranks: ties count 1/2 (Mann-Whitney U)
    n_pos = int(e.sum())
    n_neg = e.size - n_pos
    u = ranks[e].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def roc_curve(scores: Scores, errors: Labels) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    s, e = _arrays(scores, errors, "ROC curve")
    _need_both_classes(e, "ROC curve")
    order = np.argsort(-s, kind="stable")
    s_sorted, e_sorted = s[order], e[order]
    last_of_group = np.r_[np.diff(s_sorted) != 0, True]
    tp = np.cumsum(e_sorted)[last_of_group]
    fp = np.cumsum(~e_sorted)[last_of_group]
    tpr = np.r_[0.0, tp / e.sum()]
    fpr = np.r_[0.0, fp / (~e).sum()]
    return fpr, tpr


def auprc(scores: Scores, errors: Labels) -> float:
    """Average precision for detecting wrong answers (step-wise, tied scores form one threshold).

    AP = sum over thresholds of (recall_k - recall_{k-1}) * precision_k, as scikit-learn's
    ``average_precision_score``. A random score gives about the error rate.
    """
    s, e = _arrays(scores, errors, "AUPRC")
    _need_both_classes(e, "AUPRC")
    order = np.argsort(-s, kind="stable")
    s_sorted, e_sorted = s[order], e[order]
    last_of_group = np.r_[np.diff(s_sorted) != 0, True]
    tp = np.cumsum(e_sorted)[last_of_group].astype(np.float64)
    kept = (np.flatnonzero(last_of_group) + 1).astype(np.float64)
    precision = tp / kept
    recall = tp / e.sum()
    recall_prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - recall_prev) * precision))


@dataclass(frozen=True)
class RiskCoverage:
    """Risk (error rate among the kept answers) when keeping the ``k`` most confident, k = 1..n."""

    coverage: np.ndarray
    risk: np.ndarray

    @property
    def area(self) -> float:
        """AURC: the mean of the risk over the n coverage levels (lower is better)."""
        return float(self.risk.mean())


def risk_coverage(scores: Scores, errors: Labels) -> RiskCoverage:
    """Risk-coverage curve, keeping answers from the lowest uncertainty up.

    Within a block of tied scores the expected number of errors grows linearly (random order), so
    the curve does not depend on how ties happen to be sorted.
    """
    s, e = _arrays(scores, errors, "risk-coverage")
    n = s.size
    order = np.argsort(s, kind="stable")
    s_sorted, e_sorted = s[order], e[order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, np.diff(s_sorted) != 0])
    sizes = np.diff(np.r_[starts, n])
    block_errors = np.add.reduceat(e_sorted, starts)
    before = np.r_[0.0, np.cumsum(block_errors)[:-1]]
    group = np.repeat(np.arange(starts.size), sizes)
    position_in_block = np.arange(n) - starts[group] + 1
    expected_errors = before[group] + (block_errors / sizes)[group] * position_in_block
    k = np.arange(1, n + 1, dtype=np.float64)
    return RiskCoverage(coverage=k / n, risk=expected_errors / k)


def aurc(scores: Scores, errors: Labels) -> float:
    """Area under the risk-coverage curve (lower is better)."""
    return risk_coverage(scores, errors).area


def prr(scores: Scores, errors: Labels) -> float:
    """Prediction rejection ratio: (AURC_random - AURC) / (AURC_random - AURC_oracle).

    1 = the oracle order, 0 = random order (AURC_random is the error rate), negative = worse than
    random. Undefined (MetricError) when all answers are right or all wrong.
    """
    s, e = _arrays(scores, errors, "PRR")
    _need_both_classes(e, "PRR")
    random_area = float(e.mean())
    oracle_area = aurc(e.astype(np.float64), e)
    return float((random_area - aurc(s, e)) / (random_area - oracle_area))


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval."""

    value: float
    low: float
    high: float
    resamples: int

    def as_dict(self) -> dict[str, float | int]:
        return {"value": self.value, "low": self.low, "high": self.high, "resamples": self.resamples}


def bootstrap(
    metric: Callable[[Scores, Labels], float],
    scores: Scores,
    errors: Labels,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """``metric`` with a percentile bootstrap interval over examples (resampled with replacement).

    Resamples in which the metric is undefined (a single class drawn) are skipped; ``resamples``
    says how many counted. The point value is the metric on all examples (which must be defined).
    """
    if not 0 < confidence < 1:
        raise MetricError(f"confidence must be in (0, 1), got {confidence}")
    s, e = _arrays(scores, errors, "bootstrap")
    value = metric(s, e)
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_resamples):
        idx = rng.integers(0, s.size, s.size)
        try:
            stats.append(metric(s[idx], e[idx]))
        except MetricError:
            continue
    if not stats:
        raise MetricError("bootstrap: the metric was undefined on every resample")
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return Interval(value=float(value), low=float(low), high=float(high), resamples=len(stats))
