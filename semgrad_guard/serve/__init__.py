"""The scoring service: ``semgrad-guard serve``, an OpenAI-compatible endpoint with the guard behind it.

Needs the ``serve`` extra (``pip install 'semgrad-guard[serve]'``). Nothing in the core imports this
package (``import semgrad_guard`` never imports FastAPI); the CLI imports it when ``serve`` runs.
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    from ..errors import MissingDependencyError

    raise MissingDependencyError(e.name or "fastapi", "serve", "semgrad-guard serve") from e

from .app import ServiceState, build_state, create_app, error_body, model_info, status_of
from .batching import MicroBatcher, ServiceBackend
from .metrics import ServiceMetrics
from .server import BackgroundServer, ServeProcess, free_port
from .settings import ServeSettings, is_local_host

__all__ = [
    "BackgroundServer",
    "MicroBatcher",
    "ServeProcess",
    "ServeSettings",
    "ServiceBackend",
    "ServiceMetrics",
    "ServiceState",
    "build_state",
    "create_app",
    "error_body",
    "free_port",
    "is_local_host",
    "model_info",
    "status_of",
]
