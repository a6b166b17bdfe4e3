"""Recalibration from review labels: the ladder (intercept -> slope -> full), inverse-inclusion weights,
weighted threshold certification, refusals, and ``calibrate --from-reviews``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from semgrad_guard import (
    CalibrationError,
    Calibrator,
    CalibratorMismatchError,
    ScoreResult,
    SQLiteReviewQueue,
    select_threshold,
)
from semgrad_guard.cli import main
from semgrad_guard.guard.calibration import expected_calibration_error
from semgrad_guard.guard.recalibrate import recalibrate
from semgrad_guard.review import labelled


def _result(s: float, model: str = "m", mode: str = "logits") -> ScoreResult:
    return ScoreResult(
        semgrad=s,
        hybridgrad=s,
        exgrad=s,
        nll=s,
        mean_nll=s,
        mean_entropy=s,
        answer_tokens=4,
        anchor_offset=-1,
        layers=[1],
        model_id=model,
        exgrad_mode=mode,
    )


def _world(n: int, shift: float, rng: np.random.Generator) -> tuple[list[ScoreResult], np.ndarray]:
    """Scores whose log predicts correctness; ``shift`` moves the base rate (another deployment)."""
    z = rng.normal(size=n)
    y = rng.random(n) < 1.0 / (1.0 + np.exp(-(2.0 * z + shift)))
    return [_result(float(np.exp(-v))) for v in z], y


@pytest.fixture(scope="module")
def base() -> Calibrator:
    results, y = _world(600, 0.0, np.random.default_rng(0))
    return Calibrator.fit(results, list(y), method="platt", features=["semgrad"], data="home")


def _queue(tmp_path, results, y, kinds=None, p=None):
    q = SQLiteReviewQueue(tmp_path / "review.db")
    for k, (r, ok) in enumerate(zip(results, y, strict=True)):
        kind = kinds[k] if kinds is not None else "review"
        i = q.enqueue(f"q{k}", "a", result=r, kind=kind, inclusion_probability=1.0 if p is None else p[k])
        (q.approve if ok else q.reject)(i, reviewer="ana")
    return q


def test_twenty_labels_move_the_intercept_and_mend_a_base_rate_shift(base, tmp_path) -> None:
    rng = np.random.default_rng(1)
    results, y = _world(20, -2.5, rng)  # the deployment is far harder than home
    with _queue(tmp_path, results, y) as q:
        rec = recalibrate(base, labelled(q))
    assert set(rec.cv_log_loss) == {"unchanged", "intercept"}  # 20 labels: intercept only
    assert rec.chosen == "intercept" and rec.calibrator.recalibration["intercept"] < -1.0
    test_r, test_y = _world(2000, -2.5, np.random.default_rng(2))
    before = expected_calibration_error(base.predict(test_r), test_y)
    after = expected_calibration_error(rec.calibrator.predict(test_r), test_y)
    assert before > 0.2 and after < 0.12 and after < before / 3
    prov = rec.calibrator.provenance
    assert (prov["labels"], prov["base"], prov["step"]) == (20, base.fingerprint, "intercept")
    assert rec.calibrator.fingerprint != base.fingerprint
    # It round-trips through a file and predicts the same.
    again = Calibrator.from_json(rec.calibrator.model_dump_json())
    assert np.allclose(again.predict(test_r[:50]), rec.calibrator.predict(test_r[:50]))


def test_the_ladder_grows_with_the_labels(base, tmp_path) -> None:
    results, y = _world(120, -1.0, np.random.default_rng(3))
    with _queue(tmp_path, results, y) as q:
        labels = labelled(q)
    ladder = {
        20: {"unchanged", "intercept"},
        60: {"unchanged", "intercept", "slope+intercept"},
        # 100 labels of 50 answers: the monotone map waits for 100 distinct answers
        100: {"unchanged", "intercept", "slope+intercept", "full"},
        120: {"unchanged", "intercept", "slope+intercept", "monotone", "full"},
    }
    for n, steps in ladder.items():
        subset = labels[:n] if n != 100 else labels[:50] * 2
        rec = recalibrate(base, subset)
        assert set(rec.cv_log_loss) == steps
        refits = {k: v for k, v in rec.cv_log_loss.items() if k != "unchanged"}  # reported, never chosen
        assert rec.chosen == min(refits, key=refits.get)


def test_audit_weights_undo_the_review_band_bias(base, tmp_path) -> None:
    """Review every answer in the middle, audit 10% of the rest: unweighted, the rare confident answers are
    under-counted; weighted by 1/p they count as the share of traffic they are."""
    rng = np.random.default_rng(4)
    results, y = _world(4000, -1.5, rng)
    conf = base.predict(results)
    middle = (conf > 0.3) & (conf < 0.7)
    audit = ~middle & (rng.random(len(y)) < 0.1)
    keep = middle | audit
    kept = [r for r, k in zip(results, keep, strict=True) if k]
    kinds = ["review" if m else "audit" for m, k in zip(middle, keep, strict=True) if k]
    p = [1.0 if m else 0.1 for m, k in zip(middle, keep, strict=True) if k]
    with _queue(tmp_path, kept, y[keep], kinds, p) as q:
        labels = labelled(q)
    weighted = recalibrate(base, labels)
    unweighted = recalibrate(base, [lab.model_copy(update={"weight": 1.0}) for lab in labels])
    full_ece = {
        name: expected_calibration_error(rec.calibrator.predict(results), y)
        for name, rec in (("weighted", weighted), ("unweighted", unweighted))
    }
    assert full_ece["weighted"] < full_ece["unweighted"]
    assert abs(weighted.accuracy - y.mean()) < abs(float(np.mean(y[keep])) - y.mean())


def test_weighted_threshold_certification_reduces_to_the_exact_test_for_equal_weights() -> None:
    rng = np.random.default_rng(5)
    c = rng.random(300)
    y = rng.random(300) < c
    plain = select_threshold(c, y, alpha=0.2, delta=0.1, strict=False)
    equal = select_threshold(c, y, alpha=0.2, delta=0.1, strict=False, weights=np.full(300, 7.0))
    assert plain == equal
    w = np.where(c > 0.5, 10.0, 1.0)
    sel = select_threshold(c, y, alpha=0.2, delta=0.1, strict=False, weights=w)
    acc = c >= sel.threshold
    assert sel.coverage == pytest.approx(w[acc].sum() / w.sum())
    assert sel.empirical_error == pytest.approx(np.average(~y[acc], weights=w[acc]))
    with pytest.raises(Exception, match="positive finite"):
        select_threshold(c, y, alpha=0.2, weights=np.zeros(300))


def test_refusals_too_few_labels_another_model_another_exgrad_mode(base, tmp_path) -> None:
    results, y = _world(40, 0.0, np.random.default_rng(6))
    with (
        _queue(tmp_path, results[:8], y[:8]) as q,
        pytest.raises(CalibrationError, match="too few review labels"),
    ):
        recalibrate(base, labelled(q))
    foreign = [
        lab.model_copy(update={"result": _result(0.5, model="other")})
        for lab in _labels(tmp_path, results, y)
    ]
    with pytest.raises(CalibratorMismatchError, match="review item 1: calibrator was fitted on model 'm'"):
        recalibrate(base, foreign)
    mixed = _labels(tmp_path, results, y)
    mixed[0] = mixed[0].model_copy(update={"result": _result(0.5, mode="weight")})
    with pytest.raises(CalibratorMismatchError, match="exgrad modes"):
        recalibrate(base, mixed)


def _labels(tmp_path, results, y):
    d = tmp_path / f"q{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    with _queue(d, results, y) as q:
        return labelled(q)


def test_cli_from_reviews_writes_a_calibrator_that_says_what_it_was_fitted_on(base, tmp_path, capsys) -> None:
    results, y = _world(30, -2.0, np.random.default_rng(7))
    _queue(tmp_path, results, y).close()
    base_path = tmp_path / "base.json"
    base.save(base_path)
    out = tmp_path / "new.json"
    db = tmp_path / "review.db"
    assert main(["calibrate", "--from-reviews", str(db), "--base", str(base_path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "30 labels" in text and "ECE (weighted, out-of-fold): before" in text and "Re-certified" in text
    written = json.loads(out.read_text())
    assert written["provenance"]["labels"] == 30 and written["provenance"]["base"] == base.fingerprint
    # Too few labels: exit 2, nothing written.
    missing = tmp_path / "never.json"
    rc = main(
        [
            "calibrate",
            "--from-reviews",
            str(db),
            "--base",
            str(base_path),
            "--min-labels",
            "50",
            "--out",
            str(missing),
        ]
    )
    assert rc == 2 and not missing.exists()
    assert "too few review labels" in capsys.readouterr().err
    # A model with no shipped calibrator and no --base: the fix is named.
    rc = main(["calibrate", "--from-reviews", str(db), "--out", str(missing)])
    assert rc == 2 and not missing.exists()
    assert "--base none" in capsys.readouterr().err
    # --base none: the first calibrator of a foreign model, from the labels alone.
    assert main(["calibrate", "--from-reviews", str(db), "--base", "none", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["provenance"]["step"] == "full"


def test_a_foreign_models_first_day_serves_audits_then_gets_its_first_calibrator(tmp_path) -> None:
    """No calibrator: a confidence policy is refused (naming the way out); first_day() serves every answer
    with a note and audits a share; from those labels --base none fits the first calibrator."""
    from semgrad_guard import ConfigurationError, Guard, GuardPolicy, MockScorer

    scorer = MockScorer(lambda m, a: 0.05 if a.startswith("right") else 0.8, model_id="foreign/model")
    confident = GuardPolicy.from_dict({"rules": [{"min": 0.5, "action": "accept"}, {"action": "abstain"}]})
    with pytest.raises(ConfigurationError, match="first_day"):
        Guard(confident, scorer=scorer)
    queue = SQLiteReviewQueue(tmp_path / "review.db")
    guard = Guard(GuardPolicy.first_day(audit_rate=0.5), scorer=scorer, review_queue=queue)
    answers = [f"right {k}" if k % 2 else f"wrong {k}" for k in range(80)]
    served = [guard.check("q", a) for a in answers]
    assert [r.answer for r in served] == answers and {r.action.value for r in served} == {"annotate"}
    for it in queue.list("pending"):
        (queue.approve if it.answer.startswith("right") else queue.reject)(it.id)
    labels = labelled(queue)
    assert len(labels) >= 20 and all(lab.weight == 2.0 for lab in labels)
    rec = recalibrate(None, labels)
    assert rec.chosen == "full" and rec.ece_before is None and rec.calibrator.model_id == "foreign/model"
    later = Guard(confident, scorer=scorer, calibrator=rec.calibrator)
    assert later.check("q", "right again").action.value == "accept"
    assert later.check("q", "wrong again").action.value == "abstain"
    queue.close()


def test_a_recalibrated_calibrator_watches_drift_against_the_deployment_not_home(base, tmp_path) -> None:
    rng = np.random.default_rng(8)
    z = rng.normal(-1.5, 1.0, size=400)  # the deployment's scores sit elsewhere than home's
    results = [_result(float(np.exp(-v))) for v in z]
    y = rng.random(400) < 1.0 / (1.0 + np.exp(-(2.0 * z)))
    with _queue(tmp_path, results[:100], y[:100]) as q:
        rec = recalibrate(base, labelled(q))
    home = Calibrator.from_json(base.model_dump_json())
    home.predict(results[100:])
    rec.calibrator.predict(results[100:])
    assert home.drift.drifted and not rec.calibrator.drift.drifted


def test_opt_in_automatic_refit_every_n_labels(base, tmp_path, caplog) -> None:
    import logging

    from semgrad_guard import Guard, GuardPolicy

    caplog.set_level(logging.INFO)
    policy = GuardPolicy.from_dict({"rules": [{"action": "review"}], "review": {"refit_every": 12}})
    queue = SQLiteReviewQueue(tmp_path / "review.db")
    guard = Guard(policy, calibrator=base, review_queue=queue)
    seen: list[str] = []
    guard.on_calibrator_change(lambda cal: seen.append(cal.fingerprint))
    results, y = _world(24, -2.5, np.random.default_rng(10))
    for k, (r, ok) in enumerate(zip(results, y, strict=True)):
        item = guard.check("q", f"a{k}", result=r)
        (queue.approve if ok else queue.reject)(item.review_id)
        if k == 10:
            assert guard.calibrator is base  # 11 labels: not yet
    assert len(seen) == 2 and guard.calibrator.fingerprint == seen[-1] != base.fingerprint
    assert (
        guard.calibrator.provenance["labels"] == 24
        and guard.calibrator.provenance["base"] == base.fingerprint
    )
    assert "automatic refit" in caplog.text
    # Repeats the queue decides on arrival are labels, but no one's decision: they do not count.
    for _ in range(12):
        assert guard.check("q", "a0", result=results[0]).review_status in ("approved", "rejected")
    assert len(seen) == 2
    more, y_more = _world(12, -2.5, np.random.default_rng(11))
    for k, (r, ok) in enumerate(zip(more, y_more, strict=True)):
        item = guard.check("q", f"b{k}", result=r)
        (queue.approve if ok else queue.reject)(item.review_id)
    assert len(seen) == 3 and guard.calibrator.provenance["labels"] == 48  # 24 + 12 repeats + 12
    queue.close()


def test_cli_from_reviews_reads_a_postgres_queue_like_a_file(base, tmp_path, postgres_url, capsys) -> None:
    from semgrad_guard import open_review_queue

    results, y = _world(30, -2.0, np.random.default_rng(7))
    with _queue(tmp_path, results, y) as file_q, open_review_queue(postgres_url) as pg_q:
        for it in reversed(file_q.list()):  # the same decided items, in the same order, on the server
            i = pg_q.enqueue(it.messages, it.answer, result=it.result, kind=it.kind)
            (pg_q.approve if it.status.value == "approved" else pg_q.reject)(i, reviewer="ana")

        def key(labels):
            return [(lab.item_id, lab.result, lab.correct, lab.weight, lab.kind) for lab in labels]

        assert key(labelled(pg_q)) == key(labelled(file_q))
    base_path = tmp_path / "base.json"
    base.save(base_path)
    out = tmp_path / "from-pg.json"
    assert (
        main(["calibrate", "--from-reviews", postgres_url, "--base", str(base_path), "--out", str(out)]) == 0
    )
    assert "30 labels" in capsys.readouterr().out
    assert json.loads(out.read_text())["provenance"]["labels"] == 30
    empty = postgres_url.rsplit("/", 1)[0] + "/postgres"  # a database that holds no queue
    assert main(["calibrate", "--from-reviews", empty, "--base", str(base_path), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_copies_of_one_answer_are_one_piece_of_evidence(base, tmp_path) -> None:
    """Traffic repeats questions, so the queue holds copies of one answer: they stay in one
    cross-validation fold and count once in the threshold certification (with their summed weight),
    so five copies of 40 answers certify no more than the 40 answers did."""
    from semgrad_guard.guard.recalibrate import _answer_groups, _folds

    results, y = _world(40, 1.5, np.random.default_rng(7))
    with _queue(tmp_path, results * 5, list(y) * 5) as q:
        copies = recalibrate(base, labelled(q), alphas=(0.2, 0.3))
    groups = _answer_groups(results * 5)
    assert len(set(groups)) == 40
    for train, test in _folds(np.asarray(list(y) * 5, dtype=float), 5, 0, groups):
        assert not set(groups[train]) & set(groups[test])
    assert np.allclose(copies.oof.reshape(5, 40), copies.oof[:40])  # copies share their fold's fit
    overclaimed = []
    for sel, alpha in zip(copies.thresholds, (0.2, 0.3), strict=True):
        distinct = select_threshold(
            copies.oof[:40], y, alpha=alpha, delta=0.1, strict=False, weights=[5.0] * 40
        )
        naive = select_threshold(copies.oof, list(y) * 5, alpha=alpha, delta=0.1, strict=False)
        assert sel == distinct
        overclaimed.append(naive.feasible and not sel.feasible)
    assert any(overclaimed)  # 200 'independent' labels would certify what 40 answers cannot


@pytest.mark.parametrize("signal", [0.0, 1.0, 3.0])
def test_the_logit_refit_finds_the_penalised_optimum_even_without_signal(signal) -> None:
    """Where the base calibrator carries no signal for the deployment (its logits spread over +-6,
    labels a coin toss) a plain Newton step overshoots and diverged to slopes in the hundreds; the
    refit must land on the penalised optimum a general-purpose optimiser finds."""
    from scipy.optimize import minimize

    from semgrad_guard.guard.recalibrate import _RIDGE, _fit_logit

    rng = np.random.default_rng(3)
    z = rng.uniform(-6.0, 8.0, 70).repeat(3)
    y = (rng.random(z.size) < 1.0 / (1.0 + np.exp(-signal * z))).astype(float)
    w = np.where(rng.random(z.size) < 0.9, 10.0, 1.0)  # mostly audit labels, as off the review band

    def loss(theta: np.ndarray) -> float:
        t = theta[0] * z + theta[1]
        wn = w / w.mean()
        return float(
            np.sum(wn * (np.logaddexp(0.0, t) - y * t)) + 0.5 * _RIDGE * np.sum((theta - [1.0, 0.0]) ** 2)
        )

    reference = minimize(loss, np.array([1.0, 0.0]), method="BFGS", options={"gtol": 1e-9}).x
    assert np.allclose(_fit_logit(z, y, w, slope=True), reference, atol=1e-4)
    if signal == 0.0:
        assert abs(reference[0]) < 0.2


def _map(rng: np.random.Generator, kind: str) -> dict:
    if kind == "linear":
        return {"slope": float(rng.uniform(-2.0, 3.0)), "intercept": float(rng.normal())}
    if kind == "constant":
        return {"slope": 0.0, "intercept": float(rng.normal())}
    k = int(rng.integers(1, 5))
    return {
        "intercept": float(rng.normal()),
        "knots": sorted(rng.uniform(-4.0, 4.0, k).tolist()),
        "slopes": rng.uniform(0.0, 3.0, k + 1).round(1).tolist(),  # round: some pieces come out flat
    }


@pytest.mark.parametrize("first", ["linear", "constant", "piecewise"])
@pytest.mark.parametrize("second", ["linear", "piecewise"])
def test_a_refit_of_a_refit_is_one_map_doing_both(first, second) -> None:
    from semgrad_guard.guard.calibration import logit_map
    from semgrad_guard.guard.recalibrate import compose

    rng = np.random.default_rng(len(first) * 7 + len(second))
    u = np.linspace(-12.0, 12.0, 2001)
    for _ in range(20):
        prev, new = _map(rng, first), _map(rng, second)
        both = compose(prev, new)
        assert np.allclose(logit_map(u, both), logit_map(logit_map(u, prev), new), atol=1e-4)
        if first != "piecewise" and second == "linear":
            assert set(both) == {"slope", "intercept"}  # linear after linear stays the simple form


def test_the_piecewise_map_is_continuous_and_takes_its_slopes_piece_by_piece() -> None:
    from semgrad_guard.guard.calibration import logit_map

    m = {"intercept": 0.5, "knots": [-1.0, 2.0], "slopes": [0.5, 2.0, 0.0]}
    z = np.asarray([-3.0, -1.0, 0.0, 2.0, 5.0])
    # m(0) = 0.5; from 0 up to 2 at slope 2, flat above; from 0 down to -1 at slope 2, then 0.5
    assert np.allclose(logit_map(z, m), [0.5 - 2.0 - 1.0, 0.5 - 2.0, 0.5, 0.5 + 4.0, 0.5 + 4.0])
    assert np.allclose(logit_map(z, {"slope": 2.0, "intercept": 1.0}), 2.0 * z + 1.0)


@pytest.mark.parametrize(
    ("recal", "message"),
    [
        ({"intercept": 0.0, "knots": [1.0, 0.0], "slopes": [1.0, 1.0, 1.0]}, "strictly increasing"),
        ({"intercept": 0.0, "knots": [0.0], "slopes": [1.0]}, "one slope more than knots"),
        ({"intercept": 0.0, "knots": [0.0]}, "expected slope and intercept"),
        ({"slope": 1.0, "shift": 2.0}, "expected slope and intercept"),
    ],
)
def test_a_malformed_recalibration_is_refused_with_what_is_wrong(base, recal, message) -> None:
    text = json.dumps({**json.loads(base.model_dump_json()), "recalibration": recal})
    with pytest.raises(CalibrationError, match=message):
        Calibrator.from_json(text, source="cal.json")


def _step_world(n: int, rng: np.random.Generator) -> tuple[list[ScoreResult], np.ndarray]:
    """Right at 5% for the lower 60% of the score, then at a flat 50%: a reliability curve that rises
    steeply and levels off (what truthfulqa's looks like), which no logistic curve follows."""
    z = rng.normal(size=n)
    y = rng.random(n) < np.where(z > 0.25, 0.5, 0.05)
    return [_result(float(np.exp(-v))) for v in z], y


def test_a_step_shaped_deployment_gets_the_monotone_map(base, tmp_path) -> None:
    from semgrad_guard.guard.calibration import logit, logit_map
    from semgrad_guard.guard.recalibrate import _fit_map

    rng = np.random.default_rng(11)
    results, y = _step_world(400, rng)
    with _queue(tmp_path, results, y) as q:
        rec = recalibrate(base, labelled(q))
    assert rec.chosen == "monotone"
    assert rec.cv_log_loss["monotone"] < rec.cv_log_loss["slope+intercept"]
    recal = rec.calibrator.recalibration
    assert set(recal) == {"intercept", "knots", "slopes"} and min(recal["slopes"]) >= 0.0
    # On fresh answers of that deployment: the base's ranking kept (a monotone map), and calibrated,
    # where slope and intercept fitted on the same labels cannot follow the step.
    fresh, y_fresh = _step_world(4000, rng)
    p_base, p_new = base.predict(fresh), rec.calibrator.predict(fresh)
    order = np.argsort(p_base, kind="stable")
    assert np.all(np.diff(p_new[order]) >= -1e-12)
    linear = _fit_map(
        logit(base.predict(results)), np.asarray(y, dtype=float), np.ones(len(y)), "slope+intercept"
    )
    p_linear = 1.0 / (1.0 + np.exp(-logit_map(logit(p_base), linear)))
    ece_new, ece_linear = (
        expected_calibration_error(p_new, y_fresh),
        expected_calibration_error(p_linear, y_fresh),
    )
    assert ece_new < 0.05 and ece_linear > ece_new + 0.025  # 0.036 and 0.074 as written
    # Saved and loaded, it predicts the same.
    rec.calibrator.save(tmp_path / "cal.json")
    assert np.array_equal(Calibrator.load(tmp_path / "cal.json").predict(fresh), p_new)
