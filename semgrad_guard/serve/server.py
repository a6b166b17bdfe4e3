"""Running the app: uvicorn in the foreground (the CLI), or in a background thread (tests, notebooks)."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import uvicorn

from ..errors import ConfigurationError, ServiceUnavailableError


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (0: a free port), for :func:`run`; a taken port is a typed error.

    Raises:
        ConfigurationError: the port is in use or the address cannot be bound (the message says which).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts rebind at once
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigurationError(
                f"port {port} on {host} is already in use; stop what listens there, pick another --port, "
                "or pass --port 0 for a free one"
            ) from e
        raise ConfigurationError(
            f"cannot bind {host}:{port}: {e.strerror or e}; check --host and --port"
        ) from e
    return sock


def address_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket (the real port when it was bound to 0)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(
    app: Any, host: str, port: int, *, log_level: str = "warning", sock: socket.socket | None = None
) -> None:
    """Serve ``app`` until interrupted (what ``semgrad-guard serve`` does), on ``sock`` when given
    (from :func:`bind`), else on a socket bound to ``host:port`` here."""
    sock = sock or bind(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
    server.run(sockets=[sock])


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class BackgroundServer:
    """uvicorn in a daemon thread, for tests and notebooks; a context manager.

    Example:
        >>> from semgrad_guard import MockScorer
        >>> from semgrad_guard.serve import create_app
        >>> import httpx
        >>> with BackgroundServer(create_app(MockScorer(lambda m, a: 0.5))) as server:
        ...     httpx.get(server.url + "/healthz").json()
        {'status': 'ok'}
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="semgrad-serve", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ServiceUnavailableError(f"the server on {self.url} did not start within {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServeProcess:
    """``semgrad-guard serve ARGS`` in a child process on a free port, ready when the block starts.

    For cookbooks, benchmarks and tests that want the real command (the model loads in the child).
    The child's output goes to a temporary file, shown in the error when it exits or is not ready in time.

    Args:
        args: Arguments after ``serve`` (``--ray``, ``--calibrator shipped``, ...); ``--port`` is added.
        token: Sets ``SEMGRAD_GUARD_TOKEN`` in the child (unset otherwise, whatever this process has).
        threads: Torch threads of the child (``--threads``; one per replica under ``--ray``).
        ready_timeout: Seconds to wait for ``/readyz``.

    Example (not run here: it loads the embedded model)::

        with ServeProcess("--calibrator", "shipped") as guard:
            RemoteScorer(guard.url, model="default").score(chat, answer)
    """

    def __init__(
        self, *args: str, token: str | None = None, threads: int = 1, ready_timeout: float = 300.0
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "semgrad_guard", "serve", *args, "--port", str(self.port)]
        self.command += ["--threads", str(threads)]
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.env.pop("SEMGRAD_GUARD_TOKEN", None)
        if token is not None:
            self.env["SEMGRAD_GUARD_TOKEN"] = token
        self.ready_timeout = ready_timeout
        self.returncode: int | None = None
        self._log: Any = None
        self._proc: subprocess.Popen[str] | None = None

    def output(self) -> str:
        """What the child wrote so far."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return str(self._log.read())

    def start(self) -> ServeProcess:
        import httpx

        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115  (closed by close())
        self._proc = subprocess.Popen(
            self.command, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if self._proc.poll() is not None:
                message = f"{' '.join(self.command)} exited with {self._proc.returncode}:\n{self.output()}"
                self.close()
                raise ServiceUnavailableError(message)
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                message = f"{' '.join(self.command)} was not ready within {self.ready_timeout:.0f} s:\n{self.output()}"
                self.close()
                raise ServiceUnavailableError(message)
            time.sleep(0.5)

    @property
    def pid(self) -> int | None:
        """The child's process id (None before :meth:`start`)."""
        return self._proc.pid if self._proc is not None else None

    def kill(self) -> None:
        """SIGKILL the child, as a crash or the kernel's OOM killer would (fault tests, benchmarks)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def stop(self, timeout: float = 90.0) -> int | None:
        """SIGTERM (uvicorn stops; ``--ray`` shuts Ray Serve down), SIGKILL after ``timeout``; the exit code
        (None when it had to be killed)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self.returncode = self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
                self.returncode = None
        elif self._proc is not None:
            self.returncode = self._proc.returncode
        return self.returncode

    def close(self) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
