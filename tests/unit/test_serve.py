"""The scoring service: parity with in-process scores, batching, every route's error paths, token, limits."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest

from semgrad_guard import GuardPolicy, MockScorer, ScorePayload, SQLiteReviewQueue
from semgrad_guard.serve import BackgroundServer, ServeSettings, create_app
from semgrad_guard.testing import tiny_scorer

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = [{"role": "user", "content": "Which gas do plants take in during photosynthesis?"}]
FIELDS = ("semgrad", "hybridgrad", "exgrad", "nll", "mean_nll", "mean_entropy")


def close(got: dict, want, rel: float = 1e-6) -> None:
    for name in FIELDS:
        w = getattr(want, name)
        assert abs(got[name] - w) <= rel * abs(w), f"{name}: service {got[name]!r} vs in-process {w!r}"


@pytest.fixture(scope="module")
def tiny():
    return tiny_scorer("llama")


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def accept_below(x: float, **extra) -> GuardPolicy:
    return GuardPolicy.from_dict(
        {
            "rules": [
                {"name": "low", "field": "semgrad", "max": x, "action": "accept"},
                {"name": "high", "action": "abstain"},
            ],
            **extra,
        }
    )


# ------------------------------------------------------------------------------------------ parity
async def test_single_and_batched_scores_equal_in_process_scores(tiny):
    answers = ["Carbon dioxide.", "Oxygen, mostly.", "Nitrogen, I believe, in large amounts."]
    want_one = tiny.score(CHAT, answers[0])
    want_batch = tiny.score_batch([(CHAT, a) for a in answers])
    async with client(create_app(tiny)) as c:
        one = (await c.post("/v1/score", json={"messages": CHAT, "answer": answers[0]})).json()
        batch = (
            await c.post(
                "/v1/score/batch", json={"items": [{"messages": CHAT, "answer": a} for a in answers]}
            )
        ).json()
    close(one["scores"], want_one)
    assert one["result"]["answer_tokens"] == want_one.answer_tokens and one["source"] == "service"
    for got, want in zip(batch["items"], want_batch, strict=True):
        close(got["scores"], want)
    got = ScorePayload.read({"semgrad": one}).result
    assert got.model_dump(exclude=set(FIELDS)) == want_one.model_dump(exclude=set(FIELDS))


async def test_concurrent_requests_are_scored_in_batches_on_one_worker():
    sizes, threads = [], set()

    class Recording(MockScorer):
        def score_batch(self, pairs):
            sizes.append(len(pairs))
            threads.add(threading.get_ident())
            return super().score_batch(pairs)

    app = create_app(Recording(lambda m, a: 0.3), settings=ServeSettings(max_batch_size=8, max_wait_ms=200))
    async with client(app) as c:
        rs = await asyncio.gather(
            *(c.post("/v1/score", json={"messages": "q", "answer": f"a{i}"}) for i in range(8))
        )
    assert [r.status_code for r in rs] == [200] * 8
    assert sum(sizes) == 8 and max(sizes) > 1, sizes
    assert len(threads) == 1


async def test_one_bad_pair_fails_only_its_own_request(tiny):
    app = create_app(tiny, settings=ServeSettings(max_batch_size=8, max_wait_ms=200, max_answer_chars=10**6))
    long = "word " * 5000  # over the tiny model's 4096-token context
    async with client(app) as c:
        good, bad = await asyncio.gather(
            c.post("/v1/score", json={"messages": CHAT, "answer": "Carbon dioxide."}),
            c.post("/v1/score", json={"messages": CHAT, "answer": long}),
        )
    assert good.status_code == 200
    close(good.json()["scores"], tiny.score(CHAT, "Carbon dioxide."))
    assert bad.status_code == 400 and bad.json()["type"] == "ContextLengthError"
    assert bad.json()["details"]["limit"] == 4096


# ------------------------------------------------------------------------------------------ verdicts
async def test_score_reports_the_policy_verdict():
    app = create_app(MockScorer(lambda m, a: 0.9 if "Sydney" in a else 0.1), policy=accept_below(0.5))
    async with client(app) as c:
        ok = (
            await c.post("/v1/score", json={"messages": "Capital of Australia?", "answer": "Canberra"})
        ).json()
        bad = (
            await c.post("/v1/score", json={"messages": "Capital of Australia?", "answer": "Sydney"})
        ).json()
    assert (ok["action"], ok["rule"]) == ("accept", "low")
    assert (bad["action"], bad["rule"]) == ("abstain", "high")


async def test_chat_completion_abstain_replaces_the_content_as_the_guard_does():
    policy = accept_below(0.5, abstain_message="No confident answer.")
    app = create_app(MockScorer(lambda m, a: 0.9, answers=["Sydney"]), policy=policy)
    async with client(app) as c:
        r = await c.post(
            "/v1/chat/completions",
            json={"model": "mock", "messages": [{"role": "user", "content": "Capital?"}]},
        )
    assert r.status_code == 200
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == "No confident answer."
    assert choice["semgrad"]["action"] == "abstain" and r.headers["x-semgrad-action"] == "abstain"
    assert ScorePayload.read(choice).result.semgrad == 0.9
    assert json.loads(r.headers["x-semgrad-payload"]) == choice["semgrad"]


async def test_chat_completion_review_returns_the_pending_message_and_review_id(tmp_path):
    db = tmp_path / "review.db"
    policy = GuardPolicy.from_dict(
        {
            "rules": [
                {"field": "semgrad", "max": 0.5, "action": "accept"},
                {"name": "unsure", "action": "review"},
            ],
            "review": {"path": str(db)},
        }
    )
    app = create_app(MockScorer(lambda m, a: 0.7, answers=["Sydney"]), policy=policy)
    async with client(app) as c:
        r = await c.post(
            "/v1/chat/completions",
            json={"model": "mock", "messages": [{"role": "user", "content": "Capital?"}]},
        )
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == policy.review.pending_message
    review_id = choice["semgrad"]["review_id"]
    assert review_id is not None and r.headers["x-semgrad-review-id"] == str(review_id)
    item = SQLiteReviewQueue(db).get(review_id)
    assert item.answer == "Sydney"


async def test_streaming_chat_completion_puts_the_score_on_the_final_chunk():
    app = create_app(
        MockScorer(lambda m, a: 0.2, answers=["Canberra is the capital of Australia. " * 4]),
        policy=accept_below(0.5),
    )
    async with client(app) as c:
        r = await c.post(
            "/v1/chat/completions",
            json={
                "model": "mock",
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "Capital?"}],
            },
        )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"])
    assert text == "Canberra is the capital of Australia. " * 4
    finals = [ch["choices"][0] for ch in chunks if ch["choices"] and ch["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["semgrad"]["action"] == "accept"
    assert all(
        "semgrad" not in ch["choices"][0]
        for ch in chunks
        if ch["choices"] and not ch["choices"][0]["finish_reason"]
    )
    assert chunks[-1]["usage"]["completion_tokens"] == finals[0]["semgrad"]["result"]["answer_tokens"]


# ------------------------------------------------------------------------------------------ token
ROUTES = [
    ("POST", "/v1/score", {"messages": "q", "answer": "a"}),
    ("POST", "/v1/score/batch", {"items": [{"messages": "q", "answer": "a"}]}),
    ("POST", "/v1/generate", {"messages": "q"}),
    ("POST", "/v1/chat/completions", {"model": "mock", "messages": [{"role": "user", "content": "q"}]}),
    ("GET", "/v1/models", None),
    ("GET", "/metrics", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[r[1] for r in ROUTES])
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}],
    ids=["missing", "wrong", "no-scheme"],
)
async def test_every_route_but_health_needs_the_token(method, path, body, headers):
    app = create_app(MockScorer(lambda m, a: 0.1, answers=["a"]), token=TOKEN)
    async with client(app) as c:
        denied = await c.request(method, path, json=body, headers=headers)
        allowed = await c.request(method, path, json=body, headers=AUTH)
    assert denied.status_code == 401
    assert denied.json()["type"] == "ServiceAuthError" and "Bearer" in denied.json()["message"]
    assert denied.headers["www-authenticate"] == "Bearer"
    assert allowed.status_code == 200


async def test_health_routes_answer_without_the_token():
    app = create_app(MockScorer(lambda m, a: 0.1), token=TOKEN)
    async with client(app) as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        ready = await c.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


# ------------------------------------------------------------------------------------------ limits
async def test_oversize_bodies_are_413_with_or_without_content_length():
    app = create_app(MockScorer(lambda m, a: 0.1), settings=ServeSettings(max_body_bytes=2048))
    big = {"messages": "q", "answer": "x" * 4000}

    async def chunked():
        raw = json.dumps(big).encode()
        for i in range(0, len(raw), 500):
            yield raw[i : i + 500]

    async with client(app) as c:
        declared = await c.post("/v1/score", json=big)
        streamed = await c.post("/v1/score", content=chunked(), headers={"content-type": "application/json"})
    for r in (declared, streamed):
        assert r.status_code == 413
        assert r.json()["type"] == "RequestTooLargeError" and "2048 bytes" in r.json()["message"]


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/v1/score", {"messages": "q", "answer": "x" * 101}, "101 characters"),
        ("/v1/score/batch", {"items": [{"messages": "q", "answer": "a"}] * 5}, "5 items"),
        (
            "/v1/chat/completions",
            {"model": "mock", "max_tokens": 65, "messages": [{"role": "user", "content": "q"}]},
            "max_tokens=65",
        ),
        ("/v1/generate", {"messages": "q", "max_new_tokens": 65}, "max_tokens=65"),
    ],
)
async def test_answer_length_batch_size_and_new_tokens_are_bounded(path, body, words):
    settings = ServeSettings(max_answer_chars=100, max_batch_items=4, max_new_tokens=64)
    app = create_app(MockScorer(lambda m, a: 0.1, answers=["a"]), settings=settings)
    async with client(app) as c:
        r = await c.post(path, json=body)
    assert r.status_code == 413, r.text
    assert r.json()["type"] == "RequestTooLargeError" and words in r.json()["message"]


async def test_a_full_queue_answers_503_with_retry_after():
    entered, release = threading.Event(), threading.Event()

    class Slow(MockScorer):
        def score_batch(self, pairs):
            entered.set()
            release.wait(10)
            return super().score_batch(pairs)

    app = create_app(
        Slow(lambda m, a: 0.1),
        settings=ServeSettings(max_batch_size=1, max_wait_ms=0, max_queue=1, retry_after_s=3),
    )
    state = app.state.semgrad
    async with client(app) as c:
        body = {"messages": "q", "answer": "a"}
        first = asyncio.ensure_future(c.post("/v1/score", json=body))
        await asyncio.to_thread(entered.wait, 10)
        second = asyncio.ensure_future(c.post("/v1/score", json=body))
        while state.backend.queue_depth() < 1:
            await asyncio.sleep(0.01)
        third = await c.post("/v1/score", json=body)
        busy = await c.get("/readyz")
        release.set()
        rs = await asyncio.gather(first, second)
    assert third.status_code == 503 and third.headers["retry-after"] == "3"
    assert third.json()["type"] == "ServiceUnavailableError" and "queue is full" in third.json()["message"]
    assert busy.status_code == 503
    assert [r.status_code for r in rs] == [200, 200]


# ------------------------------------------------------------------------------------------ bad input
BAD = [
    ("/v1/score", {"messages": "q"}, 422, "RequestValidationError", "answer"),
    ("/v1/score", {"messages": "q", "answer": 3}, 422, "RequestValidationError", "answer"),
    ("/v1/score", {"messages": "q", "answer": "a", "extra": 1}, 422, "RequestValidationError", "extra"),
    (
        "/v1/score",
        {"messages": [{"role": "wizard", "content": "q"}], "answer": "a"},
        422,
        "UnknownRoleError",
        "wizard",
    ),
    ("/v1/score", {"messages": [], "answer": "a"}, 400, "ScoringError", "empty"),
    ("/v1/score", {"messages": [{"role": "user"}], "answer": "a"}, 400, "ScoringError", "no 'content'"),
    ("/v1/score", {"messages": "q", "answer": "\ud800"}, 400, "ScoringError", "surrogate"),
    (
        "/v1/score",
        {"messages": "q", "answer": "a", "model": "gpt-4o"},
        404,
        "ServedModelMismatchError",
        "gpt-4o",
    ),
    ("/v1/score/batch", {"items": []}, 422, "RequestValidationError", "items"),
    (
        "/v1/score/batch",
        {
            "items": [
                {"messages": "q", "answer": "a"},
                {"messages": [{"role": "bot", "content": "q"}], "answer": "a"},
            ]
        },
        422,
        "UnknownRoleError",
        "items[1]",
    ),
    ("/v1/generate", {"messages": [{"role": "wizard", "content": "q"}]}, 422, "UnknownRoleError", "wizard"),
    ("/v1/generate", {"messages": "q", "temperature": 0}, 422, "RequestValidationError", "temperature"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "q"}]},
        422,
        "RequestValidationError",
        "model",
    ),
    ("/v1/chat/completions", {"model": "mock", "messages": []}, 422, "RequestValidationError", "messages"),
    (
        "/v1/chat/completions",
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "q"}]},
        404,
        "ServedModelMismatchError",
        "gpt-4o",
    ),
    (
        "/v1/chat/completions",
        {"model": "mock", "n": 2, "messages": [{"role": "user", "content": "q"}]},
        400,
        "ConfigurationError",
        "n (one choice",
    ),
    (
        "/v1/chat/completions",
        {"model": "mock", "tools": [{"type": "function"}], "messages": [{"role": "user", "content": "q"}]},
        400,
        "ConfigurationError",
        "tools",
    ),
    (
        "/v1/chat/completions",
        {
            "model": "mock",
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
        },
        400,
        "ScoringError",
        "image_url",
    ),
    (
        "/v1/chat/completions",
        {"model": "mock", "messages": [{"role": "wizard", "content": "q"}]},
        422,
        "UnknownRoleError",
        "wizard",
    ),
    (
        "/v1/chat/completions",
        {"model": "mock", "temperature": 3, "messages": [{"role": "user", "content": "q"}]},
        422,
        "RequestValidationError",
        "temperature",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "kind", "words"), BAD, ids=[f"{b[0]}-{b[3]}-{i}" for i, b in enumerate(BAD)]
)
async def test_bad_input_gets_4xx_with_type_and_message(path, body, status, kind, words):
    app = create_app(MockScorer(lambda m, a: 0.1, answers=["a"], model_id="mock"))
    async with client(app) as c:
        r = await c.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["type"] == kind and words in r.json()["message"], r.json()


async def test_not_json_unknown_routes_and_methods_keep_the_error_shape():
    app = create_app(MockScorer(lambda m, a: 0.1))
    async with client(app) as c:
        garbage = await c.post(
            "/v1/score", content=b"{not json", headers={"content-type": "application/json"}
        )
        missing = await c.get("/v2/score")
        method = await c.get("/v1/score")
    assert (garbage.status_code, garbage.json()["type"]) == (422, "RequestValidationError")
    assert (missing.status_code, missing.json()["type"]) == (404, "NotFound")
    assert (method.status_code, method.json()["type"]) == (405, "MethodNotAllowed")


async def test_template_errors_are_422_not_500():
    gemma = tiny_scorer("gemma2")  # its template refuses a system role
    app = create_app(gemma)
    async with client(app) as c:
        r = await c.post(
            "/v1/score",
            json={
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}],
                "answer": "a",
            },
        )
    assert r.status_code == 422 and r.json()["type"] == "ChatTemplateError"


async def test_a_scorer_that_cannot_generate_says_so():
    class ScoreOnly:
        model_id = "score-only"

        def __init__(self):
            self._m = MockScorer(lambda m, a: 0.1)

        def score(self, m, a):
            return self._m.score(m, a)

        def score_batch(self, pairs):
            return self._m.score_batch(pairs)

        async def ascore(self, m, a):
            return self.score(m, a)

        async def ascore_batch(self, pairs):
            return self.score_batch(pairs)

    async with client(create_app(ScoreOnly())) as c:
        r = await c.post(
            "/v1/chat/completions",
            json={"model": "score-only", "messages": [{"role": "user", "content": "q"}]},
        )
    assert r.status_code == 400 and "cannot generate" in r.json()["message"]


async def test_policy_action_raise_is_422_with_the_payload():
    policy = GuardPolicy.from_dict(
        {"rules": [{"field": "semgrad", "max": 0.5, "action": "accept"}, {"name": "no", "action": "raise"}]}
    )
    app = create_app(MockScorer(lambda m, a: 0.9, answers=["Sydney"]), policy=policy)
    async with client(app) as c:
        r = await c.post(
            "/v1/chat/completions", json={"model": "mock", "messages": [{"role": "user", "content": "q"}]}
        )
    assert r.status_code == 422 and r.json()["type"] == "AnswerRejectedError"
    assert r.json()["details"]["semgrad"]["action"] == "raise"


# ------------------------------------------------------------------------------------------ models, metrics
async def test_models_describes_the_served_model(tiny):
    from semgrad_guard.scoring.identity import weights_fingerprint
    from semgrad_guard.scoring.profile import chat_template_hash

    app = create_app(tiny, settings=ServeSettings(model_aliases=["tiny"]))
    async with client(app) as c:
        data = (await c.get("/v1/models")).json()["data"]
    (model,) = data
    info = model["semgrad"]
    assert model["id"] == "tiny-random-llama" and info["aliases"] == ["tiny"]
    assert info["weights_hash"] == weights_fingerprint(tiny.model)
    assert info["chat_template_hash"] == chat_template_hash(tiny.chat_template)
    assert info["profile"]["layers"] == tiny.profile.layers and info["context_window"] == 4096


async def test_metrics_count_requests_batches_errors_and_decisions_per_app():
    app = create_app(MockScorer(lambda m, a: 0.1), policy=accept_below(0.5))
    other = create_app(MockScorer(lambda m, a: 0.1))
    async with client(app) as c:
        await c.post("/v1/score", json={"messages": "q", "answer": "a"})
        await c.post("/v1/score", json={"messages": [{"role": "wizard", "content": "q"}], "answer": "a"})
        text = (await c.get("/metrics")).text
    async with client(other) as c:
        other_text = (await c.get("/metrics")).text
    assert 'semgrad_requests_total{method="POST",route="/v1/score",status="200"} 1.0' in text
    assert 'semgrad_requests_total{method="POST",route="/v1/score",status="422"} 1.0' in text
    assert 'semgrad_errors_total{type="UnknownRoleError"} 1.0' in text
    assert 'semgrad_decisions_total{action="accept"} 1.0' in text
    assert 'semgrad_batch_size_count{kind="score"} 1.0' in text
    assert "semgrad_queue_depth 0.0" in text and "semgrad_request_latency_seconds_bucket" in text
    assert 'route="/v1/score"' not in other_text


async def test_a_loader_runs_once_on_first_use():
    calls = []

    def load():
        calls.append(1)
        return MockScorer(lambda m, a: 0.1, model_id="lazy")

    app = create_app(load)
    async with client(app) as c:
        ready = await asyncio.gather(c.get("/readyz"), c.get("/readyz"))
        scored = await c.post("/v1/score", json={"messages": "q", "answer": "a", "model": "lazy"})
    assert [r.status_code for r in ready] == [200, 200] and scored.status_code == 200 and calls == [1]


# ------------------------------------------------------------------------------------------ OpenAI client
def test_the_openai_client_gets_guarded_scored_answers(tiny):
    openai = pytest.importorskip("openai")  # in the dev extra
    messages = [{"role": "user", "content": "Name a primary colour."}]
    want_text, want = tiny.generate(messages, max_new_tokens=12)
    app = create_app(tiny, token=TOKEN, policy=accept_below(1e9))
    with BackgroundServer(app) as server:
        oa = openai.OpenAI(base_url=server.url + "/v1", api_key=TOKEN, max_retries=0)
        completion = oa.chat.completions.create(model="tiny-random-llama", messages=messages, max_tokens=12)
        stream = list(
            oa.chat.completions.create(
                model="tiny-random-llama", messages=messages, max_tokens=12, stream=True
            )
        )
        raw = oa.chat.completions.with_raw_response.create(
            model="tiny-random-llama", messages=messages, max_tokens=12
        )
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
        with pytest.raises(openai.UnprocessableEntityError, match="unknown role 'wizard'"):
            oa.chat.completions.create(
                model="tiny-random-llama", messages=[{"role": "wizard", "content": "q"}]
            )
        assert [m.id for m in oa.models.list()] == ["tiny-random-llama"]
    choice = completion.choices[0]
    assert choice.message.content == want_text
    payload = ScorePayload.read(choice.model_extra)
    assert payload.action == "accept" and payload.source == "service"
    close(payload.result.model_dump(), want)
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == want_text
    assert ScorePayload.read(stream[-1].choices[0].model_extra).result == payload.result
    assert raw.headers["x-semgrad-action"] == "accept"


# ------------------------------------------------------------------------------------------ CLI
def test_serve_refuses_a_non_local_host_without_a_token(capsys, monkeypatch):
    from semgrad_guard.cli import main

    monkeypatch.delenv("SEMGRAD_GUARD_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--model", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "refusing to bind '0.0.0.0' without a bearer token" in err and "--token-file" in err


def test_serve_settings_take_the_token_from_the_file_or_the_environment(tmp_path, monkeypatch):
    from semgrad_guard.cli import build_parser
    from semgrad_guard.cli.serve import settings_from_args
    from semgrad_guard.errors import ConfigurationError

    monkeypatch.setenv("SEMGRAD_GUARD_TOKEN", "from-env")
    args = build_parser().parse_args(
        ["serve", "--host", "0.0.0.0", "--port", "9000", "--max-batch-size", "4"]
    )
    settings, token = settings_from_args(args)
    assert (token, settings.host, settings.port, settings.max_batch_size) == ("from-env", "0.0.0.0", 9000, 4)
    assert settings.model_aliases == ["default"]
    (tmp_path / "token").write_text("from-file\n")
    args = build_parser().parse_args(["serve", "--token-file", str(tmp_path / "token")])
    assert settings_from_args(args)[1] == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigurationError, match="is empty"):
        settings_from_args(build_parser().parse_args(["serve", "--token-file", str(tmp_path / "empty")]))
    monkeypatch.delenv("SEMGRAD_GUARD_TOKEN")
    assert settings_from_args(build_parser().parse_args(["serve", "--host", "::1"]))[1] is None
