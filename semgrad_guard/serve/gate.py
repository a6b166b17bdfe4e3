"""Auth and limits: the ASGI gate in front of every route (metrics, bearer token, body size and time)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigurationError
from .metrics import ServiceMetrics
from .schemas import ErrorBody
from .settings import ServeSettings

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
"""Routes answered without a bearer token (load balancers probe them)."""

INTERNAL_ERROR = ErrorBody(
    type="InternalServerError", message="internal error; the server log has the details"
).model_dump(exclude_none=True)


def clean_token(token: str | None) -> str | None:
    """The bearer token stripped as the header is (None: no token); whitespace only is refused."""
    if token is None or token == "":
        return None
    stripped = token.strip()
    if not stripped:
        raise ConfigurationError(
            "the bearer token is whitespace only; give a real token, or None to serve open"
        )
    return stripped


class GateHolder(Protocol):
    """What the gate reads: the token, the limits, and the state once loaded (for its metrics)."""

    token: str | None
    settings: ServeSettings
    state: Any


class Gate:
    """Pure ASGI middleware: metrics for every request, the bearer token, and the request-size bound.

    The body is read here (at most ``max_body_bytes``, with or without Content-Length) and replayed to
    the app, so an oversize body is refused before any JSON parsing.
    """

    def __init__(self, app: ASGIApp, holder: GateHolder) -> None:
        self.app = app
        self.holder = holder
        self.metrics_fallback = ServiceMetrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]
        started = [False]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
                started[0] = True
            await send(message)

        try:
            await self._handle(scope, receive, sending)
        except Exception as e:
            # Answered here rather than by Starlette's outermost handler, which re-raises to the server:
            # uvicorn then closes the connection, and a keep-alive client's next requests fail.
            logger.exception("internal error on %s", scope.get("path"), exc_info=e)
            self._count_error("InternalServerError")
            if not started[0]:
                status[0] = 500
                await _send_json(send, 500, INTERNAL_ERROR)
        finally:
            state = self.holder.state
            metrics = state.metrics if state is not None else self.metrics_fallback
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            metrics.observe_request(path, scope.get("method", ""), status[0], time.perf_counter() - t0)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = self.holder.token
        if token is not None and scope["path"] not in OPEN_PATHS and not _authorised(scope, token):
            denied = ErrorBody(
                type="ServiceAuthError",
                message="missing or wrong bearer token: send 'Authorization: Bearer <token>' (the server's "
                "SEMGRAD_GUARD_TOKEN or --token-file)",
            )
            await _send_json(send, 401, denied.model_dump(exclude_none=True), {"www-authenticate": "Bearer"})
            self._count_error("ServiceAuthError")
            return
        limit = self.holder.settings.max_body_bytes
        declared = _header(scope, b"content-length")
        too_large = ErrorBody(
            type="RequestTooLargeError",
            message=f"the request body is over the service's limit of {limit} bytes; send less (fewer "
            "items, shorter texts) or raise max_body_bytes (--max-body-bytes)",
        ).model_dump(exclude_none=True)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_json(send, 413, too_large)
            self._count_error("RequestTooLargeError")
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        body_timeout = self.holder.settings.body_timeout_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), body_timeout)
            except TimeoutError:
                slow = ErrorBody(
                    type="RequestTimeoutError",
                    message=f"the request body did not arrive within {body_timeout:g} s; send the whole "
                    "body at once (or raise body_timeout_s, --body-timeout)",
                )
                # Connection: close, so a client that never finishes its body does not hold the connection.
                await _send_json(send, 408, slow.model_dump(exclude_none=True), {"connection": "close"})
                self._count_error("RequestTimeoutError")
                return
            if message["type"] != "http.request":
                return  # the client disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_json(send, 413, too_large)
                self._count_error("RequestTooLargeError")
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _count_error(self, name: str) -> None:
        state = self.holder.state
        (state.metrics if state is not None else self.metrics_fallback).errors.labels(type=name).inc()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _authorised(scope: Scope, token: str) -> bool:
    given = _header(scope, b"authorization") or ""
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


async def _send_json(
    send: Send, status: int, body: Mapping[str, Any], headers: Mapping[str, str] = {}
) -> None:
    raw = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    head += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": raw})
