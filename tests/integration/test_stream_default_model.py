"""The service's stream modes on the embedded model with the real ``openai`` client and real span
scores (no stub): observe streams, gate judges real sentences and stops generation."""

from __future__ import annotations

import time

import pytest

from semgrad_guard import Calibrator, GuardPolicy, ScorePayload, SpanPolicy
from semgrad_guard.serve import BackgroundServer, create_app

pytestmark = pytest.mark.integration
openai = pytest.importorskip("openai")

CHAT = [{"role": "user", "content": "Tell me three facts about Paris, in three sentences."}]


def run(oa, model, mode):
    t0, out = time.perf_counter(), []
    for chunk in oa.chat.completions.create(
        model=model,
        messages=CHAT,
        max_tokens=48,
        stream=True,
        extra_body={"semgrad": {"stream_mode": mode}},
    ):
        out.append((time.perf_counter() - t0, chunk))
    return out


def test_observe_streams_and_a_strict_gate_stops_generation(default_scorer, one_thread):
    calibrator = Calibrator.default_for(default_scorer.model_id)
    # Nothing reaches 0.99 confidence: the first sentence is judged 'abstain' and generation stops.
    strict = SpanPolicy(calibrator=None, abstain_below=0.99).with_calibrator(calibrator)
    policy = GuardPolicy.from_dict({"rules": [{"name": "all", "action": "accept"}]})
    app = create_app(default_scorer, calibrator=calibrator, policy=policy, span_policy=strict)
    with BackgroundServer(app) as server:
        oa = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        model = default_scorer.model_id
        observe, gate = run(oa, model, "observe"), run(oa, model, "gate")
    texts = [(t, c.choices[0].delta.content) for t, c in observe if c.choices and c.choices[0].delta.content]
    assert len(texts) > 5 and texts[0][0] < observe[-1][0] / 2  # first text well before the end
    full = ScorePayload.read(observe[-1][1].choices[0].model_extra)
    assert full.action == "accept" and full.result.answer_tokens > 10
    final = gate[-1][1].choices[0]
    payload = ScorePayload.read(final.model_extra)
    stopped = payload.model_extra["stopped"]
    assert final.finish_reason == "content_filter" and stopped["action"] == "abstain"
    assert stopped["generation_stopped"] and stopped["confidence"] < 0.99
    assert payload.result.answer_tokens < full.result.answer_tokens  # the rest never ran
