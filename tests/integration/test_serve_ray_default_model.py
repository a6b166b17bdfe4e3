"""`semgrad-guard serve --ray` with the embedded model, as a user starts it (a subprocess on a free port),
scored over HTTP and stopped with SIGTERM, which must take Ray Serve and the local Ray down with it."""

from __future__ import annotations

import httpx
import pytest

pytest.importorskip("ray", reason="the 'ray' extra is not installed: pip install 'semgrad-guard[ray]'")

from semgrad_guard import ScorePayload  # noqa: E402
from semgrad_guard.serve import ServeProcess  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def test_serve_ray_scores_like_in_process_and_stops_cleanly(default_scorer, one_thread):
    auth = {"Authorization": "Bearer ray-cli-token"}
    server = ServeProcess(
        "--ray", "--replicas", "1", "--calibrator", "shipped", token="ray-cli-token", ready_timeout=240
    )
    with server:
        url = server.url
        r = httpx.post(
            url + "/v1/score", json={"messages": CHAT, "answer": "Paris."}, headers=auth, timeout=60
        )
        assert r.status_code == 200, r.text
        payload = ScorePayload.read(r.json())
        want = default_scorer.score(CHAT, "Paris.")
        for name, value in want.scores().items():
            assert abs(getattr(payload.result, name) - value) <= 1e-6 * abs(value), name
        assert payload.confidence is not None  # --calibrator shipped, resolved in the replica
        models = httpx.get(url + "/v1/models", headers=auth).json()
        assert models["data"][0]["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        rc = server.stop(timeout=90)
    assert rc == 0, f"serve --ray did not exit 0 within 90 s of SIGTERM:\n{server.output()}"
    with pytest.raises(httpx.TransportError):  # Ray Serve's proxy went down with it
        httpx.get(url + "/healthz", timeout=2)
