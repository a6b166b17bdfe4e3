"""Calibrator reload and the first-day policy under ``serve --ray``.

A replica refuses ``POST /admin/calibrator`` (it would reach one replica of several) and says what
reloads them all: the driver's SIGHUP, which re-reads the file and redeploys (one slow test, a local
Ray with two replicas of the tiny model). The first-day policy builds a Ray application like any
other (no Ray started).
"""

from __future__ import annotations

import functools

import httpx
import pytest

pytest.importorskip("ray", reason="the 'ray' extra is not installed: pip install 'semgrad-guard[ray]'")

from semgrad_guard import Calibrator, CalibratorMismatchError, GuardPolicy, SQLiteReviewQueue  # noqa: E402
from semgrad_guard.serve.ray_app import (  # noqa: E402
    RELOAD_ON_RAY,
    ray_application,
    reload_calibrator_on_ray,
    run_on_ray,
    shutdown_ray,
)
from semgrad_guard.testing import tiny_scorer  # noqa: E402

TOKEN = "ray-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ANSWERS = ["Carbon dioxide.", "Oxygen, mostly.", "Nitrogen, I believe, in large amounts.", "CO2."]


def test_serve_ray_takes_the_first_day_policy_without_a_calibrator(monkeypatch) -> None:
    monkeypatch.delenv("SEMGRAD_GUARD_TOKEN", raising=False)
    from semgrad_guard.cli import build_parser
    from semgrad_guard.cli.serve import ray_application_from_args

    args = build_parser().parse_args(["serve", "--ray", "--policy", "first-day"])
    application, _, _ = ray_application_from_args(args)  # a file named 'first-day' before the fix
    policy = application._bound_deployment.init_args[2]  # what each replica is built with
    assert policy["audit"]["rate"] == 0.2 and {r["action"] for r in policy["rules"]} == {"annotate"}


@pytest.mark.slow
def test_first_day_on_ray_then_sighups_redeploy_reaches_every_replica_and_the_admin_route_refuses(
    tmp_path,
) -> None:
    import ray

    tiny = tiny_scorer("llama")
    results = [tiny.score("Which gas do plants take in?", a) for a in ANSWERS * 5]
    old = Calibrator.fit(results, [a in (ANSWERS[0], ANSWERS[3]) for a in ANSWERS * 5], method="platt")
    new = Calibrator.model_validate({**old.model_dump(), "recalibration": {"slope": 1.0, "intercept": -2.0}})
    path = tmp_path / "calibrator.json"
    new.save(path)
    foreign = tmp_path / "foreign.json"
    Calibrator.model_validate({**new.model_dump(), "model_id": "someone/else"}).save(foreign)

    db = tmp_path / "review.db"
    first_day = GuardPolicy.first_day(audit_rate=1.0, review={"path": str(db)})

    def build(cal: Calibrator):
        return ray_application(
            functools.partial(tiny_scorer, "llama"),
            calibrator=cal,
            policy=first_day,
            token=TOKEN,
            replicas=2,
            threads=1,
        )

    def versions(url: str) -> set[str]:
        body = {"messages": "Which gas do plants take in?", "answer": ANSWERS[0]}
        return {
            httpx.post(url + "/v1/score", json=body, headers=AUTH).json()["calibrator_version"]
            for _ in range(12)
        }

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        url = run_on_ray(build(old), port=0)
        assert versions(url) == {old.fingerprint}
        chat = httpx.post(
            url + "/v1/chat/completions",
            json={
                "model": "tiny-random-llama",
                "messages": [{"role": "user", "content": "Hi?"}],
                "max_tokens": 3,
            },
            headers=AUTH,
        )
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["semgrad"]["action"] == "annotate"
        (audited,) = SQLiteReviewQueue(db).list()  # rate 1.0: the served answer is in the queue
        assert audited.kind == "audit"
        refused = httpx.post(
            url + "/admin/calibrator", json={"calibrator": new.model_dump(mode="json")}, headers=AUTH
        )
        assert refused.status_code == 400 and refused.json()["message"] == RELOAD_ON_RAY
        assert "kill -HUP" in RELOAD_ON_RAY and versions(url) == {old.fingerprint}

        with pytest.raises(CalibratorMismatchError):  # refused in the driver: nothing redeployed
            reload_calibrator_on_ray(build, foreign, old)
        assert reload_calibrator_on_ray(build, path, old).fingerprint == new.fingerprint
        assert versions(url) == {new.fingerprint}
    finally:
        shutdown_ray()
