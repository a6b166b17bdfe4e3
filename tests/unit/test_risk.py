"""Risk control: the Learn-then-Test threshold meets its guarantee on synthetic data where the truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from semgrad_guard import ConfigurationError, RiskControlError, select_threshold
from semgrad_guard.guard.risk import clopper_pearson_upper, min_accepted_for


def test_simple_separable_data_accepts_the_confident_block() -> None:
    sel = select_threshold([0.9] * 60 + [0.2] * 40, [True] * 60 + [False] * 40, alpha=0.1, delta=0.1)
    assert sel.feasible
    assert sel.threshold == 0.9
    assert (sel.n_accepted, sel.n_errors, sel.coverage) == (60, 0, 0.6)
    assert sel.bound <= 0.1
    assert sel.n_calibration == 100


def test_ties_are_accepted_or_rejected_together() -> None:
    conf = [0.95] * 50 + [0.7] * 50
    correct = [True] * 50 + [True] * 25 + [False] * 25
    sel = select_threshold(conf, correct, alpha=0.2, delta=0.1)
    assert sel.threshold == 0.95 and sel.n_accepted == 50  # the 0.7 group (50 % wrong) is never split


def test_unsupported_alpha_says_so_instead_of_returning_a_threshold() -> None:
    conf = np.linspace(0, 1, 400)
    correct = [True, False] * 200  # 50 % wrong at every confidence
    with pytest.raises(RiskControlError, match="cannot support a selective error of 0.05") as info:
        select_threshold(conf, correct, alpha=0.05, delta=0.1)
    assert info.value.best_bound is not None and info.value.best_bound > 0.05
    sel = select_threshold(conf, correct, alpha=0.05, delta=0.1, strict=False)
    assert not sel.feasible and sel.threshold is None and sel.n_accepted == 0 and sel.coverage == 0.0


def test_too_little_data_for_alpha_is_refused() -> None:
    # Even with no errors, 10 answers cannot certify 5 % at 90 % confidence: (0.95)^10 = 0.6 > 0.1.
    with pytest.raises(RiskControlError, match="fewer than"):
        select_threshold([0.99] * 10, [True] * 10, alpha=0.05, delta=0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": 0.1, "delta": 0.0}, "delta"),
        ({"alpha": 0.1, "delta": 1.5}, "delta"),
    ],
)
def test_parameters_are_validated(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        select_threshold([0.5, 0.6], [True, False], **kwargs)


def test_input_errors() -> None:
    with pytest.raises(ConfigurationError, match="differ in length"):
        select_threshold([0.5, 0.6], [True], alpha=0.1)
    with pytest.raises(ConfigurationError, match="at least one"):
        select_threshold([], [], alpha=0.1)
    with pytest.raises(ConfigurationError, match="NaN"):
        select_threshold([0.5, float("nan")], [True, True], alpha=0.1)


def test_clopper_pearson_matches_closed_form_for_zero_errors() -> None:
    # With k = 0 the exact upper bound solves (1 - p)^n = delta.
    n, delta = 50, 0.1
    assert clopper_pearson_upper(0, n, delta) == pytest.approx(1 - delta ** (1 / n))
    assert clopper_pearson_upper(5, 5, delta) == 1.0
    assert min_accepted_for(0.1, 0.1) == 22  # 0.9^22 = 0.098 <= 0.1 < 0.9^21


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_guarantee_holds_on_synthetic_data_with_known_selective_risk(alpha: float) -> None:
    """conf ~ U(0, 1) and P(correct | conf) = conf, so the true selective error at t is (1 - t) / 2.

    Over many independent calibration sets, the chosen threshold's true error must exceed alpha
    in at most about delta of them (plus binomial noise of the repetition itself).
    """
    rng = np.random.default_rng(1234)
    delta, trials, n = 0.1, 200, 800
    exceed, thresholds, feasible = 0, [], 0
    for _ in range(trials):
        conf = rng.uniform(size=n)
        correct = rng.uniform(size=n) < conf
        sel = select_threshold(conf, correct, alpha=alpha, delta=delta, strict=False)
        if not sel.feasible:
            continue
        feasible += 1
        thresholds.append(sel.threshold)
        exceed += (1 - sel.threshold) / 2 > alpha
    assert exceed / trials <= delta + 3 * np.sqrt(delta * (1 - delta) / trials)
    # ... and it is not vacuous: it usually finds a threshold that accepts a real share of answers.
    assert feasible / trials >= 0.5
    assert np.mean(thresholds) < 1 - alpha  # coverage well above the trivial "accept almost nothing"


def test_a_deliberately_overconfident_rule_would_fail_the_same_check() -> None:
    """The check above can fail: taking the empirical-error threshold (no bound) exceeds alpha far too often."""
    rng = np.random.default_rng(99)
    alpha, trials, n, exceed = 0.1, 200, 300, 0
    for _ in range(trials):
        conf = np.sort(rng.uniform(size=n))[::-1]
        errors = np.cumsum(rng.uniform(size=n) >= conf)
        ok = np.flatnonzero(errors / np.arange(1, n + 1) <= alpha)
        t = conf[ok[-1]]
        exceed += (1 - t) / 2 > alpha
    assert exceed / trials > 0.3
