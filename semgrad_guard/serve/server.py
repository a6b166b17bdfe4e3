"""Running the app: uvicorn in the foreground (the CLI), or in a background thread (tests, notebooks)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from ..errors import ServiceUnavailableError


def run(app: Any, host: str, port: int, *, log_level: str = "warning") -> None:
    """Serve ``app`` until interrupted (what ``semgrad-guard serve`` does)."""
    uvicorn.run(app, host=host, port=port, log_level=log_level)


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
