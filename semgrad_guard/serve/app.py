"""The FastAPI app: score, batch score, generate, OpenAI-compatible chat completions, models, health, metrics.

Build it with :func:`create_app`; ``semgrad-guard serve`` runs it under uvicorn. The service never
decides by itself: verdicts come from the :class:`~semgrad_guard.Guard` (``Guard.judge`` for
``/v1/score``, ``Guard.arun`` for ``/v1/chat/completions``), exactly as the adapters get them.

Here: the state, the app, its error handlers and routes; the auth and limits in front of them are in
:mod:`.gate`, the OpenAI wire format of chat completions in :mod:`.openai_wire`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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
from ..guard.policy import Action, GuardPolicy, Verdict
from ..messages import Messages, check_text, normalize_messages
from ..payload import ScorePayload
from ..results import ScoreResult
from ..scorer import Scorer
from .batching import MicroBatcher, ServiceBackend
from .gate import INTERNAL_ERROR, Gate, clean_token
from .metrics import ServiceMetrics
from .openai_wire import flatten_content, score_headers, sse
from .schemas import (
    BatchScoreRequest,
    ChatCompletionRequest,
    ErrorBody,
    GenerateRequest,
    ScoreRequest,
)
from .settings import ServeSettings

logger = logging.getLogger(__name__)

BackendFactory = Callable[[Scorer, ServeSettings, ServiceMetrics], ServiceBackend]

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
        details["semgrad"] = _payload(guard_result.result, guard_result).to_json()
    return ErrorBody(type=type(exc).__name__, message=str(exc), details=details or None).model_dump(
        exclude_none=True
    )


# ---------------------------------------------------------------------------------------------- state
@dataclass
class ServiceState:
    """What one app serves: the scorer, the backend that runs it, the policy and calibrator, the limits."""

    scorer: Scorer
    settings: ServeSettings
    backend: ServiceBackend
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
        "policy": _public_policy(policy) if policy is not None else None,
        "can_generate": callable(getattr(scorer, "generate", None)),
    }


def _public_policy(policy: GuardPolicy) -> dict[str, Any]:
    """The policy as ``/v1/models`` shows it: without the review database's path (a server-side detail)."""
    out = policy.model_dump(mode="json")
    review = out.get("review")
    if isinstance(review, dict):
        review.pop("path", None)
    return out


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
        guard = Guard(scorer=backend, policy=the_policy, calibrator=calibrator)
    state = ServiceState(
        scorer=scorer,
        settings=settings,
        backend=backend,
        metrics=metrics,
        calibrator=calibrator,
        policy=the_policy,
        guard=guard,
        token=clean_token(token),
        model_info=model_info(scorer, calibrator, the_policy),
    )
    metrics.queue_depth.set_function(backend.queue_depth)
    metrics.watch_calibration(lambda: state.calibrator, _label_count(guard))
    if guard is not None:  # an automatic refit (review.refit_every) also reaches /v1/score
        guard.on_calibrator_change(lambda cal: setattr(state, "calibrator", cal))
    return state


def _label_count(guard: Guard | None) -> Callable[[], int | None] | None:
    """The /metrics label count: the Guard's review queue, when its policy queues answers."""
    policy = guard.policy if guard is not None else None
    if guard is None or policy is None or (Action.REVIEW not in policy.actions and policy.audit is None):
        return None

    def count() -> int | None:
        from ..review.labels import label_count

        try:
            return label_count(guard.review_queue)
        except Exception:  # a scrape must not fail on the queue (e.g. PostgreSQL briefly away)
            logger.warning("/metrics: the review queue's label count is unavailable", exc_info=True)
            return None

    return count


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
        backend_factory: ``(scorer, settings, metrics) -> ServiceBackend`` replacing the
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
    app.add_middleware(Gate, holder=holder)
    return app


def _version() -> str:
    # From the installed distribution, not the package face (the service never imports semgrad_guard).
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("semgrad-guard")
    except PackageNotFoundError:  # pragma: no cover - a source tree on sys.path, not installed
        return "0+unknown"


class _StateHolder:
    """The state, built at once from a scorer or on first use from a loader."""

    def __init__(self, scorer: Any, kwargs: dict[str, Any]) -> None:
        self._scorer = scorer
        self._kwargs = kwargs
        self.settings: ServeSettings = kwargs["settings"]
        self.token: str | None = clean_token(kwargs["token"])
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
        return JSONResponse(INTERNAL_ERROR, status_code=500)

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
        # In a thread: the label gauge asks the review queue (a database) at every scrape.
        body, content_type = await asyncio.to_thread(state.metrics.render)
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
        result = await state.backend.ascore(chat, request.answer)
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
        # Every item is checked (template, control tokens, context) before any is scored, off the loop.
        await _off_loop(state, _check_items, state.scorer, pairs)
        results = await state.backend.ascore_batch(pairs)
        return {"items": [_judged(state, r).to_json() for r in results]}

    @app.post("/v1/generate", tags=["score"])
    async def generate(request: GenerateRequest) -> dict[str, Any]:
        """Generate with the served model and score from the KV cache. Not guarded: the verdict is reported."""
        state = await state_of()
        _check_model(state, request.model)
        _check_can_generate(state)
        _check_generate_unreviewed(state)
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
        text, result = await state.backend.agenerate(chat, **kwargs)
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
        chat = normalize_messages([flatten_content(m, i) for i, m in enumerate(request.messages)])
        max_new = _new_tokens(state, request.max_completion_tokens or request.max_tokens)
        kwargs: dict[str, Any] = {"max_new_tokens": max_new}
        if request.temperature:  # None or 0: greedy
            kwargs.update(do_sample=True, temperature=request.temperature)
            if request.top_p is not None:
                kwargs["top_p"] = request.top_p
        if request.seed is not None:
            kwargs["seed"] = request.seed
        text, payload, model_text = await _complete(state, chat, kwargs)
        result = payload.result
        returned_model_text = model_text is not None and text == model_text
        # "length" only when the returned text is the model's and generation was cut (no end-of-turn).
        finish = (
            "length" if returned_model_text and result is not None and "truncated" in result.flags else "stop"
        )
        headers = score_headers(state.model_id, payload)
        usage = _usage(state, payload, None if returned_model_text else text)
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
            sse(cid, created, state.model_id, text, finish, payload, usage if include_usage else None),
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


def _check_generate_unreviewed(state: ServiceState) -> None:
    allowed = state.settings.generate_unreviewed
    if allowed is None:
        allowed = state.policy is None or not any(r.action == Action.REVIEW for r in state.policy.rules)
    if not allowed:
        raise ConfigurationError(
            "this service's policy sends answers to human review, and /v1/generate would hand them out "
            "unreviewed; use /v1/chat/completions (which withholds them), or start the service with "
            "--generate-unreviewed"
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


def _check_items(scorer: Scorer, pairs: Sequence[tuple[Messages, str]]) -> None:
    """What scoring would refuse in any item, before the model runs (the scorer's ``check``, if it has one)."""
    check = getattr(scorer, "check", None)
    if not callable(check):
        return
    for i, (messages, answer) in enumerate(pairs):
        try:
            check(messages, answer)
        except ScoringError as e:
            e.args = (f"items[{i}]: {e}", *e.args[1:])
            raise


async def _off_loop(state: ServiceState, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on the backend's worker thread when it has one (the tokenizer is not shared across
    threads), else in a thread: never on the event loop."""
    run = getattr(state.backend, "run", None)
    if callable(run):
        return await run(fn, *args)
    return await asyncio.to_thread(fn, *args)


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


def _judged(state: ServiceState, result: ScoreResult) -> ScorePayload:
    """The payload for a score: the Guard's verdict under a policy, else the calibrated confidence."""
    if state.guard is not None:
        verdict: Verdict = state.guard.judge(result)
        state.metrics.decisions.labels(action=verdict.action.value).inc()
        return _payload(result, verdict)
    calibrator = state.calibrator  # read once: a reload mid-request must not mix two calibrators
    if calibrator is not None:
        return _payload(
            result,
            confidence=float(calibrator.confidence(result)),
            calibrator_version=calibrator.fingerprint,
        )
    return _payload(result)


def _payload(result: ScoreResult | None, verdict: Any = None, **fields: Any) -> ScorePayload:
    return ScorePayload.of(result, verdict, source="service", **fields)


async def _complete(
    state: ServiceState, chat: list[dict[str, Any]], kwargs: dict[str, Any]
) -> tuple[str, ScorePayload, str | None]:
    """``(text returned, payload, the model's text the payload scored)``: they differ when the guard
    abstained or withheld the answer for review."""
    if state.guard is None:
        text, result = await state.backend.agenerate(chat, **kwargs)
        return text, _judged(state, result), text

    async def generate(messages: list[dict[str, Any]], ctx: Any) -> tuple[str, ScoreResult]:
        # The request's settings, then what a retry strategy changes (temperature, seed, ...).
        return await state.backend.agenerate(messages, **{**kwargs, **ctx.generate_kwargs})

    guarded = await state.guard.arun(chat, generate, metadata={"source": "service"})
    state.metrics.decisions.labels(action=guarded.action.value).inc()
    scored = next((a.answer for a in guarded.attempts if a.result is guarded.result), None)
    return guarded.answer, _payload(guarded.result, guarded), scored


def _usage(state: ServiceState, payload: ScorePayload, replaced: str | None) -> dict[str, int]:
    """OpenAI usage of what is returned: the scored answer's tokens, or, when the guard replaced the
    answer (``replaced``: the abstention or pending message), that text's tokens."""
    r = payload.result
    prompt = r.prompt_tokens if r is not None else 0
    completion = r.answer_tokens if r is not None else 0
    if replaced is not None:
        tokenizer = getattr(state.scorer, "tokenizer", None)
        encode = getattr(tokenizer, "encode", None)
        # A short fixed message: tokenizing it on the loop costs microseconds.
        completion = len(encode(replaced, add_special_tokens=False)) if callable(encode) else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
