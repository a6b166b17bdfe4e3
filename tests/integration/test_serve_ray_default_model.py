"""`semgrad-guard serve --ray` with the embedded model, as a user starts it (a subprocess on a free port),
scored over HTTP and stopped with SIGTERM, which must take Ray Serve and the local Ray down with it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

pytest.importorskip("ray", reason="the 'ray' extra is not installed: pip install 'semgrad-guard[ray]'")

from semgrad_guard import ScorePayload  # noqa: E402
from semgrad_guard.serve import free_port  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def test_serve_ray_scores_like_in_process_and_stops_cleanly(default_scorer, one_thread):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SEMGRAD_GUARD_TOKEN": "ray-cli-token"}
    cmd = [sys.executable, "-m", "semgrad_guard", "serve", "--ray", "--replicas", "1", "--port", str(port)]
    cmd += ["--calibrator", "shipped"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Bearer ray-cli-token"}
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"semgrad-guard serve --ray exited: {proc.stdout.read() if proc.stdout else ''}")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("semgrad-guard serve --ray did not get ready within 240 s")
            time.sleep(1)
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
    finally:
        proc.terminate()
        try:
            rc = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("semgrad-guard serve --ray did not stop within 90 s of SIGTERM")
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
    assert rc == 0
    with pytest.raises(httpx.TransportError):  # Ray Serve's proxy went down with it
        httpx.get(url + "/healthz", timeout=2)
