"""Spans through the service: /v1/score's spans field, span decisions in payloads, chat completions."""

from __future__ import annotations

import httpx
import pytest

from semgrad_guard import Calibrator, GuardPolicy, MockScorer, ScorePayload
from semgrad_guard.serve import create_app
from semgrad_guard.testing import tiny_scorer

CHAT = [{"role": "user", "content": "Which gas do plants take in during photosynthesis?"}]
ANSWER = "Carbon dioxide, mostly. The moon is made of cheese. Plants also need water"
FIELDS = ("semgrad", "hybridgrad", "exgrad", "nll", "mean_nll", "mean_entropy")


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_score_with_sentence_spans_equals_in_process(one_thread):
    tiny = tiny_scorer("llama")
    want = tiny.score(CHAT, ANSWER, spans="sentences")
    async with client(create_app(tiny)) as c:
        got = (
            await c.post("/v1/score", json={"messages": CHAT, "answer": ANSWER, "spans": "sentences"})
        ).json()
        offsets = (
            await c.post("/v1/score", json={"messages": CHAT, "answer": ANSWER, "spans": [[0, 14]]})
        ).json()
        plain = (await c.post("/v1/score", json={"messages": CHAT, "answer": ANSWER})).json()
        bad = await c.post("/v1/score", json={"messages": CHAT, "answer": ANSWER, "spans": [[5, 999]]})
        odd = await c.post("/v1/score", json={"messages": CHAT, "answer": ANSWER, "spans": "words"})
    spans = ScorePayload.read({"semgrad": got}).result.spans
    assert [s.text for s in spans] == [s.text for s in want.spans]
    for a, b in zip(spans, want.spans, strict=True):
        assert (a.start, a.end, a.token_start, a.token_end) == (b.start, b.end, b.token_start, b.token_end)
        for name in FIELDS:
            assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-6)
    assert [s["text"] for s in offsets["result"]["spans"]] == ["Carbon dioxide"]
    assert plain["result"]["spans"] is None
    assert bad.status_code == 400 and bad.json()["type"] == "SpanError"
    assert "0 <= start < end <=" in bad.json()["message"]
    assert odd.status_code == 422


def score_fn(messages, text):
    return 0.9 if "cheese" in text else 0.1


@pytest.fixture
def span_calibrator(tmp_path):
    s = MockScorer(score_fn)
    texts = ["Fine.", "The moon is made of cheese."] * 10
    cal = Calibrator.fit(
        [s.score("q", t) for t in texts], [True, False] * 10, method="isotonic", features=["semgrad"]
    )
    path = tmp_path / "spans.json"
    cal.save(path)
    return path


def span_policy(path) -> GuardPolicy:
    return GuardPolicy.from_dict(
        {
            "rules": [{"field": "semgrad", "max": 0.95, "action": "accept"}, {"action": "abstain"}],
            "spans": {"calibrator": str(path), "drop_below": 0.5},
        }
    )


async def test_chat_completion_returns_the_answer_minus_dropped_spans_and_says_so(span_calibrator):
    app = create_app(MockScorer(score_fn, answers=[ANSWER]), policy=span_policy(span_calibrator))
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json={"model": "mock", "messages": CHAT})
        scored = await c.post("/v1/score", json={"messages": CHAT, "answer": ANSWER, "spans": "sentences"})
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == "Carbon dioxide, mostly. Plants also need water"
    payload = ScorePayload.read(choice)
    assert payload.answer == ANSWER  # the answer as scored
    assert [d.action for d in payload.span_decisions] == ["keep", "drop", "keep"]
    assert payload.span_decisions[1].text == "The moon is made of cheese."
    assert [s.text for s in payload.result.spans][1] == "The moon is made of cheese."
    # /v1/score reports the span decisions under the same policy.
    decisions = scored.json()["span_decisions"]
    assert [d["action"] for d in decisions] == ["keep", "drop", "keep"]


async def test_remote_scorer_asks_the_service_for_spans():
    from semgrad_guard import RemoteScorer

    app = create_app(MockScorer(score_fn))
    remote = RemoteScorer("http://test", async_transport=httpx.ASGITransport(app=app))
    r = await remote.ascore(CHAT, ANSWER, spans="sentences")
    assert [s.text for s in r.spans] == [
        "Carbon dioxide, mostly.",
        "The moon is made of cheese.",
        "Plants also need water",
    ]
    assert r.spans[1].semgrad == 0.9
    r = await remote.ascore(CHAT, ANSWER, spans=[(0, 6)])
    assert [s.text for s in r.spans] == ["Carbon"]
    assert (await remote.ascore(CHAT, ANSWER)).spans is None
