"""``semgrad-guard serve``: the scoring service (FastAPI under uvicorn; needs the ``serve`` extra)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ._threads import add_threads_argument

TOKEN_ENV = "SEMGRAD_GUARD_TOKEN"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve scores and guarded, OpenAI-compatible chat completions over HTTP (extra: serve)",
        description="Run the scoring service: POST /v1/score, /v1/score/batch, /v1/generate, "
        "/v1/chat/completions (OpenAI-compatible), GET /v1/models, /healthz, /readyz, /metrics. "
        f"A bearer token ({TOKEN_ENV} or --token-file) is required on every route but health when set.",
    )
    p.add_argument(
        "--model", default="default", help="'default' (the embedded model), a local directory or a hub id"
    )
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --model")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
    p.add_argument(
        "--profile", type=Path, default=None, help="a profile JSON file (default: the shipped one)"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need a token)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one)")
    p.add_argument(
        "--token-file", type=Path, default=None, help=f"file holding the bearer token (else ${TOKEN_ENV})"
    )
    p.add_argument(
        "--calibrator",
        default=None,
        help="a calibrator JSON file, or 'shipped' for the one shipped for the model (default: none)",
    )
    p.add_argument(
        "--policy",
        type=Path,
        default=None,
        help="a guard policy (YAML or JSON) behind every verdict; 'first-day' for a model with no calibrator "
        "yet (serve every answer with a note, audit 20%% into the review queue)",
    )
    p.add_argument("--max-batch-size", type=int, default=8, help="pairs per scoring pass (default 8)")
    p.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill (default 5)"
    )
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests before 503 (default 256)")
    p.add_argument(
        "--max-body-bytes", type=int, default=1_048_576, help="largest request body (default 1 MiB)"
    )
    p.add_argument(
        "--max-answer-chars", type=int, default=32_000, help="longest answer to score (default 32000)"
    )
    p.add_argument(
        "--max-batch-items", type=int, default=64, help="most pairs per batch request (default 64)"
    )
    p.add_argument("--max-new-tokens", type=int, default=512, help="most tokens per completion (default 512)")
    p.add_argument(
        "--max-memory",
        default="4GiB",
        help="memory budget of one scoring pass, e.g. 4GiB; larger requests get 413 (default 4GiB)",
    )
    p.add_argument(
        "--generate-unreviewed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let POST /v1/generate return unguarded answers (default: yes, unless the policy has review rules)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        help="seconds a request body may take to arrive before 408 (default 30)",
    )
    add_threads_argument(
        p, help="torch threads (default: OMP_NUM_THREADS, else torch's; 1 per replica with --ray)"
    )
    review = p.add_argument_group("review pages")
    review.add_argument(
        "--review-ui",
        action="store_true",
        help="also serve the review queue's pages under /review/ (the --policy's queue; login with the token)",
    )
    review.add_argument(
        "--reviewers-file",
        type=Path,
        default=None,
        help="named reviewer tokens for /review/, 'name: token' per line",
    )
    ray = p.add_argument_group("Ray Serve (extra: ray)")
    ray.add_argument(
        "--ray",
        action="store_true",
        help="serve on Ray Serve: replicas behind Ray's HTTP proxy, @serve.batch",
    )
    ray.add_argument(
        "--replicas", type=int, default=1, help="replicas, each with its own weights (default 1)"
    )
    ray.add_argument(
        "--max-replicas",
        type=int,
        default=None,
        help="autoscale between --replicas and this many (Ray Serve autoscaling; default: fixed --replicas)",
    )
    ray.add_argument("--num-cpus", type=float, default=1.0, help="CPUs Ray reserves per replica (default 1)")
    ray.add_argument(
        "--num-gpus", type=float, default=0.0, help="GPUs per replica (default 0; >0 loads on cuda)"
    )
    ray.add_argument("--ray-address", default=None, help="join this Ray cluster (default: start a local one)")
    p.set_defaults(func=_serve)


MAX_TOKEN_FILE_BYTES = 4096
"""Most bytes read from ``--token-file`` (a token is one short line; the bound keeps /dev/zero out)."""


def read_token(token_file: Path | None, environ: Any = os.environ) -> str | None:
    """The bearer token: ``--token-file``'s first line, else ``$SEMGRAD_GUARD_TOKEN``, stripped of surrounding
    whitespace as the ``Authorization`` header is; None when neither is set.

    Raises:
        ConfigurationError: the file cannot be read, its first line is empty or too long, or the
            variable is set to whitespace only.
    """
    if token_file is not None:
        try:
            with token_file.open("rb") as f:
                head = f.read(MAX_TOKEN_FILE_BYTES + 1)
        except OSError as e:
            raise ConfigurationError(f"cannot read --token-file {token_file}: {e}") from e
        first, newline, _ = head.partition(b"\n")
        if not newline and len(head) > MAX_TOKEN_FILE_BYTES:
            raise ConfigurationError(
                f"--token-file {token_file} has no line break in its first {MAX_TOKEN_FILE_BYTES} bytes; "
                "put the token (one short line) in the file"
            )
        try:
            token = first.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise ConfigurationError(
                f"--token-file {token_file} is not UTF-8 text; put the token on its first line"
            ) from e
        if not token:
            raise ConfigurationError(
                f"--token-file {token_file} is empty on its first line; put the token there"
            )
        return token
    raw = environ.get(TOKEN_ENV)
    if raw is None or raw == "":
        return None
    token = str(raw).strip()
    if not token:
        raise ConfigurationError(
            f"{TOKEN_ENV} is set to whitespace only; set it to the token, or unset it to serve without one"
        )
    return token


def settings_from_args(args: argparse.Namespace) -> Any:
    """The :class:`ServeSettings` the arguments ask for, checked (a non-local host needs a token)."""
    from ..serve.settings import ServeSettings, is_local_host

    token = read_token(args.token_file)
    if not is_local_host(args.host) and token is None:
        raise ConfigurationError(
            f"refusing to bind {args.host!r} without a bearer token: anyone who can reach it could use the model. "
            f"Set {TOKEN_ENV} or pass --token-file, or bind 127.0.0.1"
        )
    settings = ServeSettings(
        host=args.host,
        port=args.port,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_body_bytes=args.max_body_bytes,
        max_answer_chars=args.max_answer_chars,
        max_batch_items=args.max_batch_items,
        max_new_tokens=args.max_new_tokens,
        body_timeout_s=args.body_timeout,
        generate_unreviewed=args.generate_unreviewed,
        default_new_tokens=min(256, args.max_new_tokens),
        model_aliases=[args.model] if args.model == "default" else [],
    )
    return settings, token


def build_app(args: argparse.Namespace) -> Any:
    """Load the model, calibrator and policy the arguments name, and build the app (no server started)."""
    settings, token = settings_from_args(args)
    review_tokens = _review_tokens(args, token) if args.review_ui else None  # a bad file: said before loading
    from ..guard.calibration import Calibrator
    from ..serve import create_app  # a missing 'serve' extra is said before any weights load

    policy = policy_from_args(args)  # before loading weights
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from ..scoring.hf_scorer import SemGradScorer

    # Never trust_remote_code: a served checkpoint must not run its own code.
    scorer = SemGradScorer.from_pretrained(
        args.model,
        gguf_file=args.gguf_file,
        device=args.device,
        dtype=args.dtype,
        profile=args.profile,
        max_memory=args.max_memory,
    )
    calibrator = None
    if args.calibrator == "shipped":
        calibrator = Calibrator.default_for(scorer.model_id)
    elif args.calibrator:
        calibrator = Calibrator.load(args.calibrator)
    app = create_app(scorer, calibrator=calibrator, policy=policy, token=token, settings=settings)
    if args.calibrator and args.calibrator != "shipped":
        # POST /admin/calibrator {} and SIGHUP reload this file (calibrate --from-reviews --out it).
        app.state.semgrad_calibrator_path = str(args.calibrator)
    if review_tokens is not None:
        from ..review.queue import open_review_queue
        from ..serve.review_ui import mount_review_ui

        # The pages show the queue the policy's review items go to (a path or a postgresql:// URL;
        # none: $SEMGRAD_GUARD_REVIEW_DB, else the default file).
        spec = policy.review.path if policy is not None else None
        mount_review_ui(app, open_review_queue(spec), tokens=review_tokens)
    return app, settings


def policy_from_args(args: argparse.Namespace) -> Any:
    """The ``--policy`` argument's policy (None without one); ``first-day``: a model with no calibrator
    yet, every answer served with a note and 20% audited (:meth:`GuardPolicy.first_day`)."""
    from ..guard.policy import GuardPolicy

    if args.policy is None:
        return None
    if str(args.policy) == "first-day":
        return GuardPolicy.first_day()
    return GuardPolicy.coerce(args.policy)


def _review_tokens(args: argparse.Namespace, token: str | None) -> Any:
    """Who may log in to /review/: the service's token (shared) and the --reviewers-file names."""
    from ..serve.review_ui import ReviewerTokens

    if args.reviewers_file is not None:
        return ReviewerTokens.from_file(args.reviewers_file, shared=token)
    return ReviewerTokens(shared=token)


def ray_application_from_args(
    args: argparse.Namespace, calibrator: Any = None
) -> tuple[Any, Any, str | None]:
    """The Ray Serve application the arguments ask for (no weights loaded here: each replica loads them).

    ``calibrator``: use this one instead of ``--calibrator``'s (a SIGHUP reload)."""
    settings, token = settings_from_args(args)
    if args.replicas < 1 or (args.max_replicas is not None and args.max_replicas < args.replicas):
        raise ConfigurationError(
            f"--replicas must be at least 1 and --max-replicas at least --replicas (got {args.replicas}, "
            f"{args.max_replicas})"
        )
    import functools

    from ..guard.calibration import Calibrator
    from ..scoring.hf_scorer import SemGradScorer
    from ..serve.ray_app import ray_application  # a missing 'ray' extra is said before anything starts

    policy = policy_from_args(args)
    if calibrator is None:
        calibrator = args.calibrator
        if args.calibrator and args.calibrator != "shipped":
            calibrator = Calibrator.load(args.calibrator)
    device = "cuda" if args.num_gpus > 0 and args.device == "cpu" else args.device
    # Never trust_remote_code: a served checkpoint must not run its own code.
    loader = functools.partial(
        SemGradScorer.from_pretrained,
        args.model,
        gguf_file=args.gguf_file,
        device=device,
        dtype=args.dtype,
        profile=args.profile,
        max_memory=args.max_memory,
    )
    autoscaling = None
    if args.max_replicas is not None and args.max_replicas > args.replicas:
        autoscaling = {
            "min_replicas": args.replicas,
            "max_replicas": args.max_replicas,
            "target_ongoing_requests": args.max_batch_size,
        }
    application = ray_application(
        loader,
        calibrator=calibrator,
        policy=policy,
        token=token,
        settings=settings,
        replicas=args.replicas,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        threads=args.threads or (None if args.num_gpus > 0 else 1),
        autoscaling_config=autoscaling,
    )
    return application, settings, token


def _serve_ray(args: argparse.Namespace) -> int:
    if args.review_ui:
        raise ConfigurationError(
            "--review-ui is not served on Ray Serve; run `semgrad-guard review ui --db <the policy's review "
            "path>` next to it"
        )
    application, settings, token = ray_application_from_args(args)
    from ..serve.ray_app import reload_calibrator_on_ray, run_on_ray, shutdown_ray, start_ray

    scale = (
        f"{args.replicas}..{args.max_replicas} replicas (autoscaling)"
        if args.max_replicas is not None and args.max_replicas > args.replicas
        else f"{args.replicas} replica(s)"
    )
    print(
        f"semgrad-guard: starting Ray Serve with {scale} of {args.model} on http://{settings.host}:{settings.port} "
        f"(token {'required' if token else 'not set'}; policy {'on' if args.policy else 'off'})",
        file=sys.stderr,
        flush=True,
    )
    import signal
    import threading

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    hup = threading.Event()
    path: str | None = args.calibrator if args.calibrator and args.calibrator != "shipped" else None
    current = None
    if path is not None:
        from ..guard.calibration import Calibrator

        current = Calibrator.load(path)  # what the replicas were bound with

    # SIGTERM (process managers, Popen.terminate) and SIGINT stop Ray Serve and the local Ray cleanly,
    # even where SIGINT was ignored when the process started (a background job of a shell).
    try:
        start_ray(args.ray_address)
        # After ray.init, which installs its own SIGTERM handler (it aborts a driver inside serve.run).
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        if path is not None:  # kill -HUP <pid> redeploys every replica with the re-read file
            signal.signal(signal.SIGHUP, lambda signum, frame: hup.set())
        url = run_on_ray(application, host=settings.host, port=settings.port, address=args.ray_address)
        print(f"semgrad-guard: Ray Serve is ready on {url}", file=sys.stderr, flush=True)
        while True:
            if not hup.wait(3600) or path is None:
                continue
            hup.clear()
            try:
                current = reload_calibrator_on_ray(
                    lambda cal: ray_application_from_args(args, calibrator=cal)[0], path, current
                )
                print(
                    f"semgrad-guard: every replica runs calibrator {current.fingerprint}",
                    file=sys.stderr,
                    flush=True,
                )
            except Exception as e:  # a bad file or a failed rollout: keep serving with the old one
                print(
                    f"semgrad-guard: SIGHUP: calibrator {path} not reloaded ({type(e).__name__}: {e}); "
                    "the old one stays",
                    file=sys.stderr,
                    flush=True,
                )
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        shutdown_ray(joined=args.ray_address is not None)
    return 0


def _serve(args: argparse.Namespace) -> int:
    if args.ray:
        return _serve_ray(args)
    settings_from_args(args)  # a bad token or host is said before the port is taken
    from ..serve.server import address_of, bind, run

    # Bound before the model loads: a taken port is said at once, and --port 0 prints the port it got.
    sock = bind(args.host, args.port)
    try:
        app, settings = build_app(args)
        path = getattr(app.state, "semgrad_calibrator_path", None)
        if path is not None:
            from ..serve.calibrator_state import install_sighup

            install_sighup(app, path)  # kill -HUP <pid> reloads the calibrator file
        state = app.state.semgrad
        print(
            f"semgrad-guard: serving {state.model_id} on {address_of(sock)} "
            f"(token {'required' if state.token else 'not set'}; policy {'on' if state.policy else 'off'})",
            file=sys.stderr,
            flush=True,
        )
        run(app, settings.host, settings.port, sock=sock)
    finally:
        sock.close()
    return 0
