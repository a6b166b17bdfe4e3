"""Risk control: pick the acceptance threshold with a finite-sample guarantee on the selective error.

Given calibration data (confidence, correct) and a target error rate ``alpha`` among accepted
answers, :func:`select_threshold` returns the lowest confidence threshold ``t`` such that, with
probability at least ``1 - delta`` over the draw of the calibration set,

    P(answer wrong | confidence >= t) <= alpha.

Method: Learn then Test (Angelopoulos, Bates, Candes, Jordan, Lei, 2021) with fixed-sequence
testing. Each candidate threshold ``t`` (the distinct calibration confidences) is a null
hypothesis ``H_t: selective error(t) > alpha``. Given the number ``n`` of calibration answers
with confidence >= t, their errors are Binomial(n, selective error(t)), so the exact binomial
(Clopper-Pearson) p-value ``P(Binom(n, alpha) <= k)`` for ``k`` observed errors is valid.
Hypotheses are tested by fixed-sequence testing from confident thresholds towards lower ones,
stopping at the first one not rejected. A single sequence starting at the very top has no
power (a handful of accepted answers can never certify alpha, and one early failure ends it),
so the sequence is started at S points, the thresholds accepting n0, 2 n0, 4 n0, ... answers,
each sequence at level ``delta / S`` (Bonferroni across sequences; LTT's "fixed sequence with
multiple starts"). The start points depend on the number of calibration answers only, never on
the labels, so the family-wise error stays <= delta. The lowest threshold rejected by any
sequence is returned. See docs/policies.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from ..errors import ConfigurationError, RiskControlError


class ThresholdSelection(BaseModel):
    """The threshold chosen by :func:`select_threshold` and what it achieves on the calibration data.

    Example:
        >>> sel = select_threshold([0.9] * 60 + [0.2] * 40, [True] * 60 + [False] * 40, alpha=0.1, delta=0.1)
        >>> sel.threshold, sel.n_accepted, round(sel.coverage, 2)
        (0.9, 60, 0.6)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    feasible: bool
    """False when no threshold meets alpha at 1 - delta (only returned with ``strict=False``)."""
    threshold: float | None
    """Accept answers with confidence >= threshold; None when infeasible (accept nothing)."""
    alpha: float
    """Target selective error rate."""
    delta: float
    """Allowed probability that the guarantee fails."""
    coverage: float
    """Fraction of calibration answers accepted at this threshold."""
    n_accepted: int
    """Number of calibration answers accepted."""
    n_errors: int
    """Errors among them."""
    empirical_error: float
    """n_errors / n_accepted (0 when none accepted)."""
    bound: float
    """Clopper-Pearson upper bound on the selective error at the threshold, at the level it was tested
    (1 - delta / S with S starts); if infeasible, the lowest (1 - delta) bound over all thresholds."""
    n_calibration: int
    """Size of the calibration set."""


def clopper_pearson_upper(errors: int, n: int, delta: float) -> float:
    """One-sided exact upper (1 - delta) confidence bound on a binomial proportion."""
    from scipy.stats import beta

    if n <= 0:
        return 1.0
    if errors >= n:
        return 1.0
    return float(beta.ppf(1.0 - delta, errors + 1, n - errors))


def min_accepted_for(alpha: float, delta: float) -> int:
    """Fewest accepted answers for which zero errors can certify alpha: (1 - alpha)^n <= delta."""
    return max(1, math.ceil(math.log(delta) / math.log1p(-alpha)))


def _start_grid(n: int, alpha: float, delta: float) -> tuple[int, float, int]:
    """Number of starting points S, their level delta / S, and the first start (fewest accepted answers).

    Starts are at n0, 2 n0, 4 n0, ... accepted answers (n0 the fewest that can certify alpha at
    level delta / S), so S = floor(log2(n / n0)) + 1, found as the smallest consistent S.
    """
    for s in range(1, 64):
        n0 = min_accepted_for(alpha, delta / s)
        count = int(math.floor(math.log2(n / n0))) + 1 if n >= n0 else 1
        if count <= s:
            return s, delta / s, n0
    return 64, delta / 64, min_accepted_for(alpha, delta / 64)


def select_threshold(
    confidences: Sequence[float] | np.ndarray,
    correct: Sequence[bool] | np.ndarray,
    alpha: float,
    delta: float = 0.1,
    *,
    min_accepted: int | None = None,
    strict: bool = True,
    weights: Sequence[float] | np.ndarray | None = None,
) -> ThresholdSelection:
    """Lowest confidence threshold whose selective error is <= alpha with probability >= 1 - delta.

    Args:
        confidences: Calibrated confidences of the calibration answers (held out from the
            calibrator's own training data, or the guarantee is optimistic).
        correct: Whether each calibration answer was correct.
        alpha: Target error rate among accepted answers, in (0, 1).
        delta: Allowed failure probability of the guarantee, in (0, 1).
        min_accepted: Use one fixed sequence at level delta, starting at the threshold that accepts
            this many answers (default: multiple starts, see the module docstring).
        strict: Raise :class:`RiskControlError` when alpha cannot be supported (default);
            with ``False``, return a selection with ``feasible=False`` and ``threshold=None``.
        weights: Per-answer weights (inverse inclusion probabilities of sampled review labels). The
            test then runs on Kish effective counts: n_eff = (sum w)^2 / sum w^2 accepted answers and
            n_eff times the weighted error rate errors (an approximation; exact when all are equal).

    Raises:
        ConfigurationError: alpha or delta out of range, lengths differ, or no data.
        RiskControlError: No threshold can be certified (``strict=True``).
    """
    if not 0.0 < alpha < 1.0:
        raise ConfigurationError(f"alpha must be in (0, 1), got {alpha}")
    if not 0.0 < delta < 1.0:
        raise ConfigurationError(f"delta must be in (0, 1), got {delta}")
    c = np.asarray(confidences, dtype=float).ravel()
    y = np.asarray(correct, dtype=bool).ravel()
    if len(c) != len(y):
        raise ConfigurationError(f"confidences ({len(c)}) and correct ({len(y)}) differ in length")
    if len(c) == 0:
        raise ConfigurationError("select_threshold needs at least one calibration example")
    if not np.all(np.isfinite(c)):
        raise ConfigurationError("confidences contain NaN or infinite values")
    from scipy.stats import binom

    n_total = len(c)
    if min_accepted is not None:
        n_starts, level = 1, delta
        n_min = max(1, int(min_accepted))
    else:
        n_starts, level, n_min = _start_grid(n_total, alpha, delta)
    w = None if weights is None else np.asarray(weights, dtype=float).ravel()
    if w is not None and (w.shape != c.shape or not np.all(np.isfinite(w)) or np.any(w <= 0)):
        raise ConfigurationError(f"weights must be {len(c)} positive finite numbers, one per answer")
    if w is not None and np.all(w == w[0]):
        w = None  # equal weights: the exact binomial test
    order = np.argsort(-c, kind="stable")
    c_sorted, err_sorted = c[order], ~y[order]
    cum_err = np.cumsum(err_sorted)
    # Candidate thresholds: distinct confidences, descending; accepting conf >= t takes a whole tie group.
    last_of_group = np.flatnonzero(np.append(c_sorted[1:] != c_sorted[:-1], True))
    tested = last_of_group[last_of_group + 1 >= n_min]
    n_acc_all = tested + 1
    k_all = cum_err[tested]
    if w is None:
        rejected = binom.cdf(k_all, n_acc_all, alpha) <= level
    else:
        from scipy.special import betainc

        ws = w[order]
        cw, cw2, cwe = np.cumsum(ws), np.cumsum(ws**2), np.cumsum(ws * err_sorted)
        n_eff = cw[tested] ** 2 / cw2[tested]
        k_eff = n_eff * cwe[tested] / cw[tested]
        # binom.cdf(k; n, p) = I_{1-p}(n - k, k + 1), defined for real k and n.
        with np.errstate(all="ignore"):
            cdf = np.where(
                k_eff < n_eff, betainc(np.maximum(n_eff - k_eff, 1e-12), k_eff + 1.0, 1.0 - alpha), 1.0
            )
        rejected = cdf <= level
    # Fixed-sequence testing from each start (n_min, 2 n_min, 4 n_min, ... accepted answers) towards
    # lower thresholds, each sequence stopping at its first failure; Bonferroni over the starts.
    chosen: int | None = None
    for s_i in range(n_starts):
        first = int(np.searchsorted(n_acc_all, n_min * 2**s_i))
        if first >= len(tested):
            break
        fails = np.flatnonzero(~rejected[first:])
        stop = first + (int(fails[0]) if len(fails) else len(tested) - first)
        if stop > first:
            chosen = max(chosen or -1, int(tested[stop - 1]))
    best_bound, best_idx = 1.0, None
    if chosen is None and len(tested):
        from scipy.stats import beta

        # The lowest bound over all thresholds tells the caller which alpha the data could support.
        with np.errstate(all="ignore"):
            bounds = np.where(
                k_all < n_acc_all, beta.ppf(1.0 - delta, k_all + 1, np.maximum(n_acc_all - k_all, 1)), 1.0
            )
        j = int(np.argmin(bounds))
        best_bound, best_idx = float(bounds[j]), int(tested[j])
    n = len(c)
    if chosen is None:
        tried = best_idx
        msg = (
            f"the calibration data ({n} answers, {int((~y).sum())} wrong) cannot support a selective "
            f"error of {alpha:g} at confidence {1 - delta:g}"
        )
        if tried is not None:
            msg += f"; the best upper bound reached is {best_bound:.3f} at {tried + 1} accepted answers"
        else:
            msg += f"; fewer than {n_min} answers can be accepted at any threshold"
        msg += ": raise alpha or delta, or label more calibration data"
        if strict:
            raise RiskControlError(msg, best_bound=best_bound if tried is not None else None, n=n)
        k_t = int(cum_err[tried]) if tried is not None else 0
        n_t = tried + 1 if tried is not None else 0
        return ThresholdSelection(
            feasible=False,
            threshold=None,
            alpha=alpha,
            delta=delta,
            coverage=0.0,
            n_accepted=0,
            n_errors=0,
            empirical_error=k_t / n_t if n_t else 0.0,
            bound=best_bound,
            n_calibration=n,
        )
    n_acc = chosen + 1
    k = int(cum_err[chosen])
    coverage, error, bound_k, bound_n = n_acc / n, k / n_acc, k, n_acc
    if w is not None:
        ws = w[order][:n_acc]
        coverage = float(ws.sum() / w.sum())
        error = float(np.sum(ws * err_sorted[:n_acc]) / ws.sum())
        bound_n = max(1, round(float(ws.sum() ** 2 / np.sum(ws**2))))
        bound_k = min(bound_n, round(error * bound_n))
    return ThresholdSelection(
        feasible=True,
        threshold=float(c_sorted[chosen]),
        alpha=alpha,
        delta=delta,
        coverage=coverage,
        n_accepted=n_acc,
        n_errors=k,
        empirical_error=error,
        bound=clopper_pearson_upper(bound_k, bound_n, level),
        n_calibration=n,
    )
