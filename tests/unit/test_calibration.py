"""Calibrator: isotonic and Platt fits, feature choice by cross-validation, JSON round trips, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from semgrad_guard import (
    SCORE_FIELDS,
    CalibrationError,
    Calibrator,
    CalibratorMismatchError,
    ConfigurationError,
    ModelProfile,
    ScoreResult,
)
from semgrad_guard.guard.calibration import AUTO_FEATURE_SETS, expected_calibration_error

MODEL = "org/tiny-model"


def _result(
    model_id: str | None = MODEL, anchor: int = -3, layers: tuple[int, ...] = (2, 3), **scores: float
) -> ScoreResult:
    base = {f: 1.0 for f in SCORE_FIELDS}
    base.update(scores)
    return ScoreResult(**base, answer_tokens=4, anchor_offset=anchor, layers=list(layers), model_id=model_id)


def _synthetic(n: int = 600, seed: int = 0) -> tuple[list[ScoreResult], np.ndarray, np.ndarray]:
    """mean_nll carries the signal (P(correct) = exp(-mean_nll)); every other field is noise."""
    rng = np.random.default_rng(seed)
    mean_nll = rng.exponential(1.0, size=n)
    p_true = np.exp(-mean_nll)
    correct = rng.uniform(size=n) < p_true
    results = [
        _result(
            mean_nll=float(m),
            semgrad=float(rng.lognormal(-7, 1)),
            hybridgrad=float(rng.lognormal(-6, 1)),
            exgrad=float(rng.lognormal(-5, 1)),
            nll=float(rng.exponential(3)),
            mean_entropy=float(rng.exponential(1)),
        )
        for m in mean_nll
    ]
    return results, correct, p_true


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_fit_learns_a_decreasing_map_close_to_the_truth(method: str) -> None:
    results, correct, p_true = _synthetic()
    cal = Calibrator.fit(results, correct, method=method, features=["mean_nll"])
    conf = cal.predict(results)
    assert conf.min() >= 0.0 and conf.max() <= 1.0
    order = np.argsort([r.mean_nll for r in results])
    assert np.all(np.diff(conf[order]) <= 1e-12)  # higher score = more uncertain = lower confidence
    assert np.mean(np.abs(conf - p_true)) < 0.1
    assert cal.method == method and cal.features == ["mean_nll"]
    assert cal.n_samples == 600 and cal.n_correct == int(correct.sum())


def test_auto_picks_the_informative_score_by_cross_validation() -> None:
    results, correct, _ = _synthetic(seed=1)
    cal = Calibrator.fit(results, correct, method="auto", features="auto")
    assert cal.cv is not None and len(cal.cv) == 2 * len(AUTO_FEATURE_SETS)
    assert cal.cv_scheme == "5-fold, Brier"
    assert "mean_nll" in cal.features
    assert cal.cv["isotonic:mean_nll"] < cal.cv["isotonic:semgrad"]
    assert cal.cv["platt:mean_nll"] < cal.cv["platt:exgrad"]
    chosen = f"{cal.method}:{'+'.join(cal.features)}"
    assert cal.cv[chosen] == min(cal.cv.values())


def test_combined_features_use_a_logistic_score_then_isotonic() -> None:
    results, correct, _ = _synthetic(seed=2)
    cal = Calibrator.fit(results, correct, method="isotonic", features=["mean_nll", "semgrad"])
    assert "linear" in cal.params
    conf = cal.predict(results)
    assert np.corrcoef(conf, [r.mean_nll for r in results])[0, 1] < -0.5


def test_json_round_trip_keeps_predictions_and_provenance(tmp_path) -> None:
    results, correct, _ = _synthetic(seed=3)
    for method in ("isotonic", "platt"):
        cal = Calibrator.fit(
            results, correct, method=method, features=["mean_nll", "nll"], data="synthetic v1"
        )
        path = tmp_path / f"{method}.json"
        cal.save(path)
        raw = json.loads(path.read_text())
        assert raw["format"] == "semgrad-guard-calibrator"
        assert raw["model_id"] == MODEL and raw["data"] == "synthetic v1"
        assert raw["profile"] == {
            "anchor_offset": -3,
            "layers": [2, 3],
            "chat_template_hash": None,
            "exgrad_mode": "logits",
        }
        again = Calibrator.load(path)
        assert again == cal
        np.testing.assert_array_equal(again.predict(results), cal.predict(results))
        assert again.predict_scores(results[0].scores())[0] == pytest.approx(cal.confidence(results[0]))


def test_refuses_another_model_or_profile() -> None:
    results, correct, _ = _synthetic(n=100, seed=4)
    cal = Calibrator.fit(results, correct, method="platt", features=["mean_nll"])
    with pytest.raises(CalibratorMismatchError, match="fitted on model 'org/tiny-model'"):
        cal.confidence(_result(model_id="org/other-model"))
    with pytest.raises(CalibratorMismatchError, match="anchor_offset=-3"):
        cal.confidence(_result(anchor=-4))
    with pytest.raises(CalibratorMismatchError, match="layers"):
        cal.confidence(_result(layers=(3,)))
    assert isinstance(cal.confidence(_result(model_id="org/other-model"), check=False), float)
    cal.check_compatible(MODEL, ModelProfile(anchor_offset=-3, layers=[2, 3]))
    with pytest.raises(CalibratorMismatchError):
        cal.check_compatible(MODEL, ModelProfile(anchor_offset=-2, layers=[2, 3]))
    with pytest.raises(CalibratorMismatchError, match="fitted on model"):
        cal.check_compatible("org/other-model", None)
    with pytest.raises(ConfigurationError):  # the mismatch error is a configuration error
        cal.check_compatible("org/other-model", None)


def test_chat_template_hash_mismatch_is_refused() -> None:
    results, correct, _ = _synthetic(n=100, seed=5)
    prof = ModelProfile(anchor_offset=-3, layers=[2, 3], chat_template_hash="a" * 64)
    cal = Calibrator.fit(results, correct, method="platt", features=["mean_nll"], profile=prof)
    cal.check_compatible(MODEL, prof)
    with pytest.raises(CalibratorMismatchError, match="chat template"):
        cal.check_compatible(
            MODEL, ModelProfile(anchor_offset=-3, layers=[2, 3], chat_template_hash="b" * 64)
        )


@pytest.mark.parametrize(
    ("n", "pos", "match"),
    [(5, 2, "at least 10"), (50, 50, "2 correct and 2 incorrect"), (50, 0, "2 correct")],
)
def test_fit_refuses_too_little_or_one_sided_data(n: int, pos: int, match: str) -> None:
    results = [_result(mean_nll=float(i)) for i in range(n)]
    with pytest.raises(CalibrationError, match=match):
        Calibrator.fit(results, [True] * pos + [False] * (n - pos))


def test_fit_argument_errors() -> None:
    results, correct, _ = _synthetic(n=40, seed=6)
    with pytest.raises(CalibrationError, match="differ in length"):
        Calibrator.fit(results, correct[:-1])
    with pytest.raises(ConfigurationError, match="unknown score fields"):
        Calibrator.fit(results, correct, features=["semgradd"])
    with pytest.raises(ConfigurationError, match="method"):
        Calibrator.fit(results, correct, method="spline")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="features must be"):
        Calibrator.fit(results, correct, features="mean_nll")


def test_load_errors_are_clear(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        Calibrator.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="not valid JSON"):
        Calibrator.load(tmp_path / "bad.json")
    (tmp_path / "foreign.json").write_text(json.dumps({"rules": []}))
    with pytest.raises(CalibrationError, match="not a semgrad-guard calibrator"):
        Calibrator.load(tmp_path / "foreign.json")
    results, correct, _ = _synthetic(n=60, seed=7)
    raw = json.loads(Calibrator.fit(results, correct, method="isotonic", features=["nll"]).model_dump_json())
    raw["params"]["y"] = raw["params"]["y"][:-1]
    (tmp_path / "broken.json").write_text(json.dumps(raw))
    with pytest.raises(CalibrationError, match="malformed params"):
        Calibrator.load(tmp_path / "broken.json")
    raw["version"] = 99
    (tmp_path / "future.json").write_text(json.dumps(raw))
    with pytest.raises(CalibrationError, match="version 99"):
        Calibrator.load(tmp_path / "future.json")


def test_expected_calibration_error() -> None:
    assert expected_calibration_error([0.8] * 10, [True] * 8 + [False] * 2) == pytest.approx(0.0)
    assert expected_calibration_error([0.9] * 10, [True] * 5 + [False] * 5) == pytest.approx(0.4)
    rng = np.random.default_rng(0)
    c = rng.uniform(size=20000)
    assert expected_calibration_error(c, rng.uniform(size=20000) < c) < 0.02
    assert expected_calibration_error(c, np.ones(20000, dtype=bool)) > 0.4


def test_shipped_calibrator_for_the_embedded_model() -> None:
    cal = Calibrator.default_for("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert cal.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    # Fitted on the three development sets, features chosen leaving one out (benchmarks/bench_guard.py).
    assert cal.data is not None and all(name in cal.data for name in ("sciq", "truthfulqa", "rag"))
    assert cal.cv_scheme is not None and cal.cv_scheme.startswith("leave-one-group-out")
    assert cal.n_samples == 600
    with pytest.raises(ConfigurationError, match="no calibrator is shipped") as err:
        Calibrator.default_for("org/unknown")
    assert "semgrad-guard calibrate" in str(err.value) and "Calibrator.load" in str(err.value)


def test_groups_select_features_leaving_one_data_set_out() -> None:
    a, ya, _ = _synthetic(seed=2)
    b, yb, _ = _synthetic(seed=3)
    groups = ["a"] * len(a) + ["b"] * len(b)
    cal = Calibrator.fit(a + b, np.concatenate([ya, yb]), groups=groups)
    assert cal.cv_scheme == "leave-one-group-out, 1 - AUROC"
    assert "mean_nll" in cal.features
    with pytest.raises(CalibrationError, match="groups"):
        Calibrator.fit(a, ya, groups=["a"])


def test_drift_monitor_warns_once_on_unlike_scores(caplog) -> None:
    results, correct, _ = _synthetic(seed=4)
    cal = Calibrator.fit(results, correct, method="platt", features=["mean_nll"])
    assert cal.reference is not None and len(cal.reference) == 101 and cal.n_reference == 600
    # Like the fitting data: no drift.
    cal.predict(results[:150])
    assert cal.drift.n == 150 and not cal.drift.drifted and cal.drift.p_value > 0.001
    # Far more uncertain answers than it was fitted on: drift, logged once.
    shifted = [r.model_copy(update={"mean_nll": r.mean_nll * 20 + 5}) for r in results[:200]]
    with caplog.at_level("WARNING"):
        cal.predict(shifted)
        cal.predict(shifted)
    assert cal.drift.drifted and cal.drift.statistic > 0.5
    assert sum("unlike those on its fitting data" in m for m in caplog.messages) == 1
    # The reference travels with the file.
    again = Calibrator.from_json(cal.model_dump_json())
    assert again.reference == cal.reference and again.drift is not cal.drift and again.drift.n == 0


def test_cross_validated_confidence_is_out_of_fold() -> None:
    from semgrad_guard.guard.calibration import cross_validated_confidence, reliability_table

    results, correct, p_true = _synthetic(seed=5)
    oof = cross_validated_confidence(results, correct, method="platt", features=["mean_nll"])
    assert oof.shape == (600,) and np.mean(np.abs(oof - p_true)) < 0.1
    rows = reliability_table(oof, correct)
    assert sum(r["n"] for r in rows) == 600
    assert all(r["low"] <= r["confidence"] < r["high"] + 1e-12 for r in rows)
