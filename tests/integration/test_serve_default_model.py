"""`semgrad-guard serve` with the embedded model, as a user starts it: a subprocess on a free port."""

from __future__ import annotations

import httpx
import pytest

from semgrad_guard import ScorePayload
from semgrad_guard.serve import ServeProcess

pytestmark = pytest.mark.integration

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    token_file = tmp_path_factory.mktemp("serve") / "token"
    token_file.write_text("integration-token\n")
    with ServeProcess(
        "--token-file", str(token_file), "--calibrator", "shipped", ready_timeout=180
    ) as server:
        yield server.url, {"Authorization": "Bearer integration-token"}


def test_served_scores_equal_in_process_scores(served, default_scorer, one_thread):
    url, auth = served
    answers = ["Paris.", "The capital of France is Lyon."]
    one = httpx.post(
        url + "/v1/score", json={"messages": CHAT, "answer": answers[0]}, headers=auth, timeout=60
    )
    batch = httpx.post(
        url + "/v1/score/batch",
        json={"items": [{"messages": CHAT, "answer": a} for a in answers]},
        headers=auth,
        timeout=60,
    )
    # Like for like: one pair alone, and the same pairs batched (padding changes float32 sums by ~1e-6).
    want = [default_scorer.score(CHAT, answers[0]), *default_scorer.score_batch([(CHAT, a) for a in answers])]
    got = [
        ScorePayload.read(one.json()).result,
        *(ScorePayload.read(p).result for p in batch.json()["items"]),
    ]
    for g, w in zip(got, want, strict=True):
        for name, value in w.scores().items():
            assert abs(getattr(g, name) - value) <= 1e-6 * abs(value), name
    assert 0.0 <= one.json()["confidence"] <= 1.0  # the shipped calibrator


def test_served_model_is_the_embedded_one_and_openai_clients_work(served, default_scorer):
    openai = pytest.importorskip("openai")
    url, auth = served
    models = httpx.get(url + "/v1/models", headers=auth).json()["data"][0]
    assert models["id"] == default_scorer.model_id and "default" in models["semgrad"]["aliases"]
    assert models["semgrad"]["weights_hash"] == default_scorer.profile.weights_sha256
    oa = openai.OpenAI(base_url=url + "/v1", api_key="integration-token", max_retries=0)
    completion = oa.chat.completions.create(model="default", messages=CHAT, max_tokens=16)
    text, result = default_scorer.generate(CHAT, max_new_tokens=16)
    choice = completion.choices[0]
    assert choice.message.content == text
    payload = ScorePayload.read(choice.model_extra)
    assert abs(payload.result.semgrad - result.semgrad) <= 1e-6 * result.semgrad
    assert httpx.get(url + "/healthz").status_code == 200
    assert httpx.get(url + "/metrics").status_code == 401
