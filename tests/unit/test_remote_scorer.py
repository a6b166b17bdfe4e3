"""RemoteScorer: in-process scores over HTTP, the same typed errors, model checks, retries on 503 and connection errors only."""

from __future__ import annotations

import json

import httpx
import pytest

from semgrad_guard import (
    ChatTemplateError,
    ContextLengthError,
    Guard,
    GuardPolicy,
    MockScorer,
    RemoteScorer,
    ScoringError,
    ServedModelMismatchError,
    ServiceAuthError,
    ServiceUnavailableError,
)
from semgrad_guard.serve import BackgroundServer, ServeSettings, create_app
from semgrad_guard.testing import tiny_scorer

CHAT = [{"role": "user", "content": "Which gas do plants take in during photosynthesis?"}]
ANSWERS = ["Carbon dioxide.", "Oxygen, mostly.", "Nitrogen, I believe, in large amounts."]
FIELDS = ("semgrad", "hybridgrad", "exgrad", "nll", "mean_nll", "mean_entropy")


def close(got, want, rel: float = 1e-6) -> None:
    for name in FIELDS:
        g, w = getattr(got, name), getattr(want, name)
        assert abs(g - w) <= rel * abs(w), f"{name}: remote {g!r} vs in-process {w!r}"
    assert got.model_dump(exclude=set(FIELDS)) == want.model_dump(exclude=set(FIELDS))


@pytest.fixture(scope="module")
def tiny():
    return tiny_scorer("llama")


@pytest.fixture(scope="module")
def server(tiny):
    app = create_app(tiny, token="tok", settings=ServeSettings(max_answer_chars=10**6))
    with BackgroundServer(app) as s:
        yield s


async def test_remote_scores_equal_in_process_scores_sync_and_async(tiny, server):
    remote = RemoteScorer(server.url, token="tok", model="tiny-random-llama")
    close(remote.score(CHAT, ANSWERS[0]), tiny.score(CHAT, ANSWERS[0]))
    close(await remote.ascore(CHAT, ANSWERS[1]), tiny.score(CHAT, ANSWERS[1]))
    want = tiny.score_batch([(CHAT, a) for a in ANSWERS])
    for got in (
        remote.score_batch([(CHAT, a) for a in ANSWERS]),
        await remote.ascore_batch([(CHAT, a) for a in ANSWERS]),
    ):
        for g, w in zip(got, want, strict=True):
            close(g, w)
    text, result = remote.generate(CHAT, max_new_tokens=10)
    want_text, want_result = tiny.generate(CHAT, max_new_tokens=10)
    assert text == want_text
    close(result, want_result)
    assert remote.model_id == "tiny-random-llama" and remote.profile.layers == tiny.profile.layers
    await remote.aclose()


def test_the_services_typed_errors_come_back_as_the_same_classes(tiny, server):
    remote = RemoteScorer(server.url, token="tok")
    with pytest.raises(ContextLengthError, match="exceeds the model's context of 4096") as info:
        remote.score(CHAT, "word " * 5000)
    assert info.value.limit == 4096 and info.value.prompt_tokens > 0
    with pytest.raises(ScoringError, match="items\\[1\\]"):
        remote.score_batch([(CHAT, "fine"), (CHAT, "word " * 5000)])
    gemma = create_app(tiny_scorer("gemma2"))
    system = [{"role": "system", "content": "x"}, {"role": "user", "content": "q"}]
    with BackgroundServer(gemma) as s, pytest.raises(ChatTemplateError, match="System role not supported"):
        RemoteScorer(s.url).score(system, "a")
    with pytest.raises(ServiceAuthError, match="bearer token"):
        RemoteScorer(server.url, token="wrong").score(CHAT, "a")


def test_a_service_holding_another_model_is_refused_at_first_use(server, tiny):
    with pytest.raises(ServedModelMismatchError, match="serves 'tiny-random-llama', not 'SmolLM2'"):
        RemoteScorer(server.url, token="tok", model="SmolLM2").score(CHAT, "a")
    with pytest.raises(ServedModelMismatchError, match="with weights"):
        RemoteScorer(server.url, token="tok", weights_hash="0" * 64).score(CHAT, "a")
    # The embedded model's shipped fingerprint is expected when the caller names "default".
    app = create_app(tiny, settings=ServeSettings(model_aliases=["default"]))
    with BackgroundServer(app) as s, pytest.raises(ServedModelMismatchError, match="with weights"):
        RemoteScorer(s.url, model="default").score(CHAT, "a")


@pytest.mark.parametrize("name", ["default", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
def test_a_registry_name_expects_that_models_own_shipped_fingerprint(name):
    # "default" once matched whichever shipped profile the folder listed first (a Qwen one in CI).
    from semgrad_guard.scoring.profile import _stored_profiles
    from semgrad_guard.scoring.registry import get_model

    model_id = get_model(name).model_id
    (profile,) = [p for p in _stored_profiles() if p.model_id == model_id]
    assert profile.weights_sha256
    assert RemoteScorer("http://127.0.0.1:1", model=name)._wire._shipped_hash() == profile.weights_sha256
    assert RemoteScorer("http://127.0.0.1:1", model=model_id)._wire._shipped_hash() == profile.weights_sha256
    assert RemoteScorer("http://127.0.0.1:1", model="someone/else")._wire._shipped_hash() is None


def _models(model_id: str = "m") -> dict:
    return {
        "object": "list",
        "data": [
            {
                "id": model_id,
                "object": "model",
                "semgrad": {"id": model_id, "weights_hash": None, "aliases": []},
            }
        ],
    }


def _result() -> dict:
    return {"result": MockScorer(lambda m, a: 0.5, model_id="m").score("q", "a").model_dump(mode="json")}


def scripted(*answers):
    """A transport answering /v1/models, then each scripted answer in turn for the other requests."""
    calls = []
    queue = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json=_models())
        calls.append(request.url.path)
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handle, calls


def test_503_is_retried_waiting_what_retry_after_says():
    handle, calls = scripted(
        httpx.Response(
            503,
            json={"type": "ServiceUnavailableError", "message": "queue full"},
            headers={"Retry-After": "2"},
        ),
        httpx.Response(200, json=_result()),
    )
    remote = RemoteScorer("http://svc", transport=httpx.MockTransport(handle), max_attempts=3)
    waits = []
    remote._sleep = waits.append
    assert remote.score("q", "a").semgrad == 0.5
    assert calls == ["/v1/score", "/v1/score"] and waits == [2.0]


def test_a_service_that_stays_overloaded_raises_service_unavailable_with_retry_after():
    handle, calls = scripted(
        httpx.Response(
            503,
            json={"type": "ServiceUnavailableError", "message": "queue full"},
            headers={"Retry-After": "1"},
        )
    )
    remote = RemoteScorer("http://svc", transport=httpx.MockTransport(handle), max_attempts=3)
    remote._sleep = lambda s: None
    with pytest.raises(ServiceUnavailableError, match="after 3 attempts") as info:
        remote.score("q", "a")
    assert len(calls) == 3 and info.value.retry_after == 1.0 and info.value.status == 503


def test_connection_errors_are_retried_then_reported():
    handle, calls = scripted(httpx.ConnectError("refused"))
    remote = RemoteScorer("http://svc", transport=httpx.MockTransport(handle), max_attempts=2)
    remote._sleep = lambda s: None
    remote.served = {"id": "m"}  # skip the model check: it would fail the same way
    with pytest.raises(
        ServiceUnavailableError, match="cannot reach the scoring service at http://svc after 2 attempts"
    ):
        remote.score("q", "a")
    assert len(calls) == 2


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(
            400, json={"type": "ContextLengthError", "message": "too long", "details": {"limit": 8}}
        ),
        httpx.Response(500, json={"type": "InternalServerError", "message": "boom"}),
        httpx.ReadTimeout("slow"),
    ],
    ids=["400", "500", "read-timeout"],
)
def test_other_failures_are_not_retried(answer):
    handle, calls = scripted(answer)
    remote = RemoteScorer("http://svc", transport=httpx.MockTransport(handle), max_attempts=4)
    remote._sleep = lambda s: pytest.fail("must not wait")
    with pytest.raises(Exception) as info:
        remote.score("q", "a")
    assert len(calls) == 1
    if isinstance(answer, httpx.Response) and answer.status_code == 400:
        assert type(info.value) is ContextLengthError and info.value.limit == 8


async def test_async_retries_share_the_same_rules():
    handle, calls = scripted(
        httpx.Response(
            503, json={"type": "ServiceUnavailableError", "message": "busy"}, headers={"Retry-After": "1"}
        ),
        httpx.Response(200, json=_result()),
    )

    async def ahandle(request):
        return handle(request)

    remote = RemoteScorer("http://svc", async_transport=httpx.MockTransport(ahandle), max_attempts=3)
    waits = []

    async def asleep(s):
        waits.append(s)

    remote._asleep = asleep
    assert (await remote.ascore("q", "a")).semgrad == 0.5
    assert calls == ["/v1/score", "/v1/score"] and waits == [1.0]


def test_generate_refuses_settings_the_service_cannot_take():
    remote = RemoteScorer(
        "http://svc", transport=httpx.MockTransport(lambda r: httpx.Response(200, json=_models()))
    )
    with pytest.raises(Exception, match="cannot send \\['num_beams'\\]"):
        remote.generate("q", num_beams=4)


def test_the_guard_runs_on_a_remote_scorer(tiny, server):
    policy = GuardPolicy.from_dict(
        {"rules": [{"field": "semgrad", "max": 1e9, "action": "accept"}], "retry": {"max_attempts": 1}}
    )
    remote = RemoteScorer(server.url, token="tok", model="tiny-random-llama")
    result = Guard(policy, scorer=remote).run(CHAT)
    want_text, want = tiny.generate(CHAT)
    assert result.answer == want_text and result.action.value == "accept"
    close(result.result, want)
    checked = Guard(policy, scorer=remote).check(CHAT, "Carbon dioxide.")
    close(checked.result, tiny.score(CHAT, "Carbon dioxide."))


def test_a_remote_error_body_round_trips_through_json():
    from semgrad_guard.scoring.remote import error_from_response
    from semgrad_guard.serve import error_body

    err = ContextLengthError(10, 5, 12)
    back = error_from_response(400, json.loads(json.dumps(error_body(err))), {})
    assert type(back) is ContextLengthError and str(back) == str(err)
    assert (back.prompt_tokens, back.answer_tokens, back.limit) == (10, 5, 12)


class RawServer:
    """A real TCP server on 127.0.0.1 that misbehaves: each connection gets the next scripted act.

    ``"drop"`` reads the request and closes without answering (a killed replica, a stale keep-alive),
    ``"hang"`` reads it and never answers, bytes are sent as the raw HTTP answer.
    """

    def __init__(self, *acts):
        import socket
        import threading

        self.acts, self.connections = list(acts), 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._held = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):

        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            act = self.acts[min(self.connections, len(self.acts) - 1)]
            self.connections += 1
            conn.settimeout(2)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536) or b"\r\n\r\n"
            if act == "hang":
                self._held.append(conn)
                continue
            if act != "drop":
                conn.sendall(act)
            conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        for c in self._held:
            c.close()
        self.sock.close()


def _http(body: bytes | str, status: str = "200 OK", ctype: str = "application/json") -> bytes:
    body = body.encode() if isinstance(body, str) else body
    head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode() + body


def _offline(url, **kwargs):
    remote = RemoteScorer(url, max_attempts=3, **kwargs)
    remote._sleep = lambda s: None
    remote.served = {"id": "m"}  # skip the model check: these servers only misbehave
    return remote


def test_a_dropped_connection_is_retried_for_scoring_and_then_reported():
    with RawServer("drop") as srv:
        remote = _offline(srv.url)
        with pytest.raises(ServiceUnavailableError, match="connection to the scoring service") as info:
            remote.score("q", "a")
        assert srv.connections == 3 and isinstance(info.value.__cause__, httpx.RemoteProtocolError)
        assert info.value.error_type == "RemoteProtocolError"


def test_a_dropped_connection_then_an_answer_succeeds():
    with RawServer("drop", _http(json.dumps(_result()))) as srv:
        assert _offline(srv.url).score("q", "a").semgrad == 0.5
        assert srv.connections == 2


def test_generate_is_never_retried_after_the_request_was_sent():
    with RawServer("drop") as srv:
        remote = _offline(srv.url)
        with pytest.raises(ServiceUnavailableError) as info:
            remote.generate("q", max_new_tokens=2)
        assert srv.connections == 1 and isinstance(info.value.__cause__, httpx.RemoteProtocolError)


async def test_a_frozen_service_is_a_typed_timeout_not_retried():
    with RawServer("hang") as srv:
        remote = _offline(srv.url, timeout=0.3)
        with pytest.raises(ServiceUnavailableError, match="did not answer in time") as info:
            remote.score("q", "a")
        assert srv.connections == 1 and isinstance(info.value.__cause__, httpx.ReadTimeout)
        remote._asleep = None
        with pytest.raises(ServiceUnavailableError, match="did not answer in time"):
            await remote.ascore("q", "a")
        await remote.aclose()


def test_a_lone_surrogate_is_a_scoring_error_before_anything_is_sent():
    with RawServer("drop") as srv:
        remote = _offline(srv.url)
        for messages, answer in (("q", "bad \ud800"), ("bad \udfff", "a")):
            with pytest.raises(ScoringError, match="lone surrogate"):
                remote.score(messages, answer)
        assert srv.connections == 0


@pytest.mark.parametrize(
    "raw",
    [_http("<html>proxy</html>", ctype="text/html"), _http('{"result": {"semgrad": "x"}}'), _http("[]")],
    ids=["not-json", "bad-result", "not-an-object"],
)
def test_a_success_that_is_not_a_semgrad_answer_is_a_service_error(raw):
    from semgrad_guard import ServiceError

    with RawServer(raw) as srv:
        with pytest.raises(ServiceError, match="is this a semgrad-guard service") as info:
            _offline(srv.url).score("q", "a")
        assert info.value.__cause__ is not None


def replica_lost() -> httpx.Response:
    """What ProxyErrors answers in Ray Serve's proxy for a request whose replica died."""
    return httpx.Response(
        503,
        json={
            "type": "ServiceUnavailableError",
            "message": "the replica handling this request stopped before answering",
            "details": {"replica_lost": True},
        },
        headers={"Retry-After": "1"},
    )


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
async def test_a_replica_lost_mid_call_is_retried_for_scoring(asynchronous):
    handle, calls = scripted(replica_lost(), httpx.Response(200, json=_result()))
    waits: list[float] = []
    if asynchronous:

        async def ahandle(request):
            return handle(request)

        remote = RemoteScorer("http://svc", async_transport=httpx.MockTransport(ahandle), max_attempts=3)

        async def asleep(s):
            waits.append(s)

        remote._asleep = asleep
        assert (await remote.ascore("q", "a")).semgrad == 0.5
    else:
        remote = RemoteScorer("http://svc", transport=httpx.MockTransport(handle), max_attempts=3)
        remote._sleep = waits.append
        assert remote.score("q", "a").semgrad == 0.5
    assert calls == ["/v1/score", "/v1/score"] and waits == [1.0]


def test_a_replica_lost_mid_generate_is_not_retried():
    handle, calls = scripted(replica_lost(), httpx.Response(200, json={"answer": "x", "semgrad": _result()}))
    remote = RemoteScorer("http://svc", transport=httpx.MockTransport(handle), max_attempts=3)
    remote._sleep = lambda s: pytest.fail("must not wait")
    with pytest.raises(ServiceUnavailableError, match="stopped before answering") as info:
        remote.generate("q", max_new_tokens=2)
    assert calls == ["/v1/generate"] and info.value.retry_after == 1.0 and info.value.status == 503
    assert str(info.value).endswith("(after 1 attempt)")  # the attempts made, not the most allowed
