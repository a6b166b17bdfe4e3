"""The FastAPI app: score, batch score, generate, OpenAI-compatible chat completions, models, health, metrics.

Build it with :func:`create_app`; ``semgrad-guard serve`` runs it under uvicorn. The service never
decides by itself: verdicts come from :func:`semgrad_guard.judge` (``/v1/score``) and the
:class:`~semgrad_guard.Guard` (``/v1/chat/completions``), exactly as the adapters get them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import errors
from ..errors import (
    ConfigurationError,
    RequestTooLargeError,
    ScoringError,
    SemGradGuardError,
)
from ..guard.calibration import Calibrator
from ..guard.guard import Guard
from ..guard.outcomes import GuardResult
from ..guard.policy import GuardPolicy, Verdict, judge
from ..messages import Messages, check_text, normalize_messages
from ..payload import ScorePayload
from ..results import ScoreResult
from ..scorer import Scorer
from .batching import MicroBatcher, ScoringBackend
from .metrics import ServiceMetrics
from .schemas import (
    BatchScoreRequest,
    ChatCompletionRequest,
    ErrorBody,
    GenerateRequest,
    ScoreRequest,
)
from .settings import ServeSettings

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
"""Routes answered without a bearer token (load balancers probe them)."""

BackendFactory = Callable[[Scorer, ServeSettings, ServiceMetrics], ScoringBackend]

# Status codes of the typed errors (most specific class first; the first match in the MRO wins).
ERROR_STATUS: dict[type[BaseException], int] = {
    errors.RequestTooLargeError: 413,
    errors.ContextLengthError: 400,  # what OpenAI answers for context_length_exceeded
    errors.UnknownRoleError: 422,
    errors.ChatTemplateError: 422,
    errors.ControlTokenError: 422,
    errors.PromptEchoError: 422,
    errors.NonFiniteGradientError: 422,
    errors.ScoringError: 400,
    errors.AnswerRejectedError: 422,
    errors.RetriesExhaustedError: 422,
    errors.ServedModelMismatchError: 404,
    errors.ServiceUnavailableError: 503,
    errors.ConfigurationError: 400,
    errors.CalibrationError: 400,
}


def status_of(exc: BaseException) -> int:
    """HTTP status for a typed error: 4xx for what the request got wrong, 500 for the server's own faults."""
    for cls in type(exc).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500


def error_body(exc: BaseException) -> dict[str, Any]:
    """``{type, message, details}`` for a typed error (details: its plain-data attributes)."""
    details: dict[str, Any] = {
        k: v
        for k, v in vars(exc).items()
        if not k.startswith("_") and isinstance(v, (str, int, float, bool, type(None)))
    }
    guard_result = getattr(exc, "guard_result", None)
    if isinstance(guard_result, GuardResult):
        details["semgrad"] = _payload_of_guard(guard_result).to_json()
    return ErrorBody(type=type(exc).__name__, message=str(exc), details=details or None).model_dump(
        exclude_none=True
    )


# ---------------------------------------------------------------------------------------------- state
@dataclass
class ServiceState:
    """What one app serves: the scorer, the backend that runs it, the policy and calibrator, the limits."""

    scorer: Scorer
    settings: ServeSettings
    backend: ScoringBackend
    metrics: ServiceMetrics
    calibrator: Calibrator | None = None
    policy: GuardPolicy | None = None
    guard: Guard | None = None
    token: str | None = None
    model_info: dict[str, Any] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        return str(self.model_info["id"])

    def model_names(self) -> set[str]:
        return {self.model_id, *self.settings.model_aliases}


class _BackendScorer:
    """The Scorer the service's Guard uses: every pass goes through the backend's queue and worker."""

    def __init__(self, scorer: Scorer, backend: ScoringBackend) -> None:
        self._scorer = scorer
        self._backend = backend
        self.model_id = getattr(scorer, "model_id", None)
        self.profile = getattr(scorer, "profile", None)

    def score(self, messages: Messages, answer: str) -> ScoreResult:
        return self._scorer.score(messages, answer)

    def score_batch(self, pairs: Sequence[tuple[Messages, str]]) -> list[ScoreResult]:
        return self._scorer.score_batch(pairs)

    async def ascore(self, messages: Messages, answer: str) -> ScoreResult:
        return await self._backend.score(messages, answer)

    async def ascore_batch(self, pairs: Sequence[tuple[Messages, str]]) -> list[ScoreResult]:
        return await self._backend.score_many(pairs)

    def generate(self, messages: Messages, **generate_kwargs: Any) -> tuple[str, ScoreResult]:
        return self._scorer.generate(messages, **generate_kwargs)  # type: ignore[attr-defined,no-any-return]

    async def agenerate(self, messages: Messages, **generate_kwargs: Any) -> tuple[str, ScoreResult]:
        return await self._backend.generate(messages, **generate_kwargs)


def model_info(scorer: Scorer, calibrator: Calibrator | None, policy: GuardPolicy | None) -> dict[str, Any]:
    """What ``GET /v1/models`` says about the served model (id, weights hash, profile, template, context)."""
    model = getattr(scorer, "model", None)
    weights_hash = getattr(scorer, "weights_hash", None)
    if weights_hash is None and model is not None and hasattr(model, "get_input_embeddings"):
        from ..scoring.identity import weights_fingerprint

        weights_hash = weights_fingerprint(model)
    profile = getattr(scorer, "profile", None)
    template = getattr(scorer, "chat_template", None)
    template_hash = None
    if isinstance(template, str):
        from ..scoring.profile import chat_template_hash

        template_hash = chat_template_hash(template)
    profile_json = None
    if profile is not None and hasattr(profile, "model_dump"):
        profile_json = profile.model_dump(
            mode="json", include={"anchor_offset", "layers", "exgrad_mode", "model_id", "source"}
        )
    calibrator_json = None
    if calibrator is not None:
        calibrator_json = calibrator.model_dump(
            mode="json", include={"method", "features", "model_id", "data", "n_samples", "created"}
        )
    return {
        "id": str(getattr(scorer, "model_id", None) or type(scorer).__name__),
        "weights_hash": weights_hash,
        "profile": profile_json,
        "calibrator": calibrator_json,
        "chat_template_hash": template_hash,
        "context_window": getattr(scorer, "context_window", None),
        "exgrad_mode": getattr(scorer, "exgrad_mode", None),
        "policy": policy.model_dump(mode="json") if policy is not None else None,
        "can_generate": callable(getattr(scorer, "generate", None)),
    }


def build_state(
    scorer: Scorer,
    *,
    calibrator: Calibrator | None = None,
    policy: GuardPolicy | Mapping[str, Any] | str | None = None,
    token: str | None = None,
    settings: ServeSettings | None = None,
    backend_factory: BackendFactory | None = None,
) -> ServiceState:
    """Everything :func:`create_app` serves, checked (calibrator against the model, policy against the calibrator)."""
    settings = settings or ServeSettings()
    if calibrator is not None:
        calibrator.check_compatible(getattr(scorer, "model_id", None), getattr(scorer, "profile", None))
    the_policy = GuardPolicy.coerce(policy) if policy is not None else None
    metrics = ServiceMetrics()
    if backend_factory is not None:
        backend = backend_factory(scorer, settings, metrics)
    else:
        backend = MicroBatcher(
            scorer,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            retry_after_s=settings.retry_after_s,
            observer=metrics.observe_pass,
        )
    guard = None
    if the_policy is not None:
        guard = Guard(scorer=_BackendScorer(scorer, backend), policy=the_policy, calibrator=calibrator)
    state = ServiceState(
        scorer=scorer,
        settings=settings,
        backend=backend,
        metrics=metrics,
        calibrator=calibrator,
        policy=the_policy,
        guard=guard,
        token=token or None,
        model_info=model_info(scorer, calibrator, the_policy),
    )
    metrics.queue_depth.set_function(backend.queue_depth)
    return state


# ---------------------------------------------------------------------------------------------- app
def create_app(
    scorer: Scorer | Callable[[], Scorer],
    *,
    calibrator: Calibrator | None = None,
    policy: GuardPolicy | Mapping[str, Any] | str | None = None,
    token: str | None = None,
    settings: ServeSettings | None = None,
    backend_factory: BackendFactory | None = None,
) -> FastAPI:
    """The scoring service as a FastAPI app.

    Args:
        scorer: The scorer, or a zero-argument function that loads it (called once, on first use,
            in a worker thread: what a Ray Serve replica wants, so the app pickles without weights).
        calibrator: Maps scores to confidence (reported, and used by the policy).
        policy: A :class:`GuardPolicy` (or dict / YAML / file path): verdicts on scores, and the Guard
            behind ``/v1/chat/completions``.
        token: Bearer token required on every route but ``/healthz`` and ``/readyz`` (None: open).
        settings: Limits and batching (:class:`ServeSettings`).
        backend_factory: ``(scorer, settings, metrics) -> ScoringBackend`` replacing the
            :class:`MicroBatcher` (e.g. a Ray Serve ``@serve.batch`` backend).

    The state is at ``app.state.semgrad`` (a :class:`ServiceState`, once loaded).

    Example:
        >>> from fastapi.testclient import TestClient
        >>> from semgrad_guard import MockScorer
        >>> app = create_app(MockScorer(lambda m, a: 0.25, model_id="mock"))
        >>> with TestClient(app) as client:
        ...     client.post("/v1/score", json={"messages": "Capital of France?", "answer": "Paris"}).json()["scores"]["semgrad"]
        0.25
    """
    app = FastAPI(
        title="semgrad-guard",
        summary="SemGrad scores, calibrated confidence and guard verdicts over HTTP; OpenAI-compatible chat.",
        version=_version(),
    )
    holder = _StateHolder(
        scorer,
        dict(
            calibrator=calibrator,
            policy=policy,
            token=token,
            settings=settings or ServeSettings(),
            backend_factory=backend_factory,
        ),
    )
    app.state.semgrad_holder = holder
    if isinstance(scorer, Scorer):
        app.state.semgrad = holder.load_now()
    _install_error_handlers(app)
    _install_routes(app, holder)
    app.add_middleware(_Gate, holder=holder)
    return app


def _version() -> str:
    from .. import __version__

    return __version__


class _StateHolder:
    """The state, built at once from a scorer or on first use from a loader."""

    def __init__(self, scorer: Any, kwargs: dict[str, Any]) -> None:
        self._scorer = scorer
        self._kwargs = kwargs
        self.settings: ServeSettings = kwargs["settings"]
        self.token: str | None = kwargs["token"] or None
        self.state: ServiceState | None = None
        self.load_error: BaseException | None = None
        self._lock: asyncio.Lock | None = None

    def load_now(self) -> ServiceState:
        scorer = self._scorer if isinstance(self._scorer, Scorer) else self._scorer()
        self.state = build_state(scorer, **self._kwargs)
        return self.state

    async def get(self) -> ServiceState:
        if self.state is not None:
            return self.state
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.state is None:
                try:
                    await asyncio.to_thread(self.load_now)
                except Exception as e:
                    self.load_error = e
                    raise
        assert self.state is not None
        return self.state


# ---------------------------------------------------------------------------------------------- gate
class _Gate:
    """Pure ASGI middleware: metrics for every request, the bearer token, and the request-size bound.

    The body is read here (at most ``max_body_bytes``, with or without Content-Length) and replayed to
    the app, so an oversize body is refused before any JSON parsing.
    """

    def __init__(self, app: ASGIApp, holder: _StateHolder) -> None:
        self.app = app
        self.holder = holder
        self.metrics_fallback = ServiceMetrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self._handle(scope, receive, sending)
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
        while more:
            message = await receive()
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


# ---------------------------------------------------------------------------------------------- errors
def _install_error_handlers(app: FastAPI) -> None:
    def count(request: Request, name: str) -> None:
        holder: _StateHolder = request.app.state.semgrad_holder
        if holder.state is not None:
            holder.state.metrics.errors.labels(type=name).inc()

    async def typed(request: Request, exc: Exception) -> JSONResponse:
        status = status_of(exc)
        if status >= 500:
            logger.error("request failed: %s: %s", type(exc).__name__, exc)
        count(request, type(exc).__name__)
        headers = {}
        retry_after = getattr(exc, "retry_after", None)
        if status == 503 and retry_after is not None:
            headers["Retry-After"] = str(max(1, round(retry_after)))
        return JSONResponse(error_body(exc), status_code=status, headers=headers)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        count(request, "RequestValidationError")
        body = ErrorBody(
            type="RequestValidationError",
            message="invalid request: " + "; ".join(parts) + " (see GET /docs for the request schema)",
        )
        return JSONResponse(body.model_dump(exclude_none=True), status_code=422)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        name = HTTPStatus(exc.status_code).phrase.title().replace(" ", "").replace("-", "")
        count(request, name)
        body = ErrorBody(type=name, message=str(exc.detail))
        return JSONResponse(
            body.model_dump(exclude_none=True), status_code=exc.status_code, headers=exc.headers
        )

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error on %s", request.url.path, exc_info=exc)
        count(request, "InternalServerError")
        body = ErrorBody(type="InternalServerError", message="internal error; the server log has the details")
        return JSONResponse(body.model_dump(exclude_none=True), status_code=500)

    app.add_exception_handler(SemGradGuardError, typed)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


# ---------------------------------------------------------------------------------------------- routes
def _install_routes(app: FastAPI, holder: _StateHolder) -> None:
    from .calibrator_state import install_admin_routes

    install_admin_routes(app, holder)

    async def state_of() -> ServiceState:
        return await holder.get()

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """Readiness: the model is loaded (a loader runs on this first call) and the queue has room."""
        try:
            state = await state_of()
        except Exception as e:
            body = ErrorBody(type=type(e).__name__, message=f"the model failed to load: {e}")
            return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
        depth = state.backend.queue_depth()
        if depth >= state.settings.max_queue:
            body = ErrorBody(type="ServiceUnavailableError", message=f"the queue is full ({depth} waiting)")
            return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
        return JSONResponse({"status": "ready", "model": state.model_id, "queue_depth": depth})

    @app.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        """Prometheus metrics (this app's own registry)."""
        state = await state_of()
        body, content_type = state.metrics.render()
        return Response(content=body, media_type=content_type)

    @app.get("/v1/models", tags=["models"])
    async def models() -> dict[str, Any]:
        """The served model, OpenAI's list shape; ``semgrad`` holds weights hash, profile, calibrator, ..."""
        state = await state_of()
        info = dict(state.model_info, aliases=sorted(state.settings.model_aliases))
        return {
            "object": "list",
            "data": [
                {
                    "id": state.model_id,
                    "object": "model",
                    "created": 0,
                    "owned_by": "semgrad-guard",
                    "semgrad": info,
                }
            ],
        }

    @app.post("/v1/score", tags=["score"])
    async def score(request: ScoreRequest) -> dict[str, Any]:
        """Score one (messages, answer): the score payload (result, scores, confidence, verdict)."""
        state = await state_of()
        _check_model(state, request.model)
        chat = _pair(state, request, where="")
        result = await state.backend.score(chat, request.answer)
        return _judged(state, result).to_json()

    @app.post("/v1/score/batch", tags=["score"])
    async def score_batch(request: BatchScoreRequest) -> dict[str, Any]:
        """Score several pairs together: ``{"items": [payload, ...]}`` in order."""
        state = await state_of()
        _check_model(state, request.model)
        if len(request.items) > state.settings.max_batch_items:
            raise RequestTooLargeError(
                f"{len(request.items)} items in one batch request is over the service's limit of "
                f"{state.settings.max_batch_items}; split the batch or raise max_batch_items (--max-batch-items)"
            )
        pairs = []
        for i, item in enumerate(request.items):
            _check_model(state, item.model)
            pairs.append((_pair(state, item, where=f"items[{i}]: "), item.answer))
        try:
            results = await state.backend.score_many(pairs)
        except ScoringError as e:
            raise _prefixed(e, pairs, state) from e
        return {"items": [_judged(state, r).to_json() for r in results]}

    @app.post("/v1/generate", tags=["score"])
    async def generate(request: GenerateRequest) -> dict[str, Any]:
        """Generate with the served model and score from the KV cache. Not guarded: the verdict is reported."""
        state = await state_of()
        _check_model(state, request.model)
        _check_can_generate(state)
        chat = normalize_messages(request.messages)
        # Unset: the scorer's own default, as an in-process generate() would use (RemoteScorer parity).
        kwargs: dict[str, Any] = {
            "max_new_tokens": _new_tokens(
                state, request.max_new_tokens, default=_scorer_default_new_tokens(state)
            )
        }
        if request.do_sample:
            kwargs.update(do_sample=True, temperature=request.temperature)
            if request.top_p is not None:
                kwargs["top_p"] = request.top_p
        if request.seed is not None:
            kwargs["seed"] = request.seed
        text, result = await state.backend.generate(chat, **kwargs)
        return {"answer": text, "semgrad": _judged(state, result).to_json()}

    @app.post("/v1/chat/completions", tags=["openai"], response_model=None)
    async def chat_completions(request: ChatCompletionRequest) -> JSONResponse | StreamingResponse:
        """OpenAI-compatible chat completion, generated, scored and guarded by the server's policy."""
        state = await state_of()
        _check_model(state, request.model, openai=True)
        _check_can_generate(state)
        unsupported = request.unsupported()
        if unsupported:
            raise ConfigurationError(
                f"this service does not support {', '.join(unsupported)} in chat completions; leave "
                f"{'it' if len(unsupported) == 1 else 'them'} out"
            )
        chat = normalize_messages([_flatten_content(m, i) for i, m in enumerate(request.messages)])
        max_new = _new_tokens(state, request.max_completion_tokens or request.max_tokens)
        kwargs: dict[str, Any] = {"max_new_tokens": max_new}
        if request.temperature:  # None or 0: greedy
            kwargs.update(do_sample=True, temperature=request.temperature)
            if request.top_p is not None:
                kwargs["top_p"] = request.top_p
        if request.seed is not None:
            kwargs["seed"] = request.seed
        text, payload = await _complete(state, chat, kwargs)
        result = payload.result
        finish = "length" if result is not None and result.answer_tokens >= max_new else "stop"
        headers = _score_headers(state, payload)
        usage = _usage(payload)
        created = int(time.time())
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        if not request.stream:
            body = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": state.model_id,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish,
                        "logprobs": None,
                        "semgrad": payload.to_json(),
                    }
                ],
                "usage": usage,
            }
            return JSONResponse(body, headers=headers)
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        return StreamingResponse(
            _sse(cid, created, state.model_id, text, finish, payload, usage if include_usage else None),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )


# ---------------------------------------------------------------------------------------------- helpers
def _check_model(state: ServiceState, name: str | None, *, openai: bool = False) -> None:
    if name is None or name in state.model_names():
        return
    raise errors.ServedModelMismatchError(
        f"this service serves {state.model_id!r} (also called {sorted(state.settings.model_aliases)}), "
        f"not {name!r}; send one of those names as 'model' (GET /v1/models lists them)"
    )


def _check_can_generate(state: ServiceState) -> None:
    if not state.model_info.get("can_generate"):
        raise ConfigurationError(
            f"the served scorer ({type(state.scorer).__name__}) cannot generate; this service only scores "
            "(POST /v1/score)"
        )


def _pair(state: ServiceState, item: ScoreRequest, *, where: str) -> list[dict[str, Any]]:
    limit = state.settings.max_answer_chars
    if len(item.answer) > limit:
        raise RequestTooLargeError(
            f"{where}the answer has {len(item.answer)} characters, over the service's limit of {limit}; "
            "score a shorter answer or raise max_answer_chars (--max-answer-chars)"
        )
    try:
        check_text(item.answer, "answer")
        return normalize_messages(item.messages)
    except ScoringError as e:
        if not where:
            raise
        raise type(e)(f"{where}{e}") from e


def _prefixed(e: ScoringError, pairs: list[Any], state: ServiceState) -> ScoringError:
    """Name the failing item: score each alone (only on this error path) to find which one failed."""
    for i, pair in enumerate(pairs):
        try:
            state.scorer.score_batch([pair])
        except ScoringError:
            e.args = (f"items[{i}]: {e}",)
            break
        except Exception:
            break
    return e


def _new_tokens(state: ServiceState, asked: int | None, *, default: int | None = None) -> int:
    limit = state.settings.max_new_tokens
    if asked is not None and asked > limit:
        raise RequestTooLargeError(
            f"max_tokens={asked} is over the service's limit of {limit} new tokens; ask for fewer or raise "
            "max_new_tokens (--max-new-tokens)"
        )
    return asked if asked is not None else min(default or state.settings.default_new_tokens, limit)


def _scorer_default_new_tokens(state: ServiceState) -> int | None:
    import inspect

    try:
        param = inspect.signature(state.scorer.generate).parameters.get("max_new_tokens")  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return None
    default = param.default if param is not None else None
    return default if isinstance(default, int) else None


def _flatten_content(message: Mapping[str, Any], i: int) -> dict[str, Any]:
    """OpenAI content parts (``[{"type": "text", "text": ...}]``) as one string; other part types are refused."""
    out = dict(message)
    content = out.get("content")
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if (
                not isinstance(part, Mapping)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise ScoringError(
                    f"messages[{i}].content[{j}] is a {kind!r} part; this service takes text only"
                )
            texts.append(part["text"])
        out["content"] = "".join(texts)
    return out


def _judged(state: ServiceState, result: ScoreResult) -> ScorePayload:
    verdict: Verdict | None = None
    confidence = None
    calibrator = state.calibrator  # read once: a reload mid-request must not mix two calibrators
    if state.policy is not None:
        verdict = judge(state.policy, result, calibrator)
        state.metrics.decisions.labels(action=verdict.action.value).inc()
    elif calibrator is not None:
        confidence = float(calibrator.confidence(result))
    fields: dict[str, Any] = {"source": "service"}
    if verdict is None and confidence is not None:
        fields["confidence"] = confidence
        fields["calibrator_version"] = calibrator.fingerprint if calibrator is not None else None
    return ScorePayload.of(result, verdict, **fields)


def _payload_of_guard(result: GuardResult) -> ScorePayload:
    return ScorePayload(
        result=result.result,
        confidence=result.confidence,
        action=result.action.value,
        rule=result.rule,
        review_id=result.review_id,
        attempts=len(result.attempts),
        source="service",
        calibrator_version=result.calibrator_version,
    )


async def _complete(
    state: ServiceState, chat: list[dict[str, Any]], kwargs: dict[str, Any]
) -> tuple[str, ScorePayload]:
    if state.guard is None:
        text, result = await state.backend.generate(chat, **kwargs)
        return text, _judged(state, result)

    async def generate(messages: list[dict[str, Any]], ctx: Any) -> tuple[str, ScoreResult]:
        # The request's settings, then what a retry strategy changes (temperature, seed, ...).
        return await state.backend.generate(messages, **{**kwargs, **ctx.generate_kwargs})

    guarded = await state.guard.arun(chat, generate, metadata={"source": "service"})
    state.metrics.decisions.labels(action=guarded.action.value).inc()
    return guarded.answer, _payload_of_guard(guarded)


def _usage(payload: ScorePayload) -> dict[str, int]:
    r = payload.result
    prompt = r.prompt_tokens if r is not None else 0
    completion = r.answer_tokens if r is not None else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _ascii(value: Any) -> str:
    return str(value).encode("ascii", "backslashreplace").decode("ascii")


def _score_headers(state: ServiceState, payload: ScorePayload) -> dict[str, str]:
    """The key numbers as headers (for clients that see headers but not extra JSON fields: ChatOpenAI)."""
    headers = {"x-semgrad-model": _ascii(state.model_id)}
    if payload.result is not None:
        headers["x-semgrad-semgrad"] = repr(payload.result.semgrad)
    if payload.confidence is not None:
        headers["x-semgrad-confidence"] = repr(payload.confidence)
    if payload.action is not None:
        headers["x-semgrad-action"] = payload.action
    if payload.rule is not None:
        headers["x-semgrad-rule"] = _ascii(payload.rule)
    if payload.review_id is not None:
        headers["x-semgrad-review-id"] = str(payload.review_id)
    headers["x-semgrad-payload"] = json.dumps(payload.to_json(), separators=(",", ":"), ensure_ascii=True)
    return headers


async def _sse(
    cid: str,
    created: int,
    model: str,
    text: str,
    finish: str,
    payload: ScorePayload,
    usage: dict[str, int] | None,
) -> AsyncIterator[bytes]:
    """The answer as OpenAI chunks; the guard decided before the first byte, the score rides on the last chunk."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "finish_reason": finish_reason,
            "logprobs": None,
        }
        choice.update(extra)
        body: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [choice],
        }
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for piece in _pieces(text):
        yield chunk({"content": piece})
    yield chunk({}, finish, semgrad=payload.to_json())
    if usage is not None:
        tail = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage,
        }
        yield b"data: " + json.dumps(tail).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


def _pieces(text: str, size: int = 64) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]
