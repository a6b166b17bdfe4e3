"""The service on Ray Serve: a local Ray (2 CPUs), two replicas of the tiny model, scored over HTTP.

Skipped, saying why, where the ``ray`` extra is not installed (``make install`` installs it).
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytest.importorskip("ray", reason="the 'ray' extra is not installed: pip install 'semgrad-guard[ray]'")

from semgrad_guard import MockScorer, RemoteScorer, ScorePayload  # noqa: E402
from semgrad_guard.errors import ServiceUnavailableError, UnknownRoleError  # noqa: E402
from semgrad_guard.serve import ServeSettings  # noqa: E402
from semgrad_guard.serve.ray_app import (  # noqa: E402
    RayBatchBackend,
    ray_application,
    run_on_ray,
    shutdown_ray,
    start_ray,
)
from semgrad_guard.testing import tiny_scorer  # noqa: E402

TOKEN = "ray-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = [{"role": "user", "content": "Which gas do plants take in during photosynthesis?"}]
ANSWERS = ["Carbon dioxide.", "Oxygen, mostly.", "Nitrogen, I believe, in large amounts.", "CO2."]


def close(got: float, want: float, rel: float) -> bool:
    return abs(got - want) <= rel * abs(want)


@pytest.fixture(scope="module")
def tiny():
    return tiny_scorer("llama")


@pytest.fixture(scope="module")
def ray_url():
    start_ray(num_cpus=2)  # as serve --ray does: its proxy answers Ray's own errors as JSON
    try:
        policy = {"rules": [{"name": "low", "field": "semgrad", "max": 1e9, "action": "accept"}]}
        app = ray_application(
            functools.partial(tiny_scorer, "llama"),
            policy=policy,
            token=TOKEN,
            settings=ServeSettings(max_batch_size=4, max_wait_ms=20),
            replicas=2,
            threads=1,
        )
        yield run_on_ray(app, port=0)
    finally:
        shutdown_ray()


pytestmark = pytest.mark.slow


def test_scores_over_ray_equal_in_process_scores(ray_url, tiny):
    one = httpx.post(ray_url + "/v1/score", json={"messages": CHAT, "answer": ANSWERS[0]}, headers=AUTH)
    assert one.status_code == 200, one.text
    payload = ScorePayload.read(one.json())
    want = tiny.score(CHAT, ANSWERS[0])
    for name, value in want.scores().items():
        assert close(getattr(payload.result, name), value, 1e-6), name
    assert payload.action == "accept"

    batch = httpx.post(
        ray_url + "/v1/score/batch",
        json={"items": [{"messages": CHAT, "answer": a} for a in ANSWERS]},
        headers=AUTH,
    )
    assert batch.status_code == 200, batch.text
    got = [ScorePayload.read(p).result for p in batch.json()["items"]]
    # The four pairs may be split over Ray's batches differently from one in-process score_batch call:
    # each equals its lone score up to padding's float32 noise (measured ~2e-6 on these models).
    for g, a in zip(got, ANSWERS, strict=True):
        assert close(g.semgrad, tiny.score(CHAT, a).semgrad, 1e-5), a


def test_concurrent_requests_all_get_their_own_scores_through_ray_batches(ray_url, tiny):
    def post(answer: str) -> httpx.Response:
        return httpx.post(
            ray_url + "/v1/score", json={"messages": CHAT, "answer": answer}, headers=AUTH, timeout=60
        )

    answers = ANSWERS * 4
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, answers))
    assert [r.status_code for r in responses] == [200] * len(answers)
    for r, a in zip(responses, answers, strict=True):
        assert close(ScorePayload.read(r.json()).result.semgrad, tiny.score(CHAT, a).semgrad, 1e-5)
    # Each replica has its own /metrics; the proxy sends each GET to one of them.
    seen_batches = 0.0
    for _ in range(8):
        text = httpx.get(ray_url + "/metrics", headers=AUTH).text
        for line in text.splitlines():
            if line.startswith('semgrad_batch_size_count{kind="score"}'):
                seen_batches = max(seen_batches, float(line.split()[-1]))
    assert seen_batches >= 1


def test_errors_token_and_remote_scorer_through_ray(ray_url, tiny):
    assert httpx.get(ray_url + "/healthz").status_code == 200
    denied = httpx.post(ray_url + "/v1/score", json={"messages": CHAT, "answer": "x"})
    assert denied.status_code == 401 and denied.json()["type"] == "ServiceAuthError"
    bad_role = httpx.post(
        ray_url + "/v1/score",
        json={"messages": [{"role": "wizard", "content": "hi"}], "answer": "x"},
        headers=AUTH,
    )
    assert bad_role.status_code == 422 and bad_role.json()["type"] == "UnknownRoleError"

    remote = RemoteScorer(ray_url, token=TOKEN, model="tiny-random-llama")
    try:
        assert close(remote.score(CHAT, ANSWERS[1]).semgrad, tiny.score(CHAT, ANSWERS[1]).semgrad, 1e-6)
        with pytest.raises(UnknownRoleError):
            remote.score([{"role": "wizard", "content": "hi"}], "x")
        text, result = remote.generate(CHAT, max_new_tokens=6)
        want_text, want = tiny.generate(CHAT, max_new_tokens=6)
        # Generation's recorded pass in a replica vs in this process: float32 reductions may differ in
        # order (1.4e-6 relative seen); the documented parity bound is rel 1e-5.
        assert text == want_text and close(result.semgrad, want.semgrad, 1e-5)
    finally:
        remote.close()

    chat = httpx.post(
        ray_url + "/v1/chat/completions",
        json={"model": "tiny-random-llama", "messages": CHAT, "max_tokens": 6},
        headers=AUTH,
    )
    assert chat.status_code == 200, chat.text
    assert chat.headers["x-semgrad-action"] == "accept"
    assert chat.json()["choices"][0]["message"]["content"] == want_text


def test_a_killed_replicas_request_is_a_json_503_and_remote_scoring_retries_it(ray_url, tmp_path):
    import os
    import time

    from ray import serve

    died = tmp_path / "died"

    def score(messages, answer):
        if answer == "die" and not died.exists():
            died.touch()
            os._exit(1)  # the replica dies with the request in flight
        return 0.25

    def answers(messages, **kwargs):
        os._exit(1)

    loader = functools.partial(MockScorer, score, answers=answers, model_id="dying")
    app = ray_application(loader, replicas=1, num_cpus=0, threads=None)
    serve.run(app, name="dying", route_prefix="/dying")
    url = ray_url + "/dying"
    try:
        r = httpx.post(url + "/v1/score", json={"messages": "q", "answer": "die"}, timeout=60)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", (r.status_code, r.text)
        assert r.json()["type"] == "ServiceUnavailableError" and r.json()["details"] == {"replica_lost": True}
        died.unlink()
        remote = RemoteScorer(url, model="dying", max_attempts=8, timeout=60)
        try:
            assert remote.score("q", "die").semgrad == 0.25  # died once, retried on the replacement
            assert died.exists()
            t0 = time.monotonic()
            with pytest.raises(ServiceUnavailableError, match="stopped before answering"):
                remote.generate("q", max_new_tokens=2)  # not retried: it may have been partly handled
            assert time.monotonic() - t0 < 30
        finally:
            remote.close()
    finally:
        serve.delete("dying")


def test_the_ray_backend_refuses_what_its_queue_cannot_hold():
    # Admission happens before Ray's batch queue is touched, so no replica is needed here.
    backend = RayBatchBackend(MockScorer(lambda m, a: 0.5), ServeSettings(max_queue=2, retry_after_s=3))
    with pytest.raises(ServiceUnavailableError) as caught:
        asyncio.run(backend.ascore_batch([("q", "a"), ("q", "b"), ("q", "c")]))
    assert caught.value.retry_after == 3.0 and "limit 2" in str(caught.value)
    assert backend.queue_depth() == 0


def test_serve_ray_arguments_are_checked_before_anything_starts(monkeypatch):
    monkeypatch.delenv("SEMGRAD_GUARD_TOKEN", raising=False)
    from semgrad_guard.cli import build_parser
    from semgrad_guard.cli.serve import ray_application_from_args
    from semgrad_guard.errors import ConfigurationError

    for argv, says in [
        (["serve", "--ray", "--replicas", "0"], "--replicas must be at least 1"),
        (["serve", "--ray", "--replicas", "2", "--max-replicas", "1"], "--max-replicas at least"),
        (["serve", "--ray", "--host", "0.0.0.0"], "without a bearer token"),
    ]:
        with pytest.raises(ConfigurationError, match=says):
            ray_application_from_args(build_parser().parse_args(argv))
