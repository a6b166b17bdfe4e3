"""Metrics against hand-computed values, ties, and single-class errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from semgrad_guard.errors import MetricError
from semgrad_guard.eval.metrics import auprc, aurc, auroc, bootstrap, prr, risk_coverage, roc_curve


def test_auroc_hand_computed() -> None:
    # wrong answers score 0.35 and 0.8, right ones 0.1 and 0.4: 3 of 4 pairs ordered correctly
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)


def test_auroc_ties_count_half() -> None:
    # pairs (wrong, right): (0.5, 0.5) tie = 0.5, the other three ordered: 3.5 / 4
    assert auroc([0.5, 0.5, 0.2, 0.9], [True, False, False, True]) == pytest.approx(0.875)
    assert auroc([1.0, 1.0, 1.0, 1.0], [True, False, False, True]) == pytest.approx(0.5)


def test_auroc_perfect_and_inverted() -> None:
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0


def test_auprc_hand_computed() -> None:
    # thresholds 0.9: P=1 R=.5; 0.8: P=.5 R=.5; 0.7: P=2/3 R=1 -> AP = .5*1 + .5*2/3
    assert auprc([0.9, 0.8, 0.7, 0.1], [True, False, True, False]) == pytest.approx(0.5 + 1 / 3)


def test_auprc_ties_form_one_threshold() -> None:
    # the tied pair is one threshold: P = 1/2 at R = 1
    assert auprc([0.5, 0.5, 0.1], [True, False, False]) == pytest.approx(0.5)


def test_auroc_auprc_match_sklearn_on_random_data_with_ties() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, 200).astype(float)  # many ties
    errors = rng.random(200) < 0.3 + 0.08 * scores
    assert auroc(scores, errors) == pytest.approx(roc_auc_score(errors, scores))
    assert auprc(scores, errors) == pytest.approx(average_precision_score(errors, scores))


def test_roc_curve_endpoints_and_ties() -> None:
    fpr, tpr = roc_curve([0.5, 0.5, 0.2, 0.9], [True, False, False, True])
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 1.0, 1.0]


def test_risk_coverage_hand_computed() -> None:
    rc = risk_coverage([0.1, 0.2, 0.3, 0.4], [False, True, False, True])
    assert rc.coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert rc.risk == pytest.approx([0.0, 0.5, 1 / 3, 0.5])
    assert rc.area == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)


def test_risk_coverage_ties_use_expected_order() -> None:
    rc = risk_coverage([0.1, 0.5, 0.5], [False, True, False])
    # k=2 keeps one of the tied pair at random: expected 0.5 errors out of 2
    assert rc.risk == pytest.approx([0.0, 0.25, 1 / 3])
    # the tied block's order in the input does not matter
    assert risk_coverage([0.5, 0.1, 0.5], [False, False, True]).risk == pytest.approx(rc.risk)


def test_prr_hand_computed() -> None:
    # AURC = 1/3, random = 0.5, oracle (F,F,T,T) = (0 + 0 + 1/3 + 1/2) / 4 = 5/24
    assert prr([0.1, 0.2, 0.3, 0.4], [False, True, False, True]) == pytest.approx(
        (0.5 - 1 / 3) / (0.5 - 5 / 24)
    )


def test_constant_score_is_chance_level() -> None:
    errors = [True, False, False, True, False]
    assert aurc([0.3] * 5, errors) == pytest.approx(0.4)
    assert prr([0.3] * 5, errors) == pytest.approx(0.0)
    assert prr([0.0, 1.0, 1.0, 0.0, 1.0], errors) < 0  # inverted order is worse than random
    assert prr([1.0, 0.0, 0.0, 1.0, 0.0], errors) == pytest.approx(1.0)


@pytest.mark.parametrize("metric", [auroc, auprc, prr, roc_curve])
@pytest.mark.parametrize(("errors", "word"), [([False, False, False], "correct"), ([True, True], "wrong")])
def test_single_class_raises(metric, errors, word) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MetricError, match=f"all {len(errors)} answers are {word}"):
        metric([0.1, 0.2, 0.3][: len(errors)], errors)


def test_bad_inputs_raise() -> None:
    with pytest.raises(MetricError, match="equal length"):
        auroc([0.1, 0.2], [True])
    with pytest.raises(MetricError, match="no examples"):
        aurc([], [])
    with pytest.raises(MetricError, match="NaN"):
        auroc([0.1, float("nan")], [True, False])


def test_bootstrap_interval_contains_value_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    errors = rng.random(300) < 0.4
    scores = errors + rng.normal(0, 1.0, 300)
    a = bootstrap(auroc, scores, errors, n_resamples=200, seed=1)
    b = bootstrap(auroc, scores, errors, n_resamples=200, seed=1)
    assert a == b
    assert a.low < a.value < a.high
    assert a.value == pytest.approx(auroc(scores, errors))
    assert 0.05 < a.high - a.low < 0.3
    assert a.resamples == 200


def test_bootstrap_skips_single_class_resamples() -> None:
    r = bootstrap(auroc, [0.1, 0.9], [False, True], n_resamples=100, seed=0)
    assert 0 < r.resamples < 100  # about half of the 2-example resamples hold one class only
    assert r.value == 1.0
