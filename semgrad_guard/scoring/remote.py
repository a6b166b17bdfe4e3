"""``RemoteScorer``: the Scorer and GeneratingScorer protocols over HTTP, against ``semgrad-guard serve``.

Like httpx's ``Client`` / ``AsyncClient``, the sync and async paths share everything that is not I/O
(:class:`_Wire`: building requests, reading responses, turning error bodies back into the same typed
errors, the retry policy); they differ only where they await. Needs the ``serve`` extra (httpx).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .. import errors
from ..errors import (
    MissingDependencyError,
    ServedModelMismatchError,
    ServiceAuthError,
    ServiceError,
    ServiceUnavailableError,
)
from ..messages import Messages, check_text, normalize_messages
from ..results import ScoreResult

try:
    import httpx
except ImportError as e:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("httpx", "serve", "RemoteScorer") from e

_T = TypeVar("_T")

TOKEN_ENV = "SEMGRAD_GUARD_TOKEN"
RETRIED = (httpx.ConnectError, httpx.ConnectTimeout)
"""Retried on every call: the request never reached the service."""
RETRIED_IF_IDEMPOTENT = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
"""Also retried on scoring and the model listing (pure functions of their input), not on
``generate``: the connection dropped mid-call (a stale keep-alive, a restarted or killed replica).
A 503 saying a Ray replica died with the request in flight (``details.replica_lost``) is treated
the same way; every other 503 (queue full, no replica up) is retried on every call."""

GENERATE_KWARGS = frozenset({"max_new_tokens", "do_sample", "temperature", "top_p", "seed"})
"""Generation settings sent to the service (what the Guard's retry strategies change)."""


class _Overloaded(Exception):
    """A 503 inside the retry loop (retried; becomes ServiceUnavailableError when attempts run out).

    ``in_flight``: the request reached a replica that died before answering (Ray Serve's
    ``details.replica_lost``), so it is retried only when idempotent, as a dropped connection is.
    """

    def __init__(self, error: ServiceUnavailableError) -> None:
        self.error = error
        self.in_flight = getattr(error, "replica_lost", False) is True
        super().__init__(str(error))


def _error_class(name: str | None) -> type[errors.SemGradGuardError] | None:
    cls = getattr(errors, name or "", None)
    if isinstance(cls, type) and issubclass(cls, errors.SemGradGuardError):
        return cls
    return None


def error_from_response(status: int, body: Any, headers: Mapping[str, str]) -> errors.SemGradGuardError:
    """The typed error an error answer stands for: the same class the service raised, when it is ours."""
    body = body if isinstance(body, Mapping) else {}
    name = body.get("type")
    message = str(body.get("message") or f"the scoring service answered {status}")
    details = body.get("details") if isinstance(body.get("details"), Mapping) else {}
    retry_after = _retry_after(headers)
    cls = _error_class(name)
    if cls is None:
        if status == 401 or status == 403:
            cls = ServiceAuthError
        elif status == 503:
            cls = ServiceUnavailableError
        elif status == 413:
            cls = errors.RequestTooLargeError
        else:
            cls = ServiceError
    # Built without the class's own __init__ (ContextLengthError's takes token counts): message and data.
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    for key, value in (details or {}).items():
        if key != "semgrad":
            setattr(err, key, value)
    if isinstance(err, ServiceError):
        err.status, err.error_type = status, name
    if isinstance(err, ServiceUnavailableError):
        err.retry_after = retry_after
    return err


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class _Wire:
    """Everything RemoteScorer does that is not I/O."""

    def __init__(self, url: str, token: str | None, model: str | None, weights_hash: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.model = model
        self.weights_hash = weights_hash

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def score_body(self, messages: Messages, answer: str) -> dict[str, Any]:
        # Checked here as in process: a lone surrogate is a ScoringError, not httpx's UnicodeEncodeError.
        return {"messages": normalize_messages(messages), "answer": check_text(answer, "answer")}

    def batch_body(self, pairs: Sequence[tuple[Messages, str]]) -> dict[str, Any]:
        return {"items": [self.score_body(m, a) for m, a in pairs]}

    def generate_body(self, messages: Messages, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(kwargs) - GENERATE_KWARGS)
        if unknown:
            raise errors.ConfigurationError(
                f"RemoteScorer.generate cannot send {unknown} to the service; it takes {sorted(GENERATE_KWARGS)}"
            )
        return {
            "messages": normalize_messages(messages),
            **{k: v for k, v in kwargs.items() if v is not None},
        }

    def read(self, response: httpx.Response) -> Any:
        """The JSON of a success; raises the typed error of a failure (503 as _Overloaded, to be retried)."""
        if response.is_success:
            try:
                return response.json()
            except ValueError as e:
                raise ServiceError(
                    f"{self.url} answered {response.status_code} with a body that is not JSON; "
                    "is this a semgrad-guard service?",
                    status=response.status_code,
                ) from e
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text[:500]}
        err = error_from_response(response.status_code, body, response.headers)
        if response.status_code == 503 and isinstance(err, ServiceUnavailableError):
            raise _Overloaded(err)
        raise err

    def parse(self, path: str, build: Callable[[], _T]) -> _T:
        """``build()`` over a success body, a malformed one being a :class:`ServiceError` (cause chained)."""
        try:
            return build()
        except (
            KeyError,
            IndexError,
            TypeError,
            ValueError,
        ) as e:  # pydantic's ValidationError is a ValueError
            raise ServiceError(
                f"{self.url}{path} answered a body that is not a semgrad-guard answer ({type(e).__name__}); "
                "is this a semgrad-guard service of the same version?"
            ) from e

    def check_model(self, listing: Any) -> dict[str, Any]:
        """The served model's description, after checking it is the one named (id or alias, weights hash)."""
        try:
            entry = listing["data"][0]
            info = dict(entry["semgrad"])
        except (KeyError, IndexError, TypeError) as e:
            raise ServiceError(
                f"{self.url}/v1/models did not describe a semgrad-guard model; is this a semgrad-guard service?"
            ) from e
        names = {entry["id"], *info.get("aliases", [])}
        if self.model is not None and self.model not in names:
            raise ServedModelMismatchError(
                f"the service at {self.url} serves {entry['id']!r}, not {self.model!r}; point RemoteScorer at a "
                f"service holding {self.model!r}, or name model={entry['id']!r}"
            )
        expected = self.weights_hash or self._shipped_hash()
        if expected is not None and info.get("weights_hash") != expected:
            raise ServedModelMismatchError(
                f"the service at {self.url} serves {entry['id']!r} with weights {str(info.get('weights_hash'))[:12]}..., "
                f"not the expected {expected[:12]}...; scores from other weights do not match your calibrator or "
                "policy: serve the same weights"
            )
        return info

    def _shipped_hash(self) -> str | None:
        # A shipped model (a registry name such as "default", or its id): its profile records its
        # weights fingerprint. Registry names resolve to ids first: "default" is not "any shipped model".
        if self.model is None:
            return None
        from .profile import _stored_profiles
        from .registry import known_models

        known = known_models()
        model_id = known[self.model].model_id if self.model in known else self.model
        for p in _stored_profiles():
            if p.weights_sha256 and p.model_id == model_id:
                return p.weights_sha256
        return None

    def retrying(
        self, attempts: int, max_wait: float, *, asynchronous: bool, idempotent: bool, sleep: Any = None
    ) -> Any:
        import tenacity

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome is not None else None
            if isinstance(exc, _Overloaded) and exc.error.retry_after is not None:
                return min(exc.error.retry_after, max_wait)  # the service said how long
            return float(min(0.2 * 2 ** (state.attempt_number - 1), max_wait))

        retried = (*RETRIED, *(RETRIED_IF_IDEMPOTENT if idempotent else ()))

        def retry(exc: BaseException) -> bool:
            if isinstance(exc, _Overloaded):
                return idempotent or not exc.in_flight
            return isinstance(exc, retried)

        cls = tenacity.AsyncRetrying if asynchronous else tenacity.Retrying
        extra: dict[str, Any] = {"sleep": sleep} if sleep is not None else {}
        return cls(
            **extra,
            stop=tenacity.stop_after_attempt(attempts),
            wait=wait,
            retry=tenacity.retry_if_exception(retry),
            reraise=True,
        )

    def failure(self, exc: BaseException, attempts: int, timeout: httpx.Timeout) -> errors.SemGradGuardError:
        """The typed error a transport failure stands for (the caller chains ``exc`` as its cause)."""
        if isinstance(exc, _Overloaded):
            err = exc.error
            err.args = (f"{err} (after {attempts} attempt{'s' if attempts != 1 else ''})",)
            return err
        name = type(exc).__name__
        if isinstance(exc, RETRIED):
            message = (
                f"cannot reach the scoring service at {self.url} after {attempts} attempts ({name}: {exc})"
            )
        elif isinstance(exc, httpx.TimeoutException):
            # Not retried: a frozen service would hold the caller attempts x timeout.
            message = (
                f"the scoring service at {self.url} did not answer in time ({name}, timeout {timeout.read}s); "
                "give RemoteScorer a larger timeout if it is busy scoring long answers"
            )
        elif isinstance(exc, httpx.TransportError):  # dropped mid-call; retried when idempotent
            message = f"the connection to the scoring service at {self.url} failed ({name}: {exc})"
        else:  # TooManyRedirects, DecodingError, ...: the service answered, but not as one
            return ServiceError(
                f"the request to the scoring service at {self.url} failed ({name}: {exc})", error_type=name
            )
        return ServiceUnavailableError(f"{message}; is `semgrad-guard serve` running there?", error_type=name)


VERDICT_FIELDS = ("confidence", "action", "rule")
"""The server's verdict in a score payload (what :meth:`RemoteScorer.score_with_verdict` returns)."""


def _verdict_of(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {k: payload[k] for k in VERDICT_FIELDS if payload.get(k) is not None}


class RemoteScorer:
    """A scorer whose model runs in ``semgrad-guard serve``: works wherever a scorer is accepted.

    Sync and async (httpx), with timeouts, retries on connection errors and 503 only (waiting what
    ``Retry-After`` says; a connection dropped mid-call, or a Ray replica lost mid-call, is retried
    for scoring, never for ``generate``; a read timeout is never retried), every transport failure
    raised as a
    :class:`ServiceUnavailableError` (or :class:`ServiceError`) whose ``__cause__`` is httpx's
    exception, and the service's typed errors raised as the same classes
    (``ContextLengthError``, ``UnknownRoleError``, ...). At first use it checks, via ``/v1/models``, that
    the service holds the model named by ``model`` (and ``weights_hash``, or for the embedded model its
    shipped fingerprint): :class:`ServedModelMismatchError` otherwise.

    Args:
        url: The service's base URL (``http://127.0.0.1:8000``).
        token: Bearer token (default: ``$SEMGRAD_GUARD_TOKEN``).
        model: The model the caller expects (an id or an alias such as ``"default"``); None: any.
        weights_hash: The expected weights fingerprint (``/v1/models``' ``weights_hash``).
        timeout: Seconds for a whole request (scoring waits in the service's queue).
        connect_timeout: Seconds to connect.
        max_attempts: Attempts per call (connection errors and 503 are retried).
        max_wait: Longest wait between attempts (seconds).
        transport, async_transport: httpx transports (tests: ``httpx.ASGITransport``, ``MockTransport``).

    Example:
        >>> from semgrad_guard import MockScorer
        >>> from semgrad_guard.serve import BackgroundServer, create_app
        >>> with BackgroundServer(create_app(MockScorer(lambda m, a: 0.25, model_id="mock"))) as server:
        ...     RemoteScorer(server.url, model="mock").score("Capital of France?", "Paris").semgrad
        0.25
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        model: str | None = None,
        weights_hash: str | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        max_attempts: int = 4,
        max_wait: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_attempts < 1:
            raise errors.ConfigurationError(f"max_attempts must be at least 1, got {max_attempts}")
        self._wire = _Wire(
            url, token if token is not None else os.environ.get(TOKEN_ENV), model, weights_hash
        )
        self.url = self._wire.url
        self.model_id: str | None = model if model not in (None, "default") else None
        self.profile: Any = None
        self.served: dict[str, Any] | None = None
        self.max_attempts = max_attempts
        self.max_wait = max_wait
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._transport = transport
        self._async_transport = async_transport
        self._client: httpx.Client | None = None
        self._aclients: dict[int, httpx.AsyncClient] = {}
        self._lock = threading.Lock()
        self._sleep: Any = None  # tests record the waits here instead of sleeping
        self._asleep: Any = None

    # ------------------------------------------------------------------ Scorer
    def score(self, messages: Messages, answer: str, *, spans: Any = None) -> ScoreResult:
        data = self._call("/v1/score", _with_spans(self._wire.score_body(messages, answer), spans))
        return self._wire.parse("/v1/score", lambda: ScoreResult.model_validate(data["result"]))

    def score_batch(self, pairs: Sequence[tuple[Messages, str]]) -> list[ScoreResult]:
        if not pairs:
            return []
        data = self._call("/v1/score/batch", self._wire.batch_body(pairs))
        return self._wire.parse(
            "/v1/score/batch", lambda: [ScoreResult.model_validate(item["result"]) for item in data["items"]]
        )

    async def ascore(self, messages: Messages, answer: str, *, spans: Any = None) -> ScoreResult:
        data = await self._acall("/v1/score", _with_spans(self._wire.score_body(messages, answer), spans))
        return self._wire.parse("/v1/score", lambda: ScoreResult.model_validate(data["result"]))

    async def ascore_batch(self, pairs: Sequence[tuple[Messages, str]]) -> list[ScoreResult]:
        if not pairs:
            return []
        data = await self._acall("/v1/score/batch", self._wire.batch_body(pairs))
        return self._wire.parse(
            "/v1/score/batch", lambda: [ScoreResult.model_validate(item["result"]) for item in data["items"]]
        )

    # ------------------------------------------------------------------ the server's verdict
    def score_with_verdict(self, messages: Messages, answer: str) -> tuple[ScoreResult, dict[str, Any]]:
        """The score and the server's verdict on it: ``{confidence, action, rule}`` as the service's
        calibrator and policy gave them (keys only for what it holds; ``{}`` for a bare service).

        What an adapter with no policy of its own reports, so a remote score carries the same verdict
        as an in-process one (``SemGradCallbackHandler(RemoteScorer(...))`` uses it).
        """
        data = self._call("/v1/score", self._wire.score_body(messages, answer))
        return ScoreResult.model_validate(data["result"]), _verdict_of(data)

    async def ascore_with_verdict(
        self, messages: Messages, answer: str
    ) -> tuple[ScoreResult, dict[str, Any]]:
        """Async :meth:`score_with_verdict`."""
        data = await self._acall("/v1/score", self._wire.score_body(messages, answer))
        return ScoreResult.model_validate(data["result"]), _verdict_of(data)

    # ------------------------------------------------------------------ GeneratingScorer
    def generate(self, messages: Messages, **generate_kwargs: Any) -> tuple[str, ScoreResult]:
        """The served model's answer (not guarded by the service) and its score, from one pass."""
        data = self._call(
            "/v1/generate", self._wire.generate_body(messages, generate_kwargs), idempotent=False
        )
        return self._wire.parse(
            "/v1/generate",
            lambda: (str(data["answer"]), ScoreResult.model_validate(data["semgrad"]["result"])),
        )

    async def agenerate(self, messages: Messages, **generate_kwargs: Any) -> tuple[str, ScoreResult]:
        data = await self._acall(
            "/v1/generate", self._wire.generate_body(messages, generate_kwargs), idempotent=False
        )
        return self._wire.parse(
            "/v1/generate",
            lambda: (str(data["answer"]), ScoreResult.model_validate(data["semgrad"]["result"])),
        )

    # ------------------------------------------------------------------ identity
    def describe(self) -> dict[str, Any]:
        """The served model (id, weights hash, profile, calibrator, ...), checked against ``model``; cached."""
        if self.served is None:
            self._accept(self._wire.check_model(self._send("GET", "/v1/models", None)))
        assert self.served is not None
        return self.served

    async def adescribe(self) -> dict[str, Any]:
        if self.served is None:
            self._accept(self._wire.check_model(await self._asend("GET", "/v1/models", None)))
        assert self.served is not None
        return self.served

    def _accept(self, info: dict[str, Any]) -> None:
        from .profile import ModelProfile

        self.model_id = str(info["id"])
        if info.get("profile"):
            self.profile = ModelProfile.model_validate(
                {**info["profile"], "chat_template_hash": info.get("chat_template_hash")}
            )
        self.served = info

    # ------------------------------------------------------------------ I/O shells
    def _call(self, path: str, body: dict[str, Any], *, idempotent: bool = True) -> Any:
        self.describe()
        return self._send("POST", path, body, idempotent=idempotent)

    async def _acall(self, path: str, body: dict[str, Any], *, idempotent: bool = True) -> Any:
        await self.adescribe()
        return await self._asend("POST", path, body, idempotent=idempotent)

    def _send(self, method: str, path: str, body: Any, *, idempotent: bool = True) -> Any:
        client = self._sync_client()
        made = 0  # attempts made: a call that is not retried fails after one
        try:
            for attempt in self._wire.retrying(
                self.max_attempts, self.max_wait, asynchronous=False, idempotent=idempotent, sleep=self._sleep
            ):
                made += 1
                with attempt:
                    return self._wire.read(
                        client.request(method, self.url + path, json=body, headers=self._wire.headers())
                    )
        except (_Overloaded, httpx.HTTPError) as e:
            raise self._wire.failure(e, made, self._timeout) from e
        raise AssertionError("unreachable")  # pragma: no cover

    async def _asend(self, method: str, path: str, body: Any, *, idempotent: bool = True) -> Any:
        client = self._async_client()
        made = 0
        try:
            async for attempt in self._wire.retrying(
                self.max_attempts, self.max_wait, asynchronous=True, idempotent=idempotent, sleep=self._asleep
            ):
                made += 1
                with attempt:
                    response = await client.request(
                        method, self.url + path, json=body, headers=self._wire.headers()
                    )
                    return self._wire.read(response)
        except (_Overloaded, httpx.HTTPError) as e:
            raise self._wire.failure(e, made, self._timeout) from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _sync_client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self._timeout, transport=self._transport)
            return self._client

    def _async_client(self) -> httpx.AsyncClient:
        # One client per event loop: an httpx.AsyncClient is bound to the loop that first used it.
        loop = id(asyncio.get_running_loop())
        with self._lock:
            client = self._aclients.get(loop)
            if client is None:
                client = httpx.AsyncClient(timeout=self._timeout, transport=self._async_transport)
                self._aclients[loop] = client
            return client

    def close(self) -> None:
        """Close the sync client (async clients close with :meth:`aclose`)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        self.close()
        clients, self._aclients = list(self._aclients.values()), {}
        for c in clients:
            await c.aclose()

    def __repr__(self) -> str:
        return f"RemoteScorer({self.url!r}, model_id={self.model_id!r})"


def _with_spans(body: dict[str, Any], spans: Any) -> dict[str, Any]:
    """The /v1/score body with the ``spans`` field (``"sentences"`` or ``[[start, end], ...]``) when asked."""
    if spans is None:
        return body
    return {**body, "spans": spans if isinstance(spans, str) else [list(s) for s in spans]}
