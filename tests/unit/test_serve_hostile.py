"""The service under hostile input: bad batches, out-of-range sampling, refused parameters, broken
connections, slow bodies, tokens with whitespace, taken ports (issue 18)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import sys
import time

import httpx
import pytest

from semgrad_guard import ConfigurationError, GuardPolicy, MockScorer
from semgrad_guard.cli import build_parser
from semgrad_guard.cli.serve import MAX_TOKEN_FILE_BYTES, read_token, settings_from_args
from semgrad_guard.serve import BackgroundServer, ServeSettings, create_app
from semgrad_guard.serve.server import address_of, bind
from semgrad_guard.testing import tiny_scorer

CHAT = [{"role": "user", "content": "Which gas do plants take in during photosynthesis?"}]
USER = [{"role": "user", "content": "q"}]


@pytest.fixture(scope="module")
def tiny():
    return tiny_scorer("llama")


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def generating() -> MockScorer:
    return MockScorer(lambda m, a: 0.25, answers=["Carbon dioxide."], model_id="mock")


# ------------------------------------------------------------------------------------------ batches
async def test_a_batch_with_one_bad_item_is_refused_before_scoring_and_health_keeps_answering(
    tiny, monkeypatch
):
    scored: list[int] = []
    real = tiny.score_token_ids
    monkeypatch.setattr(tiny, "score_token_ids", lambda ex: scored.append(len(ex)) or real(ex))
    app = create_app(tiny, settings=ServeSettings(max_answer_chars=10**6))
    items = [{"messages": CHAT, "answer": f"Carbon dioxide, {i}."} for i in range(63)]
    items.append({"messages": CHAT, "answer": "word " * 5000})  # over the 4096-token context
    latencies: list[float] = []
    async with client(app) as c:
        done = asyncio.Event()

        async def probe() -> None:
            while not done.is_set():
                t0 = time.perf_counter()
                assert (await c.get("/healthz")).status_code == 200
                latencies.append(time.perf_counter() - t0)
                await asyncio.sleep(0.005)

        async def bad_batch() -> httpx.Response:
            try:
                return await c.post("/v1/score/batch", json={"items": items})
            finally:
                done.set()

        prober = asyncio.create_task(probe())
        response = await bad_batch()
        await prober
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["type"] == "ContextLengthError" and body["message"].startswith("items[63]: ")
    assert scored == []  # refused before the model ran on any item
    assert latencies and max(latencies) < 0.1, latencies


async def test_a_failure_while_scoring_names_the_item():
    scorer = MockScorer(lambda m, a: 0.25)
    app = create_app(scorer, settings=ServeSettings(max_batch_size=8))

    def score_batch(pairs):
        if any(a == "bad" for _, a in pairs):
            from semgrad_guard import NonFiniteGradientError

            raise NonFiniteGradientError("the gradient is not finite")
        return [scorer.score(m, a) for m, a in pairs]

    scorer.score_batch = score_batch  # type: ignore[method-assign]
    items = [{"messages": "q", "answer": a} for a in ("ok", "ok", "bad", "ok")]
    async with client(app) as c:
        r = await c.post("/v1/score/batch", json={"items": items})
    assert r.status_code == 422 and r.json()["message"].startswith("items[2]: "), r.text


# ------------------------------------------------------------------------------------------ sampling bounds
@pytest.mark.parametrize(
    ("route", "body", "bound"),
    [
        ("/v1/chat/completions", {"temperature": 1e-40}, "0.001"),
        ("/v1/chat/completions", {"temperature": 1e-300, "stream": True}, "0.001"),
        ("/v1/chat/completions", {"seed": 2**64}, "18446744073709551615"),
        ("/v1/chat/completions", {"seed": -(2**70)}, "-9223372036854775808"),
        ("/v1/chat/completions", {"max_tokens": True}, "valid integer"),
        ("/v1/generate", {"temperature": 1e-40, "do_sample": True}, "0.001"),
        ("/v1/generate", {"seed": 2**64}, "18446744073709551615"),
        ("/v1/generate", {"seed": -(2**70)}, "-9223372036854775808"),
        ("/v1/generate", {"max_new_tokens": True}, "valid integer"),
    ],
)
async def test_out_of_range_sampling_gets_a_422_naming_the_bound(route, body, bound):
    base = {"model": "mock", "messages": USER} if "chat" in route else {"messages": "q"}
    async with client(create_app(generating())) as c:
        r = await c.post(route, json={**base, **body})
    assert r.status_code == 422, r.text
    assert r.json()["type"] == "RequestValidationError" and bound in r.json()["message"]


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/generate"])
@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN"])
async def test_non_finite_temperature_is_refused(route, value):
    head = (
        '{"model": "mock", "messages": [{"role": "user", "content": "q"}]'
        if "chat" in route
        else '{"messages": "q", "do_sample": true'
    )
    async with client(create_app(generating())) as c:
        r = await c.post(
            route, content=f'{head}, "temperature": {value}}}', headers={"content-type": "application/json"}
        )
    assert r.status_code == 422 and "finite" in r.json()["message"], r.text


async def test_the_smallest_temperature_samples():
    async with client(create_app(generating())) as c:
        r = await c.post(
            "/v1/chat/completions",
            json={"model": "mock", "messages": USER, "temperature": 1e-3, "seed": 2**64 - 1},
        )
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------------------------------ parameters
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("frequency_penalty", 0.5),
        ("presence_penalty", 50),
        ("logit_bias", {"42": 10}),
        ("top_k", 5),
        ("functions", [{"name": "f", "parameters": {}}]),
        ("function_call", {"name": "f"}),
        ("parallel_tool_calls", True),
        ("top_logprobs", 3),
    ],
)
async def test_parameters_that_would_change_the_answer_are_refused(field, value):
    async with client(create_app(generating())) as c:
        r = await c.post("/v1/chat/completions", json={"model": "mock", "messages": USER, field: value})
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "ConfigurationError" and field in r.json()["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("frequency_penalty", 0),
        ("presence_penalty", 0.0),
        ("logit_bias", {}),
        ("user", "u1"),
        ("store", False),
    ],
)
async def test_neutral_parameters_are_accepted(field, value):
    async with client(create_app(generating())) as c:
        r = await c.post("/v1/chat/completions", json={"model": "mock", "messages": USER, field: value})
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------------------------------ connections
def _failing_scorer() -> MockScorer:
    def answers(messages, **kwargs):
        if "boom" in messages[-1]["content"]:
            raise RuntimeError("a fault inside the model")
        return "fine"

    return MockScorer(lambda m, a: 0.25, answers=answers, model_id="mock")


def test_a_500_answers_json_and_keeps_the_keep_alive_connection():
    with BackgroundServer(create_app(_failing_scorer())) as server:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=10)

        def post(content: str) -> tuple[int, dict]:
            body = json.dumps({"messages": content})
            conn.request("POST", "/v1/generate", body=body, headers={"content-type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read())

        status, body = post("boom")
        assert status == 500 and body["type"] == "InternalServerError"
        sock = conn.sock
        assert sock is not None  # the server did not ask to close
        for _ in range(20):
            status, body = post("hello")
            assert status == 200 and body["answer"] == "fine"
            assert conn.sock is sock  # the same connection throughout
        conn.close()


def test_a_body_that_never_arrives_gets_408_and_its_connection_closed():
    app = create_app(MockScorer(lambda m, a: 0.25), settings=ServeSettings(body_timeout_s=0.3))
    with (
        BackgroundServer(app) as server,
        socket.create_connection((server.host, server.port), timeout=5) as s,
    ):
        s.sendall(
            b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"messages": '
        )
        t0 = time.monotonic()
        received = b""
        while chunk := s.recv(65536):  # ends when the server closes the connection
            received += chunk
        assert time.monotonic() - t0 < 3
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), received
    assert json.loads(body)["type"] == "RequestTimeoutError"


@pytest.mark.parametrize(
    "raw",
    [
        b"NOT-HTTP\r\n\r\n",
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
    ],
    ids=["request-line", "content-length", "header"],
)
def test_broken_http_framing_gets_uvicorns_400_and_the_server_keeps_serving(raw):
    # Documented in docs/serve.md: refused by the HTTP server before the app sees it (plain text).
    with BackgroundServer(create_app(MockScorer(lambda m, a: 0.25))) as server:
        with socket.create_connection((server.host, server.port), timeout=5) as s:
            s.sendall(raw)
            received = b""
            while chunk := s.recv(65536):
                received += chunk
        assert received.startswith(b"HTTP/1.1 400"), received[:200]
        assert httpx.get(f"http://{server.host}:{server.port}/healthz", timeout=5).status_code == 200


# ------------------------------------------------------------------------------------------ disclosure
async def test_models_does_not_disclose_the_review_database_path(tmp_path):
    policy = GuardPolicy.from_dict(
        {
            "rules": [
                {"name": "r", "field": "semgrad", "min": 0.5, "action": "review"},
                {"name": "ok", "action": "accept"},
            ],
            "review": {"path": str(tmp_path / "secret-reviews.db")},
        }
    )
    async with client(create_app(MockScorer(lambda m, a: 0.25), policy=policy)) as c:
        r = await c.get("/v1/models")
    assert r.status_code == 200
    assert "secret-reviews" not in r.text
    assert r.json()["data"][0]["semgrad"]["policy"]["rules"][0]["name"] == "r"


# ------------------------------------------------------------------------------------------ tokens
def test_the_environment_token_is_stripped_like_the_header():
    assert read_token(None, {"SEMGRAD_GUARD_TOKEN": " tok\n"}) == "tok"
    assert read_token(None, {}) is None and read_token(None, {"SEMGRAD_GUARD_TOKEN": ""}) is None
    with pytest.raises(ConfigurationError, match="whitespace only"):
        read_token(None, {"SEMGRAD_GUARD_TOKEN": " \t\n"})


async def test_a_token_with_whitespace_opens_the_service_and_whitespace_only_is_refused():
    app = create_app(MockScorer(lambda m, a: 0.25), token=" tok\n")
    async with client(app) as c:
        r = await c.post(
            "/v1/score", json={"messages": "q", "answer": "a"}, headers={"Authorization": "Bearer tok"}
        )
    assert r.status_code == 200
    with pytest.raises(ConfigurationError, match="whitespace only"):
        create_app(MockScorer(lambda m, a: 0.25), token="   ")


def test_whitespace_only_tokens_do_not_pass_the_bind_check(monkeypatch):
    monkeypatch.setenv("SEMGRAD_GUARD_TOKEN", "   ")
    with pytest.raises(ConfigurationError, match="whitespace only"):
        settings_from_args(build_parser().parse_args(["serve", "--host", "0.0.0.0"]))


def test_the_token_file_gives_its_first_line_within_a_size_bound(tmp_path):
    path = tmp_path / "token"
    path.write_text("  first \nsecond line\n")
    assert read_token(path) == "first"
    path.write_bytes(b"x" * (MAX_TOKEN_FILE_BYTES + 10))
    with pytest.raises(ConfigurationError, match="no line break"):
        read_token(path)
    path.write_bytes(b"\xff\xfe\n")
    with pytest.raises(ConfigurationError, match="UTF-8"):
        read_token(path)
    with pytest.raises(ConfigurationError, match="no line break"):
        read_token(__import__("pathlib").Path("/dev/zero"))


# ------------------------------------------------------------------------------------------ ports
def test_port_zero_binds_a_real_port_and_a_taken_port_is_a_typed_error():
    sock = bind("127.0.0.1", 0)
    try:
        url = address_of(sock)
        port = int(url.rsplit(":", 1)[1])
        assert url.startswith("http://127.0.0.1:") and port > 0
        sock.listen()
        with pytest.raises(ConfigurationError, match=f"port {port} on 127.0.0.1 is already in use.*--port 0"):
            bind("127.0.0.1", port)
    finally:
        sock.close()


def test_serve_on_a_taken_port_is_a_one_line_error_before_serving():
    taken = bind("127.0.0.1", 0)
    taken.listen()
    port = taken.getsockname()[1]
    try:
        out = subprocess.run(
            [sys.executable, "-m", "semgrad_guard", "serve", "--port", str(port), "--threads", "1"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        taken.close()
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "already in use" in lines[0] and "--port 0" in lines[0], out.stderr
    assert "serving" not in out.stderr


# ------------------------------------------------------------------------------------------ finish and usage
class _EndsAtMax(MockScorer):
    """Generates exactly max_new_tokens tokens, cut (flag 'truncated') or ending with end-of-turn."""

    def __init__(self, cut: bool) -> None:
        super().__init__(lambda m, a: 0.25, answers=["Carbon dioxide."], model_id="mock")
        self.cut = cut

    def generate(self, messages, **kwargs):
        text, result = super().generate(messages, **kwargs)
        flags = ["truncated"] if self.cut else []
        return text, result.model_copy(update={"answer_tokens": kwargs["max_new_tokens"], "flags": flags})


@pytest.mark.parametrize(("cut", "finish"), [(True, "length"), (False, "stop")])
@pytest.mark.parametrize("stream", [False, True])
async def test_finish_reason_is_length_only_when_the_answer_was_cut(cut, finish, stream):
    body = {"model": "mock", "messages": USER, "max_tokens": 4, "stream": stream}
    async with client(create_app(_EndsAtMax(cut))) as c:
        r = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    if stream:
        chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        got = [
            ch["choices"][0]["finish_reason"]
            for ch in chunks
            if ch["choices"] and ch["choices"][0]["finish_reason"]
        ]
        assert got == [finish]
    else:
        assert r.json()["choices"][0]["finish_reason"] == finish


async def test_an_abstention_reports_the_usage_of_the_text_it_returns(tiny):
    policy = GuardPolicy.from_dict({"rules": [{"name": "never", "action": "abstain"}]})
    async with client(create_app(tiny, policy=policy)) as c:
        r = await c.post(
            "/v1/chat/completions", json={"model": tiny.model_id, "messages": USER, "max_tokens": 6}
        )
    assert r.status_code == 200, r.text
    choice, usage = r.json()["choices"][0], r.json()["usage"]
    text = choice["message"]["content"]
    assert choice["semgrad"]["action"] == "abstain" and choice["finish_reason"] == "stop"
    assert usage["completion_tokens"] == len(tiny.tokenizer.encode(text, add_special_tokens=False))
    assert usage["completion_tokens"] != choice["semgrad"]["result"]["answer_tokens"]


def test_generation_cut_at_max_new_tokens_is_flagged_truncated(tiny):
    _, cut = tiny.generate(USER, max_new_tokens=3)
    assert "truncated" in cut.flags and cut.answer_tokens == 3


# ------------------------------------------------------------------------------------------ unreviewed answers
REVIEWING = {
    "rules": [
        {"name": "unsure", "field": "semgrad", "min": 0.5, "action": "review"},
        {"name": "ok", "action": "accept"},
    ]
}


@pytest.mark.parametrize(
    ("policy", "switch", "status"),
    [
        (REVIEWING, None, 400),
        (REVIEWING, True, 200),
        ({"rules": [{"name": "ok", "action": "accept"}]}, None, 200),
        (None, None, 200),
        (None, False, 400),
    ],
)
async def test_generate_withholds_unreviewed_answers_when_the_policy_reviews(policy, switch, status):
    app = create_app(generating(), policy=policy, settings=ServeSettings(generate_unreviewed=switch))
    async with client(app) as c:
        r = await c.post("/v1/generate", json={"messages": "q"})
    assert r.status_code == status, r.text
    if status == 400:
        assert r.json()["type"] == "ConfigurationError" and "--generate-unreviewed" in r.json()["message"]


def test_the_cli_switch_reaches_the_settings():
    parse = build_parser().parse_args
    assert settings_from_args(parse(["serve"]))[0].generate_unreviewed is None
    assert settings_from_args(parse(["serve", "--generate-unreviewed"]))[0].generate_unreviewed is True
    assert settings_from_args(parse(["serve", "--no-generate-unreviewed"]))[0].generate_unreviewed is False


# ------------------------------------------------------------------------------------------ memory
async def test_the_worker_returns_memory_after_a_long_pass_only(tiny, monkeypatch):
    import threading as _threading

    from semgrad_guard.serve import batching

    calls: list[str] = []
    monkeypatch.setattr(
        batching, "release_memory", lambda: calls.append(_threading.current_thread().name) or True
    )
    app = create_app(tiny, settings=ServeSettings(max_answer_chars=10**6))
    async with client(app) as c:
        assert (
            await c.post("/v1/score", json={"messages": CHAT, "answer": "Carbon dioxide."})
        ).status_code == 200
        assert calls == []
        long = "word " * (batching.RELEASE_AFTER_TOKENS + 10)
        assert (await c.post("/v1/score", json={"messages": CHAT, "answer": long})).status_code == 200
    assert len(calls) == 1 and calls[0].startswith("semgrad-worker")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_memory_hands_pages_back_on_glibc(tiny):
    from semgrad_guard.serve.batching import release_memory

    def rss_mb() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    tiny.score(CHAT, "word " * 3500)  # vocabulary-sized tensors: tens of MB freed after the pass
    before = rss_mb()
    assert release_memory() is True
    assert rss_mb() < before - 5  # measured: 497 -> 434 MB after a 3,500-word answer
