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

from ...review.queue import ReviewQueue
from .app import create_review_app
from .auth import ReviewerTokens

PREFIX = "/review"


def mount_review_ui(app: Any, queue: ReviewQueue, *, prefix: str = PREFIX, **kwargs: Any) -> None:
    """Mount the review pages on a :func:`~semgrad_guard.serve.create_app` app at ``prefix``.

    The service's bearer-token gate lets the prefix through: the pages log reviewers in themselves
    (a browser cannot send a bearer header), with the tokens in ``kwargs["tokens"]``.
    """
    app.mount(prefix, create_review_app(queue, **kwargs))
    holder = getattr(app.state, "semgrad_holder", None)
    if holder is not None:
        holder.own_auth_prefixes = (*getattr(holder, "own_auth_prefixes", ()), prefix + "/")


__all__ = ["PREFIX", "ReviewerTokens", "create_review_app", "mount_review_ui"]
