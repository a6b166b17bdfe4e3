"""Ray's faults without a Ray cluster. Ray Serve's proxy answers by itself when a replica dies mid-request (nothing, which uvicorn turns
into a plain-text 500), when no replica is up (plain-text 503) and on its own timeout (408):
:class:`ProxyErrors` makes each the service's JSON error, and passes the service's own answers through.

No Ray cluster here: the proxy is stood in for by ASGI apps that answer as Ray's does
(tests/unit/test_serve_ray.py kills a real replica). And a replica's worker hands freed memory
back after long passes, as the single-process server's does.
"""

from __future__ import annotations

import httpx
import pytest

pytest.importorskip("ray", reason="the 'ray' extra is not installed: pip install 'semgrad-guard[ray]'")

from semgrad_guard import MockScorer  # noqa: E402
from semgrad_guard.serve import ServeSettings, batching  # noqa: E402
from semgrad_guard.serve.ray_app import (  # noqa: E402
    PROXY_CALLBACK,
    PROXY_CALLBACK_ENV,
    REPLICA_LOST_RETRY_AFTER_S,
    ProxyErrors,
    RayBatchBackend,
    proxy_middlewares,
)


def answering(status: int | None, body: bytes = b"", content_type: bytes = b"text/plain", raises=False):
    """An ASGI app answering as Ray's proxy does: ``status`` None sends nothing (a dead replica)."""

    async def app(scope, receive, send):
        if raises:
            raise RuntimeError("the proxy itself failed")
        if status is None:
            return
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body[:3], "more_body": True})
        await send({"type": "http.response.body", "body": body[3:]})

    return app


async def post(app) -> httpx.Response:
    transport = httpx.ASGITransport(app=ProxyErrors(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://ray") as c:
        return await c.post("/v1/score", json={"messages": "q", "answer": "a"})


@pytest.mark.parametrize("raises", [False, True], ids=["nothing-sent", "proxy-raised"])
async def test_a_replica_lost_mid_request_is_a_json_503_with_retry_after(raises):
    r = await post(answering(None, raises=raises))
    assert r.status_code == 503 and r.headers["retry-after"] == str(REPLICA_LOST_RETRY_AFTER_S)
    body = r.json()
    assert body["type"] == "ServiceUnavailableError" and body["details"] == {"replica_lost": True}
    assert "retry after" in body["message"] and "scoring is" in body["message"]


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_rays_plain_text_errors_become_json_503s(status):
    r = await post(answering(status, b"Deployment 'SemGradReplica' is unavailable."))
    assert r.status_code == 503 and r.headers["retry-after"]
    body = r.json()
    assert body["type"] == "ServiceUnavailableError" and "is unavailable" in body["message"]
    assert "details" not in body  # never reached a replica: safe to retry anything


async def test_rays_timeout_is_a_json_408():
    r = await post(answering(408, b"Request abc timed out after 5.0s."))
    assert r.status_code == 408 and r.json()["type"] == "RequestTimeoutError"
    assert "timed out after 5.0s" in r.json()["message"]


@pytest.mark.parametrize(
    ("status", "body", "ctype"),
    [
        (500, b'{"type": "InternalServerError", "message": "internal error"}', b"application/json"),
        (503, b'{"type": "ServiceUnavailableError", "message": "queue full"}', b"application/json"),
        (200, b"# HELP semgrad_requests_total\n", b"text/plain; version=0.0.4"),
        (404, b"Not Found", b"text/plain"),
    ],
)
async def test_the_services_own_answers_pass_through(status, body, ctype):
    r = await post(answering(status, body, ctype))
    assert r.status_code == status and r.content == body and r.headers["content-type"] == ctype.decode()


def test_the_callback_rays_proxy_imports_installs_the_middleware():
    from ray._common.utils import import_attr

    assert PROXY_CALLBACK_ENV == "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
    (middleware,) = import_attr(PROXY_CALLBACK)()
    assert middleware.cls is ProxyErrors and proxy_middlewares()[0].cls is ProxyErrors


async def test_a_replica_returns_memory_after_a_long_pass_only(monkeypatch):
    import threading

    calls: list[str] = []
    monkeypatch.setattr(batching, "release_memory", lambda: calls.append(threading.current_thread().name))

    class Long(MockScorer):
        def score_batch(self, pairs):
            return [
                r.model_copy(update={"answer_tokens": len(a.split())})
                for r, (_, a) in zip(super().score_batch(pairs), pairs, strict=True)
            ]

        def generate(self, messages, **kwargs):
            text, r = super().generate(messages, **kwargs)
            return text, r.model_copy(update={"answer_tokens": kwargs["max_new_tokens"]})

    backend = RayBatchBackend(Long(lambda m, a: 0.5, answers=["x"]), ServeSettings(max_wait_ms=1))
    # What @serve.batch runs for each batch (it needs a replica's context to run itself).
    score_list = backend._batched.__wrapped__  # type: ignore[attr-defined]
    try:
        await score_list([("q", "short answer")])
        await backend.agenerate("q", max_new_tokens=3)
        assert calls == []
        await score_list([("q", "word " * batching.RELEASE_AFTER_TOKENS)])
        await backend.agenerate("q", max_new_tokens=batching.RELEASE_AFTER_TOKENS)
    finally:
        await backend.aclose()
    assert len(calls) == 2 and all(name.startswith("semgrad-ray-worker") for name in calls)
