"""The review queue in a browser (``semgrad-guard review ui``, or mounted in ``semgrad-guard serve``).

:func:`create_review_app` builds the pages over any :class:`~semgrad_guard.ReviewQueue`;
:func:`mount_review_ui` adds them to the scoring service under a prefix (they do their own login).
"""

from __future__ import annotations

from typing import Any

try:
    import jinja2  # noqa: F401
    import python_multipart  # noqa: F401  (FastAPI parses forms with it)
except ImportError as e:  # pragma: no cover - depends on the environment
    from ...errors import MissingDependencyError

    raise MissingDependencyError(e.name or "jinja2", "serve", "the review pages") from e

from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ...review.queue import ReviewQueue
from .app import create_review_app
from .auth import ReviewerTokens

PREFIX = "/review"


def mount_review_ui(app: Any, queue: ReviewQueue, *, prefix: str = PREFIX, **kwargs: Any) -> None:
    """Serve the review pages on a :func:`~semgrad_guard.serve.create_app` app under ``prefix``.

    Requests under ``prefix`` go to the pages before the service's bearer-token gate: the pages log
    reviewers in themselves (a browser cannot send a bearer header), with ``kwargs["tokens"]``; the
    review login opens no API route. Call it before the app starts serving.
    """
    app.add_middleware(_Prefix, prefix=prefix.rstrip("/"), pages=create_review_app(queue, **kwargs))


class _Prefix:
    """ASGI: ``prefix`` and everything under it to ``pages`` (mounted there), the rest to ``app``."""

    def __init__(self, app: ASGIApp, prefix: str, pages: ASGIApp) -> None:
        self.app, self.prefix, self.pages = app, prefix, pages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == self.prefix or path.startswith(self.prefix + "/")):
            if path == self.prefix:  # the pages' root is prefix + "/"
                await RedirectResponse(self.prefix + "/", 308)(scope, receive, send)
                return
            await self.pages({**scope, "root_path": scope.get("root_path", "") + self.prefix}, receive, send)
            return
        await self.app(scope, receive, send)


__all__ = ["PREFIX", "ReviewerTokens", "create_review_app", "mount_review_ui"]
