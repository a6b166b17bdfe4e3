"""The service's stream modes with the real ``openai`` client: text before the answer ends (observe,
gate), the score on the last chunk, a failing sentence that ends the stream and generation, hold as
before, and a client that disconnects stopping generation."""

from __future__ import annotations

import time

import httpx
import pytest
from transformers import LogitsProcessorList

from semgrad_guard import ConfigurationError, GuardPolicy, ModelProfile, ScorePayload, SemGradScorer
from semgrad_guard.scoring import streaming
from semgrad_guard.serve import BackgroundServer, ServeSettings, create_app
from semgrad_guard.serve.app import default_stream_mode
from semgrad_guard.testing import tiny_chat_model
from semgrad_guard.testing.streams import FailOn, ForcedAnswer, stub_score_span

openai = pytest.importorskip("openai")  # in the dev extra

CHAT = [{"role": "user", "content": "Count to six."}]
ANSWER = "One. Two. Three. Four. Five. Six."
STEP_S = 0.03  # per generated token: the stream has time to show it streams


class Paced(SemGradScorer):
    """The tiny model made to say ``text``, ``STEP_S`` per token; ``steps``: the last generation's."""

    text = ANSWER
    force: ForcedAnswer | None = None

    def generate(self, messages, **kwargs):
        self.force = ForcedAnswer(self, self.text, STEP_S)
        kwargs["logits_processor"] = LogitsProcessorList([self.force])
        return super().generate(messages, **kwargs)

    @property
    def steps(self) -> int:
        return self.force.steps if self.force else 0


@pytest.fixture
def paced():
    model, tok = tiny_chat_model("llama", seed=1)
    return Paced(model, tok, profile=ModelProfile(anchor_offset=-3, layers=[2, 3]), model_id="tiny")


@pytest.fixture
def stub_spans(monkeypatch):
    """Span scores stubbed (the sentence's offsets and text) until the span scores land."""
    monkeypatch.setattr(streaming, "score_span", stub_score_span)


ACCEPT_ALL = GuardPolicy.from_dict({"rules": [{"name": "all", "action": "accept"}]})
STRICT = GuardPolicy.from_dict(
    {
        "rules": [
            {"name": "low", "field": "semgrad", "max": 1e9, "action": "accept"},
            {"name": "high", "action": "abstain"},
        ]
    }
)


def timed(oa, mode: str | None, **kw):
    """The stream's chunks with their arrival times (seconds from the request)."""
    extra = {"extra_body": {"semgrad": {"stream_mode": mode}}} if mode else {}
    t0 = time.perf_counter()
    out = []
    for chunk in oa.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=40, stream=True, **extra, **kw
    ):
        out.append((time.perf_counter() - t0, chunk))
    return out


def content(chunks) -> list[tuple[float, str]]:
    return [(t, c.choices[0].delta.content) for t, c in chunks if c.choices and c.choices[0].delta.content]


def test_observe_and_gate_deliver_text_well_before_the_end_and_hold_does_not(paced, stub_spans):
    app = create_app(paced, policy=ACCEPT_ALL, span_policy=FailOn("nothing fails"))
    with BackgroundServer(app) as server:
        oa = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        runs = {mode: timed(oa, mode) for mode in ("observe", "gate", "hold")}
    total = len(paced.tokenizer.encode(ANSWER, add_special_tokens=False)) * STEP_S
    for mode in ("observe", "gate"):
        pieces = content(runs[mode])
        last_t = runs[mode][-1][0]
        assert "".join(p for _, p in pieces) == ANSWER, mode
        # The first text comes with the first token (observe) or sentence (gate), long before the end.
        assert pieces[0][0] < last_t - total / 2, (mode, pieces[0][0], last_t)
        final = next(c for _, c in runs[mode] if c.choices and c.choices[0].finish_reason)
        payload = ScorePayload.read(final.choices[0].model_extra)
        assert payload.action == "accept" and payload.result.answer_tokens > 10
        assert final.choices[0].finish_reason == "stop"
    assert [p for _, p in content(runs["gate"])] == ["One.", " Two.", " Three.", " Four.", " Five.", " Six."]
    held = content(runs["hold"])
    assert len(held) == 1 and held[0][1] == ANSWER  # all at once, once judged (as before)
    assert held[0][0] > total * 0.9


def test_gate_ends_the_stream_at_a_failing_sentence_and_stops_generating(paced, stub_spans):
    app = create_app(paced, policy=STRICT, span_policy=FailOn("Two"))
    with BackgroundServer(app) as server:
        oa = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        chunks = timed(oa, "gate")
    texts = [p for _, p in content(chunks)]
    assert texts == ["One.", "\n\n" + STRICT.abstain_message]
    final = chunks[-1][1]
    assert final.choices[0].finish_reason == "content_filter"
    payload = ScorePayload.read(final.choices[0].model_extra)
    assert payload.action == "abstain" and payload.rule == "span"
    extra = payload.model_extra
    assert extra["stream_mode"] == "gate"
    assert extra["stopped"]["text"] == "Two." and extra["stopped"]["generation_stopped"] is True
    # Generation stopped one token after "Two.": a fraction of the answer's tokens ran.
    full = len(paced.tokenizer.encode(ANSWER, add_special_tokens=False)) + 1
    assert payload.result.answer_tokens == 5 and paced.steps == 5 < full


def test_gate_review_queues_the_whole_answer_and_ends_with_the_pending_message(paced, stub_spans, tmp_path):
    from semgrad_guard import SQLiteReviewQueue

    db = tmp_path / "review.db"
    policy = GuardPolicy.from_dict({**STRICT.model_dump(mode="json"), "review": {"path": str(db)}})
    app = create_app(paced, policy=policy, span_policy=FailOn("Three", "review"))
    with BackgroundServer(app) as server:
        oa = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        chunks = timed(oa, "gate")
    assert [p for _, p in content(chunks)] == ["One.", " Two.", "\n\n" + policy.review.pending_message]
    payload = ScorePayload.read(chunks[-1][1].choices[0].model_extra)
    assert payload.action == "review" and payload.review_status == "pending"
    item = SQLiteReviewQueue(db).get(payload.review_id)
    assert item.answer == ANSWER  # generation finished: the reviewer sees the whole answer


def test_a_client_that_disconnects_stops_generation(paced):
    paced.text = " ".join(["word"] * 80)
    app = create_app(paced, settings=ServeSettings(max_new_tokens=100))
    with BackgroundServer(app) as server:
        body = {"model": "tiny", "messages": CHAT, "max_tokens": 90, "stream": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            while '"content": "word' not in next(lines):
                pass
        # Closed after the first word: the server notices and the next decode step stops.
        deadline = time.monotonic() + 10
        seen = -1
        while time.monotonic() < deadline and seen != paced.steps:
            seen = paced.steps
            time.sleep(10 * STEP_S)
    assert paced.steps < 40, f"generation ran {paced.steps} of 81 steps after the client left"


def test_the_default_mode_keeps_the_policys_promise():
    assert default_stream_mode(None) == "observe"
    assert default_stream_mode(ACCEPT_ALL) == "observe"
    assert default_stream_mode(STRICT) == "hold"


async def test_observe_under_a_review_policy_is_refused_unless_unreviewed_answers_are_allowed():
    from semgrad_guard import MockScorer

    policy = GuardPolicy.from_dict(
        {"rules": [{"field": "semgrad", "max": 0.5, "action": "accept"}, {"action": "review"}]}
    )
    body = {"model": "mock", "messages": CHAT, "stream": True, "semgrad": {"stream_mode": "observe"}}
    for allowed, status in ((None, 400), (True, 200)):
        app = create_app(
            MockScorer(lambda m, a: 0.2, answers=[ANSWER]),
            policy=policy,
            settings=ServeSettings(generate_unreviewed=allowed),
        )
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            r = await c.post("/v1/chat/completions", json=body)
        assert r.status_code == status, r.text
        if status == 400:
            assert r.json()["type"] == "ConfigurationError" and "'gate'" in r.json()["message"]


async def test_a_bad_stream_mode_is_a_422_naming_the_modes():
    from semgrad_guard import MockScorer

    app = create_app(MockScorer(lambda m, a: 0.2, answers=[ANSWER]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        body = {"model": "mock", "messages": CHAT, "stream": True, "semgrad": {"stream_mode": "live"}}
        r = await c.post("/v1/chat/completions", json=body)
        assert r.status_code == 422 and "'observe', 'gate' or 'hold'" in r.json()["message"]
        r = await c.post(
            "/v1/chat/completions",
            json={**body, "semgrad": None},
            headers={"x-semgrad-stream-mode": "live"},
        )
        assert r.status_code == 400 and "got 'live'" in r.json()["message"]


def test_check_stream_mode_is_the_one_check():
    with pytest.raises(ConfigurationError, match="got 'live'"):
        streaming.check_stream_mode("live")


def test_without_a_span_policy_gate_judges_each_sentence_by_the_answer_policy(paced, monkeypatch):
    from types import SimpleNamespace

    def scored(scorer, messages, answer, span):
        value = 0.9 if "Three" in answer[span[0] : span[1]] else 0.1
        fields = dict.fromkeys(("semgrad", "hybridgrad", "exgrad", "nll", "mean_nll", "mean_entropy"), value)
        return SimpleNamespace(
            start=span[0], end=span[1], text=answer[span[0] : span[1]], token_start=0, token_end=2, **fields
        )

    monkeypatch.setattr(streaming, "score_span", scored)
    policy = GuardPolicy.from_dict(
        {
            "rules": [
                {"name": "low", "field": "semgrad", "max": 0.5, "action": "accept"},
                {"name": "high", "action": "abstain"},
            ]
        }
    )
    app = create_app(paced, policy=policy)
    with BackgroundServer(app) as server:
        oa = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        chunks = timed(oa, "gate")
    assert [p for _, p in content(chunks)] == ["One.", " Two.", "\n\n" + policy.abstain_message]
    stopped = ScorePayload.read(chunks[-1][1].choices[0].model_extra).model_extra["stopped"]
    assert stopped["text"] == "Three." and "'high'" in stopped["reason"]


def test_the_cli_stream_mode_reaches_the_settings_and_is_the_default(monkeypatch):
    from semgrad_guard import MockScorer
    from semgrad_guard.cli import build_parser
    from semgrad_guard.cli.serve import settings_from_args
    from semgrad_guard.serve.app import _stream_mode, build_state

    parse = build_parser().parse_args
    assert settings_from_args(parse(["serve"]))[0].stream_mode is None
    settings = settings_from_args(parse(["serve", "--stream-mode", "gate"]))[0]
    assert settings.stream_mode == "gate"
    state = build_state(MockScorer(lambda m, a: 0.1, answers=["x"]), policy=STRICT, settings=settings)
    assert _stream_mode(state, None) == "gate" and _stream_mode(state, "hold") == "hold"
    with pytest.raises(SystemExit):
        parse(["serve", "--stream-mode", "live"])


async def test_a_backend_that_cannot_stream_holds_by_default_and_refuses_a_live_mode():
    from semgrad_guard import MockScorer
    from semgrad_guard.serve.batching import MicroBatcher

    class NoStreams(MicroBatcher):
        astream = None  # as the Ray Serve backend: no streamed generation

    def factory(scorer, settings, metrics):
        return NoStreams(scorer)

    app = create_app(MockScorer(lambda m, a: 0.2, answers=[ANSWER]), backend_factory=factory)
    body = {"model": "mock", "messages": CHAT, "stream": True}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200 and r.headers["x-semgrad-stream-mode"] == "hold"
        r = await c.post("/v1/chat/completions", json={**body, "semgrad": {"stream_mode": "observe"}})
        assert r.status_code == 400 and "ask for stream_mode 'hold'" in r.json()["message"]


async def test_gate_without_a_policy_or_a_span_policy_is_a_400_naming_the_fix():
    from semgrad_guard import MockScorer

    app = create_app(MockScorer(lambda m, a: 0.2, answers=[ANSWER]))
    body = {"model": "mock", "messages": CHAT, "stream": True, "semgrad": {"stream_mode": "gate"}}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "ConfigurationError"
    assert "needs a span policy" in r.json()["message"] and "--policy" in r.json()["message"]
