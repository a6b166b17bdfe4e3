"""Scale-out on Ray Serve: the same FastAPI app, one copy per replica, batched by ``@serve.batch``.

Needs the ``ray`` extra (``pip install 'semgrad-guard[ray]'``). Each replica loads the weights itself
(:class:`SemGradReplica` gets a zero-argument loader, so nothing heavy is pickled), builds the app with
:func:`~semgrad_guard.serve.create_app`, and scores through :class:`RayBatchBackend`: Ray Serve's
``@serve.batch(max_batch_size, batch_wait_timeout_s)`` groups a replica's concurrent requests, and one
worker thread runs each batch (and each generation), as :class:`~semgrad_guard.serve.MicroBatcher` does
in the single-process server. Routes, errors, token and limits are the app's own; Ray Serve's HTTP
proxy spreads requests over the replicas.

``semgrad-guard serve --ray --replicas N [--num-gpus G]`` runs it; :func:`ray_application` and
:func:`run_on_ray` are the same from Python.

What Ray's proxy answers by itself (a replica died with the request in flight, no replica is up, a
Ray timeout) would be plain text; :class:`ProxyErrors`, installed in the proxy by :func:`start_ray`
through Ray's ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``, makes those the service's JSON errors
(503 with ``Retry-After``), so clients such as :class:`~semgrad_guard.RemoteScorer` read and retry them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

try:
    from ray import serve
except ImportError as e:  # pragma: no cover - depends on the environment
    from ..errors import MissingDependencyError

    raise MissingDependencyError(e.name or "ray", "ray", "semgrad-guard serve --ray") from e

from ..guard.calibration import Calibrator
from ..guard.policy import GuardPolicy
from ..messages import Messages
from ..results import ScoreResult
from ..scorer import Scorer
from .app import create_app
from .batching import generate_releasing, queue_full, score_batch_releasing
from .metrics import ServiceMetrics
from .settings import ServeSettings

logger = logging.getLogger(__name__)

APP_NAME = "semgrad-guard"
"""The Ray Serve application's name (``serve.status()``, ``serve.delete``)."""
RELOAD_ON_RAY = (
    "POST /admin/calibrator is refused on Ray Serve: it would reach one replica and leave the others on "
    "the old calibrator. Reload every replica with `kill -HUP <pid of semgrad-guard serve --ray>` (it "
    "re-reads the --calibrator file and redeploys, a rolling update; payloads' calibrator_version says "
    "which one judged them)"
)
"""Why a replica refuses the admin reload, and what reloads all of them."""


class RayBatchBackend:
    """A :class:`~semgrad_guard.serve.ServiceBackend` whose batching is Ray Serve's ``@serve.batch``.

    Score requests wait in Ray's batch queue for at most ``max_wait_ms`` for up to ``max_batch_size``
    pairs; each batch runs ``score_batch`` on one worker thread (a pair that fails its batch is
    rescored alone). Generations run on the same thread, between batches. More than ``max_queue``
    requests in flight on this replica get the app's 503 with Retry-After.
    """

    def __init__(
        self, scorer: Scorer, settings: ServeSettings, metrics: ServiceMetrics | None = None
    ) -> None:
        self.scorer = scorer
        self.model_id = getattr(scorer, "model_id", None)
        self.profile = getattr(scorer, "profile", None)
        self.max_queue = settings.max_queue
        self.retry_after_s = settings.retry_after_s
        self._observe = metrics.observe_pass if metrics is not None else None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semgrad-ray-worker")
        self._in_flight = 0

        async def score_list(pairs: list[tuple[Messages, str]]) -> list[ScoreResult | Exception]:
            if self._observe is not None:
                self._observe("score", len(pairs))
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, score_batch_releasing, self.scorer, pairs)

        # A closure, not a method: Ray's batch queue is per decorated function, so per backend here.
        self._batched = serve.batch(
            max_batch_size=settings.max_batch_size, batch_wait_timeout_s=settings.max_wait_ms / 1000.0
        )(score_list)

    def score(self, messages: Messages, answer: str) -> ScoreResult:
        return self.scorer.score(messages, answer)

    def score_batch(self, pairs: Sequence[tuple[Messages, str]]) -> list[ScoreResult]:
        return self.scorer.score_batch(pairs)

    def generate(self, messages: Messages, **generate_kwargs: Any) -> tuple[str, ScoreResult]:
        return self.scorer.generate(messages, **generate_kwargs)  # type: ignore[attr-defined,no-any-return]

    async def ascore(self, messages: Messages, answer: str) -> ScoreResult:
        (result,) = await self.ascore_batch([(messages, answer)])
        return result

    async def ascore_batch(self, pairs: Sequence[tuple[Messages, str]]) -> list[ScoreResult]:
        self._admit(len(pairs))
        try:
            outs = await asyncio.gather(*(self._batched(pair) for pair in pairs))
        finally:
            self._in_flight -= len(pairs)
        results: list[ScoreResult] = []
        for out in outs:
            if isinstance(out, BaseException):
                raise out
            results.append(out)
        return results

    async def agenerate(self, messages: Messages, **generate_kwargs: Any) -> tuple[str, ScoreResult]:
        generate = getattr(self.scorer, "generate", None)
        if generate is None:
            raise TypeError(f"{type(self.scorer).__name__} cannot generate (not a GeneratingScorer)")
        self._admit(1)
        try:
            if self._observe is not None:
                self._observe("generate", 1)
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(
                self._executor, generate_releasing, generate, messages, generate_kwargs
            )
        finally:
            self._in_flight -= 1
        return out  # type: ignore[no-any-return]

    def queue_depth(self) -> int:
        return self._in_flight

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _admit(self, n: int) -> None:
        if self._in_flight + n > self.max_queue:
            raise queue_full(self._in_flight, self.max_queue, self.retry_after_s)
        self._in_flight += n


@serve.ingress()
class SemGradReplica:
    """One Ray Serve replica: loads the scorer, then serves :func:`create_app` over it.

    Args:
        loader: Zero-argument function returning the scorer (called once, in the replica).
        calibrator: A :class:`Calibrator` or its JSON dict, ``"shipped"`` (the one shipped for the loaded
            model) or None.
        policy: A guard policy (or its dict), or None.
        token: Bearer token every route but health needs (None: open).
        settings: The app's :class:`ServeSettings` as a dict (batching: ``max_batch_size``, ``max_wait_ms``).
        threads: torch threads in this replica (None: leave torch's choice).
    """

    def __init__(
        self,
        loader: Callable[[], Scorer],
        calibrator: Calibrator | Mapping[str, Any] | str | None = None,
        policy: Mapping[str, Any] | None = None,
        token: str | None = None,
        settings: Mapping[str, Any] | None = None,
        threads: int | None = None,
    ) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        self._scorer = loader()  # before the replica reports ready: no request waits for the weights
        if calibrator == "shipped":
            calibrator = Calibrator.default_for(str(getattr(self._scorer, "model_id", "")))
        elif isinstance(calibrator, Mapping):
            calibrator = Calibrator.model_validate(dict(calibrator))
        self._calibrator = calibrator
        self._policy = GuardPolicy.coerce(dict(policy)) if policy is not None else None
        self._token = token
        self._settings = ServeSettings(**dict(settings or {}))

    def __serve_build_asgi_app__(self) -> Any:
        app = create_app(
            self._scorer,
            calibrator=self._calibrator if isinstance(self._calibrator, Calibrator) else None,
            policy=self._policy,
            token=self._token,
            settings=self._settings,
            backend_factory=RayBatchBackend,
        )
        app.state.semgrad_reload_refusal = RELOAD_ON_RAY
        return app


def ray_application(
    loader: Callable[[], Scorer],
    *,
    calibrator: Calibrator | str | None = None,
    policy: GuardPolicy | Mapping[str, Any] | None = None,
    token: str | None = None,
    settings: ServeSettings | None = None,
    replicas: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    threads: int | None = 1,
    autoscaling_config: Mapping[str, Any] | None = None,
) -> Any:
    """The Ray Serve application (``Deployment.bind(...)``): ``replicas`` copies of the service.

    Args:
        loader: Zero-argument function returning the scorer; each replica calls it once (pickled by
            Ray, so a ``functools.partial(SemGradScorer.from_pretrained, ...)`` or a module function).
        calibrator, policy, token, settings: As for :func:`~semgrad_guard.serve.create_app`
            (``calibrator="shipped"``: the one shipped for the loaded model).
        replicas: Fixed number of replicas (ignored when ``autoscaling_config`` is given).
        num_cpus, num_gpus: Ray resources each replica reserves (``num_gpus=1``: one GPU per replica;
            the loader must then put the model on ``cuda``).
        threads: torch threads per replica (1 on a small CPU box: replicas, not threads, share the cores).
        autoscaling_config: Ray Serve's autoscaling config (``min_replicas``, ``max_replicas``,
            ``target_ongoing_requests``, ...), see docs/serve.md.
    """
    settings = settings or ServeSettings()
    the_policy = GuardPolicy.coerce(policy) if policy is not None else None
    options: dict[str, Any] = {
        "name": "SemGradReplica",
        "ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus},
        # Enough requests per replica for a batch to fill; beyond max_queue the app answers 503.
        "max_ongoing_requests": max(settings.max_queue, 2 * settings.max_batch_size),
    }
    if autoscaling_config is not None:
        options["autoscaling_config"] = dict(autoscaling_config)
    else:
        options["num_replicas"] = replicas
    deployment: Any = serve.deployment(SemGradReplica)
    deployment = deployment.options(**options)
    return deployment.bind(
        loader,
        # As JSON, like the policy: Ray pickles the replica's arguments again after it starts, and a
        # Calibrator object the replica's Guard watches by then holds its review queue's connections.
        calibrator.model_dump(mode="json") if isinstance(calibrator, Calibrator) else calibrator,
        the_policy.model_dump(mode="json") if the_policy is not None else None,
        token,
        settings.model_dump(mode="json"),
        threads,
    )


REPLICA_LOST_RETRY_AFTER_S = 1
"""``Retry-After`` of the 503 for a request whose replica died or that found none up: Ray routes the
retry to a live replica (or waits for the replacement)."""
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "semgrad_guard.serve.ray_app:proxy_middlewares"
"""The value :func:`start_ray` gives ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``; on a cluster this
process does not start, set it in the environment of ``ray start`` on every node."""


class ProxyErrors:
    """Pure ASGI middleware in Ray Serve's HTTP proxy: its own answers become the service's JSON errors.

    The service itself always answers JSON. When the proxy answers instead, it is Ray's doing: a
    replica that died with the request in flight (the proxy sends nothing, and uvicorn would send a
    plain-text 500), no replica up (plain-text 503), Ray's own request timeout (408). Those become
    ``ServiceUnavailableError`` 503s with ``Retry-After`` (a died replica's with
    ``details.replica_lost``: the request may have been partly handled, so only idempotent calls
    should repeat it) and a JSON 408. Anything the service answered passes through untouched.
    """

    def __init__(self, app: ASGIApp, retry_after_s: int = REPLICA_LOST_RETRY_AFTER_S) -> None:
        self.app = app
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        held: Message | None = None  # the proxy's own plain-text error, replaced at its last body part
        text = b""

        async def sending(message: Message) -> None:
            nonlocal started, held, text
            if message["type"] == "http.response.start" and not started and _proxy_error(message):
                held = message
                return
            if held is not None and message["type"] == "http.response.body":
                text += message.get("body", b"")
                if not message.get("more_body", False):
                    started = True
                    await self._answer(send, int(held["status"]), text.decode("utf-8", "replace"))
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            if started:
                raise
            logger.exception("Ray Serve's proxy failed on %s", scope.get("path"))
        if not started:
            await self._answer(send, None, "")

    async def _answer(self, send: Send, status: int | None, ray_says: str) -> None:
        headers = [(b"content-type", b"application/json")]
        if status == 408:
            body: dict[str, Any] = {
                "type": "RequestTimeoutError",
                "message": f"Ray Serve timed the request out ({ray_says.strip()[:200]}); send it again, "
                "or raise Ray Serve's request_timeout_s",
            }
            out = 408
        else:
            out = 503
            headers.append((b"retry-after", str(self.retry_after_s).encode()))
            if status is None:
                body = {
                    "type": "ServiceUnavailableError",
                    "message": "the replica handling this request stopped before answering (Ray Serve "
                    f"replaces it); retry after {self.retry_after_s} s: another replica takes it. It may "
                    "have been partly handled: repeat only what is safe to repeat (scoring is)",
                    "details": {"replica_lost": True},
                }
            else:
                body = {
                    "type": "ServiceUnavailableError",
                    "message": f"Ray Serve could not hand the request to a replica ({status}: "
                    f"{ray_says.strip()[:200]}); retry after {self.retry_after_s} s",
                }
        raw = json.dumps(body).encode()
        headers.append((b"content-length", str(len(raw)).encode()))
        await send({"type": "http.response.start", "status": out, "headers": headers})
        await send({"type": "http.response.body", "body": raw})


def _proxy_error(start: Message) -> bool:
    """A response start that is Ray's own error: 408, 429 or 5xx, not JSON (the service's are)."""
    status = int(start["status"])
    if status != 408 and status != 429 and status < 500:
        return False
    types = [v for k, v in start.get("headers", []) if k.lower() == b"content-type"]
    return not any(t.startswith(b"application/json") for t in types)


def proxy_middlewares() -> list[Middleware]:
    """Ray Serve's HTTP proxy callback (:data:`PROXY_CALLBACK`): installs :class:`ProxyErrors`."""
    return [Middleware(ProxyErrors)]


def start_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start a local Ray (``num_cpus``: its size; default all cores) or join ``address``; no-op if started.

    A local Ray's HTTP proxy gets :class:`ProxyErrors` (unless ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``
    is already set): Ray's processes inherit this environment when they start.
    """
    import ray

    if not ray.is_initialized():
        if address is None:
            os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
        ray.init(
            address=address,
            num_cpus=num_cpus if address is None else None,
            include_dashboard=False,
            log_to_driver=False,
        )


def run_on_ray(
    application: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    num_cpus: int | None = None,
    blocking: bool = False,
) -> str:
    """Start Ray (see :func:`start_ray`) and Ray Serve's HTTP proxy on ``host:port``, and deploy ``application``.

    Returns the service's URL once every replica is up. ``blocking=True`` serves until interrupted.
    Stop it with :func:`shutdown_ray`.
    """
    from .server import free_port

    port = port or free_port(host)
    start_ray(address, num_cpus)
    serve.start(http_options={"host": host, "port": port})
    serve.run(application, name=APP_NAME, route_prefix="/", blocking=blocking)
    return f"http://{host}:{port}"


def reload_calibrator_on_ray(
    build: Callable[[Calibrator], Any], path: str | Path, current: Calibrator | None
) -> Calibrator:
    """Re-read the calibrator at ``path`` and redeploy the running application with it.

    ``build(calibrator)`` makes the application (as :func:`ray_application`); Ray Serve updates the
    deployment in place, replica by replica, each one judged by one calibrator throughout (the
    payloads' ``calibrator_version`` says which). Returns when every replica runs the new one.

    Raises:
        CalibrationError: The file is not a calibrator.
        CalibratorMismatchError: It was fitted on another model or profile than ``current``; nothing
            is redeployed.
    """
    new = Calibrator.load(path)
    if current is not None:
        # The driver holds no weights: the running calibrator stands for the served model.
        new.check_compatible(current.model_id, current.profile)
    serve.run(build(new), name=APP_NAME, route_prefix="/")
    logger.info(
        "calibrator reloaded on every replica: %s -> %s (%s)",
        current.fingerprint if current is not None else None,
        new.fingerprint,
        new.data,
    )
    return new


def shutdown_ray(*, joined: bool = False) -> None:
    """Stop Ray Serve and the local Ray this process started; ``joined``: only delete the app and disconnect."""
    import ray

    if joined:
        serve.delete(APP_NAME)  # the cluster and its other applications are someone else's
    else:
        serve.shutdown()  # type: ignore[no-untyped-call,unused-ignore]  # typed only when ray is installed
    ray.shutdown()
