"""The running service swaps its calibrator without a restart: admin route, SIGHUP, atomic under load,
refusals leave the old one in place, and every payload names the calibrator that judged it."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from semgrad_guard import Calibrator, GuardPolicy, MockScorer
from semgrad_guard.serve import create_app
from semgrad_guard.serve.calibrator_state import install_sighup

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
POLICY = GuardPolicy.from_dict(
    {"rules": [{"name": "sure", "min": 0.5, "action": "accept"}, {"name": "unsure", "action": "abstain"}]}
)


def _scorer() -> MockScorer:
    return MockScorer(lambda m, a: 0.1 if a.startswith("right") else 0.9, model_id="mock", answers=["right"])


def _calibrators() -> tuple[Calibrator, Calibrator]:
    s = _scorer()
    a = Calibrator.fit([s.score("q", x) for x in ["right", "wrong"] * 10], [True, False] * 10, method="platt")
    # The same map moved down: the 'right' answer's confidence drops below the policy's 0.5.
    b = Calibrator.model_validate({**a.model_dump(), "recalibration": {"slope": 1.0, "intercept": -8.0}})
    return a, b


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_admin_route_swaps_and_payloads_name_the_calibrator() -> None:
    a, b = _calibrators()
    app = create_app(_scorer(), calibrator=a, policy=POLICY, token=TOKEN)
    body = {"messages": "q", "answer": "right"}
    async with client(app) as c:
        before = (await c.post("/v1/score", json=body, headers=AUTH)).json()
        swapped = await c.post(
            "/admin/calibrator", json={"calibrator": b.model_dump(mode="json")}, headers=AUTH
        )
        after = (await c.post("/v1/score", json=body, headers=AUTH)).json()
        chat = (
            await c.post(
                "/v1/chat/completions",
                json={"model": "mock", "messages": [{"role": "user", "content": "q"}]},
                headers=AUTH,
            )
        ).json()
        denied = await c.post("/admin/calibrator", json={}, headers={})
    assert swapped.status_code == 200
    assert swapped.json() == {"calibrator_version": b.fingerprint, "previous": a.fingerprint, "data": b.data}
    assert (before["calibrator_version"], before["action"]) == (a.fingerprint, "accept")
    assert (after["calibrator_version"], after["action"]) == (b.fingerprint, "abstain")
    assert chat["choices"][0]["semgrad"]["calibrator_version"] == b.fingerprint
    assert denied.status_code == 401
    assert app.state.semgrad.guard.calibrator.fingerprint == b.fingerprint


async def test_the_swap_is_atomic_under_concurrent_requests() -> None:
    """A thread flips the calibrator as fast as it can while 300 requests are judged: each payload's
    action and confidence are exactly those of the calibrator it names, never a mix."""
    import threading

    from semgrad_guard.serve.calibrator_state import swap_calibrator

    a, b = _calibrators()
    app = create_app(_scorer(), calibrator=a, policy=POLICY, token=TOKEN)
    right = _scorer().score("q", "right")
    want = {a.fingerprint: ("accept", a.confidence(right)), b.fingerprint: ("abstain", b.confidence(right))}
    stop = threading.Event()

    def flip() -> None:
        k = 0
        while not stop.is_set():
            swap_calibrator(app.state.semgrad, b if k % 2 == 0 else a)
            k += 1
            time.sleep(0.0005)

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        async with client(app) as c:

            async def score() -> dict:
                r = await c.post("/v1/score", json={"messages": "q", "answer": "right"}, headers=AUTH)
                return r.json()

            payloads = []
            for _ in range(10):
                payloads += await asyncio.gather(*(score() for _ in range(30)))
                await asyncio.sleep(0.003)
    finally:
        stop.set()
        flipper.join()
    assert {p["calibrator_version"] for p in payloads} == {a.fingerprint, b.fingerprint}
    for p in payloads:
        action, confidence = want[p["calibrator_version"]]
        assert p["action"] == action and p["confidence"] == pytest.approx(confidence)


async def test_refusals_leave_the_old_calibrator_serving(tmp_path) -> None:
    a, _ = _calibrators()
    other = Calibrator.model_validate({**a.model_dump(), "model_id": "someone-else"})
    app = create_app(_scorer(), calibrator=a, policy=POLICY, token=TOKEN)
    async with client(app) as c:
        wrong = await c.post(
            "/admin/calibrator", json={"calibrator": other.model_dump(mode="json")}, headers=AUTH
        )
        no_file = await c.post("/admin/calibrator", json={}, headers=AUTH)
        junk = await c.post("/admin/calibrator", json={"calibrator": {"format": "nope"}}, headers=AUTH)
    assert wrong.status_code >= 400 and wrong.json()["type"] == "CalibratorMismatchError"
    assert "someone-else" in wrong.json()["message"]
    assert no_file.status_code == 400 and "--calibrator FILE" in no_file.json()["message"]
    assert junk.status_code >= 400 and junk.json()["type"] == "CalibrationError"
    assert app.state.semgrad.calibrator is a and app.state.semgrad.guard.calibrator is a
    open_app = create_app(_scorer(), calibrator=a, policy=POLICY)
    async with client(open_app) as c:
        r = await c.post("/admin/calibrator", json={}, headers={})
    assert r.status_code == 400 and "kill -HUP" in r.json()["message"]


async def test_sighup_and_an_empty_post_reload_the_started_file(tmp_path) -> None:
    a, b = _calibrators()
    path = tmp_path / "calibrator.json"
    a.save(path)
    app = create_app(_scorer(), calibrator=a, policy=POLICY, token=TOKEN)
    previous = signal.getsignal(signal.SIGHUP)
    try:
        install_sighup(app, path)
        b.save(path)
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 5
        while app.state.semgrad.calibrator.fingerprint != b.fingerprint and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert app.state.semgrad.calibrator.fingerprint == b.fingerprint
        a.save(path)
        async with client(app) as c:
            r = await c.post("/admin/calibrator", json={}, headers=AUTH)
        assert r.json()["calibrator_version"] == a.fingerprint
        path.write_text("not json")
        os.kill(os.getpid(), signal.SIGHUP)  # a bad file: logged, the old one keeps serving
        await asyncio.sleep(0.3)
        assert app.state.semgrad.calibrator.fingerprint == a.fingerprint
    finally:
        signal.signal(signal.SIGHUP, previous)


async def test_metrics_show_drift_and_the_queues_labels_and_name_the_fix(tmp_path, caplog) -> None:
    """/metrics carries the serving calibrator's drift (KS statistic and p-value) and the labels its
    review queue holds; the help and the drift warning name `calibrate --from-reviews`."""
    s = _scorer()
    cal = Calibrator.fit(
        [s.score("q", x) for x in ["right", "wrong"] * 100], [True, False] * 100, method="platt"
    )
    policy = GuardPolicy.from_dict(
        {
            "rules": [
                {"name": "sure", "min": 0.5, "action": "accept"},
                {"name": "unsure", "action": "review"},
            ],
            "review": {"path": str(tmp_path / "review.db")},
        }
    )
    app = create_app(_scorer(), calibrator=cal, policy=policy, token=TOKEN)
    async with client(app) as c:
        fresh = (await c.get("/metrics", headers=AUTH)).text
        queue = app.state.semgrad.guard.review_queue
        for k, ok in enumerate((True, False, False)):
            i = queue.enqueue(f"q{k}", "a", result=s.score("q", "right" if ok else "wrong"))
            (queue.approve if ok else queue.reject)(i)
        queue.enqueue("q3", "a", result=s.score("q", "wrong"))  # pending: not a label
        for _ in range(60):  # only wrong answers: unlike the fitting data's half and half
            assert (
                await c.post("/v1/score", json={"messages": "q", "answer": "wrong"}, headers=AUTH)
            ).status_code == 200
        text = (await c.get("/metrics", headers=AUTH)).text
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["semgrad_review_labels"] == 3.0
    assert values["semgrad_calibrator_drift_statistic"] > 0.4
    assert values["semgrad_calibrator_drift_p_value"] < 1e-3
    assert "semgrad_calibrator_drift_p_value 1.0" in fresh and "semgrad_review_labels 0.0" in fresh
    help_line = next(
        line for line in text.splitlines() if line.startswith("# HELP semgrad_calibrator_drift_statistic")
    )
    assert "semgrad-guard calibrate --from-reviews" in help_line and "kill -HUP" in help_line
    (warning,) = [
        r.getMessage() for r in caplog.records if "unlike those on its fitting data" in r.getMessage()
    ]
    assert "the queue holds 3 labels" in warning and "calibrate --from-reviews" in warning


async def test_metrics_without_a_calibrator_or_queue_say_nan() -> None:
    app = create_app(_scorer(), token=TOKEN)
    async with client(app) as c:
        text = (await c.get("/metrics", headers=AUTH)).text
    for name in (
        "semgrad_calibrator_drift_statistic",
        "semgrad_calibrator_drift_p_value",
        "semgrad_review_labels",
    ):
        assert f"{name} NaN" in text
