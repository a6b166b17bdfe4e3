"""The review queue in a browser: server-rendered pages over any :class:`~semgrad_guard.ReviewQueue`.

Every answer on these pages is untrusted model output, so: templates autoescape everything, the
Content-Security-Policy allows only this app's own script and stylesheet (no inline script), every
POST carries a CSRF token bound to a cookie, and every page but ``/healthz`` needs a login when a
token is configured. The token travels in a login form (then an HttpOnly, SameSite=Strict session
cookie) or an ``Authorization: Bearer`` header, never in a URL. Decisions go through
:func:`~semgrad_guard.review.queue.apply_review_decision`, the compare-and-set the CLI uses.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from ...errors import AlreadyDecidedError, ConfigurationError, ReviewItemNotFoundError, ReviewQueueError
from ...review.queue import ReviewItem, ReviewQueue, ReviewStatus, apply_review_decision
from ..settings import is_local_host
from .auth import ReviewerTokens

HERE = Path(__file__).parent
SESSION_COOKIE = "sgr_session"
CSRF_COOKIE = "sgr_csrf"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
LOGIN_FAILURES = 10
"""Wrong tokens one client may send in ``LOGIN_WINDOW_S`` before its logins are refused (429)."""
LOGIN_WINDOW_S = 300.0
_clock = time.monotonic  # the throttle's clock (tests move it)
MAX_ROWS = 500
"""Most rows the queue page lists (the counts cover everything; filters narrow the rest)."""
SORTS = ("age", "newest", "confidence", "-confidence")
ACTIONS = ("approve", "reject", "edit", "cannot_tell")
_ROLE_PANELS = {"system": "system", "developer": "system", "tool": "context", "function": "context"}


class _Redirect(Exception):
    def __init__(self, url: str) -> None:
        self.url = url


class _Page(Exception):
    """Stop and answer with an error page."""

    def __init__(self, status: int, title: str, message: str, item_id: int | None = None) -> None:
        self.status, self.title, self.message, self.item_id = status, title, message, item_id


def create_review_app(
    queue: ReviewQueue,
    *,
    tokens: ReviewerTokens | None = None,
    default_reviewer: str | None = None,
    secret: bytes | None = None,
    title: str = "semgrad-guard review",
    guidelines: str | None = None,
) -> FastAPI:
    """The review pages as an ASGI app: run it alone (``semgrad-guard review ui``) or mount it.

    Args:
        queue: The review queue to work through (any :class:`ReviewQueue`).
        tokens: Who may log in (:class:`ReviewerTokens`); None or empty: open pages, for a local
            bind only (requests whose Host is not a loopback name are refused, against DNS rebinding).
        default_reviewer: The name decisions are recorded under when the pages are open.
        secret: Key signing session cookies and CSRF tokens (default: random per process, so a
            restart logs everyone out).
        title: Shown in the header.
        guidelines: What reviewers should check (plain text), shown on every item page.

    Example:
        >>> from fastapi.testclient import TestClient
        >>> from semgrad_guard import SQLiteReviewQueue
        >>> import tempfile, os
        >>> q = SQLiteReviewQueue(os.path.join(tempfile.mkdtemp(), "r.db"))
        >>> app = create_review_app(q, tokens=ReviewerTokens(shared="a-long-shared-token"))
        >>> TestClient(app).get("/", follow_redirects=False).headers["location"]
        '/login'
    """
    tokens = tokens or ReviewerTokens()
    key = secret or secrets.token_bytes(32)
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    env.filters["when"] = _when
    env.filters["fmt"] = _fmt
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.review_login = tokens.required
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    failures: dict[str, list[float]] = {}  # client address -> times of its recent wrong tokens

    def throttled(client: str) -> bool:
        now = _clock()
        recent = [t for t in failures.get(client, []) if now - t < LOGIN_WINDOW_S]
        failures[client] = recent
        if not recent:
            failures.pop(client, None)  # the table holds only clients that failed lately
        return len(recent) >= LOGIN_FAILURES

    def mac(purpose: str, value: str) -> str:
        return hmac.new(key, f"{purpose}|{value}".encode(), hashlib.sha256).hexdigest()

    def base(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def reviewer_of(request: Request) -> str | None:
        """The logged-in reviewer's name, or None (not logged in)."""
        if not tokens.required:
            return default_reviewer or "local"
        value = _bearer(request)
        if value:
            who = tokens.reviewer_for(value)
            if who is not None:
                return who or request.headers.get("x-reviewer", "").strip()[:64] or "shared token"
            return None
        cookie = request.cookies.get(SESSION_COOKIE, "")
        encoded, _, sig = cookie.rpartition(".")
        if not encoded or not hmac.compare_digest(sig, mac("session", encoded)):
            return None
        try:
            name = base64.urlsafe_b64decode(encoded.encode()).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        # A named reviewer removed from the file is logged out.
        if name.startswith("n:") and name[2:] in tokens.named:
            return name[2:]
        if name.startswith("s:") and tokens.shared:
            return name[2:]
        return None

    def csrf_seed(request: Request) -> str:
        return request.state.csrf_seed  # type: ignore[no-any-return]

    def render(request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        seed = csrf_seed(request)
        html = env.get_template(template).render(
            base=base(request),
            csrf=mac("csrf", seed),
            reviewer=getattr(request.state, "reviewer", None),
            login_required=tokens.required,
            title=title,
            guidelines=guidelines,
            **ctx,
        )
        return HTMLResponse(html, status_code=status)

    def check_post(request: Request, form: Any) -> None:
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host", ""):
            raise _Page(403, "Cross-site request refused", "This form was sent from another site.")
        given = str(form.get("csrf", ""))
        seed = request.cookies.get(CSRF_COOKIE, "")
        if tokens.required and _bearer(request) and reviewer_of(request) is not None:
            return  # another site cannot make a browser send an Authorization header
        if not seed or not hmac.compare_digest(given, mac("csrf", seed)):
            raise _Page(
                403,
                "Form expired",
                "The form's security token is missing or stale (cookies off, or the server restarted). "
                "Reload the page and try again.",
            )

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        seed = request.cookies.get(CSRF_COOKIE) or ""
        fresh = not seed
        request.state.csrf_seed = seed or secrets.token_urlsafe(24)
        path = request.url.path[len(base(request)) :] or "/"
        if not tokens.required and not is_local_host(_hostname(request.headers.get("host", ""))):
            response: Response = HTMLResponse(
                "These review pages are open (no token) and answer only on a loopback address.", 403
            )
        elif path in ("/healthz", "/login") or path.startswith("/static/"):
            response = await call_next(request)
        else:
            who = reviewer_of(request)
            if who is None:
                if request.method == "GET":
                    response = RedirectResponse(f"{base(request)}/login", 303)
                else:
                    response = HTMLResponse("Log in first.", 401)
            else:
                request.state.reviewer = who
                response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        if fresh:
            _set_cookie(request, response, CSRF_COOKIE, request.state.csrf_seed)
        return response

    @app.exception_handler(_Page)
    async def page(request: Request, exc: _Page) -> Response:
        return render(
            request, "message.html", exc.status, heading=exc.title, message=exc.message, item_id=exc.item_id
        )

    @app.exception_handler(_Redirect)
    async def redirect(request: Request, exc: _Redirect) -> Response:
        return RedirectResponse(exc.url, 303)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request) -> Response:
        if not tokens.required:
            return RedirectResponse(f"{base(request)}/", 303)
        return render(request, "login.html", shared=bool(tokens.shared), error=None)

    @app.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = await request.form()
        check_post(request, form)
        client = request.client.host if request.client else "?"
        if throttled(client):
            raise _Page(
                429,
                "Too many wrong tokens",
                f"{LOGIN_FAILURES} wrong tokens from this address in {LOGIN_WINDOW_S / 60:.0f} minutes; "
                "wait a few minutes, then log in with the right token.",
            )
        who = tokens.reviewer_for(str(form.get("token", "")))
        name = " ".join(str(form.get("name", "")).split())[:64]
        if who is None:
            failures.setdefault(client, []).append(_clock())
            return render(request, "login.html", 401, shared=bool(tokens.shared), error="Wrong token.")
        if who == "" and not name:
            return render(
                request,
                "login.html",
                400,
                shared=True,
                error="Type your name: decisions are recorded under it.",
            )
        value = f"n:{who}" if who else f"s:{name}"
        encoded = base64.urlsafe_b64encode(value.encode()).decode()
        response = RedirectResponse(f"{base(request)}/", 303)
        _set_cookie(request, response, SESSION_COOKIE, f"{encoded}.{mac('session', encoded)}")
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        check_post(request, await request.form())
        response = RedirectResponse(f"{base(request)}/login", 303)
        response.delete_cookie(SESSION_COOKIE, path=_cookie_path(request))
        return response

    @app.get("/", response_class=HTMLResponse)
    async def queue_page(
        request: Request,
        status: str = "",
        rule: str = "",
        reviewer: str = "",
        since: str = "",
        until: str = "",
        sort: str = "age",
    ) -> Response:
        if status and status not in _statuses():
            raise _Page(400, "Unknown status", f"status is one of {', '.join(_statuses())}; got {status!r}.")
        if sort not in SORTS:
            raise _Page(400, "Unknown sort", f"sort is one of {', '.join(SORTS)}; got {sort!r}.")
        for name, value in (("since", since), ("until", until)):
            if value and not _is_date(value):
                raise _Page(400, "Bad date", f"{name} is a date like 2026-12-03; got {value!r}.")
        items = await run_in_threadpool(queue.list, None)
        counts = {s: 0 for s in _statuses()}
        for it in items:
            counts[it.status.value] = counts.get(it.status.value, 0) + 1
        rules = sorted({it.rule for it in items if it.rule})
        reviewers = sorted({it.reviewer for it in items if it.reviewer})
        shown = [
            it
            for it in items
            if (not status or it.status.value == status)
            and (not rule or it.rule == rule)
            and (not reviewer or it.reviewer == reviewer)
            and (not since or it.created_at[:10] >= since)
            and (not until or it.created_at[:10] <= until)
        ]
        shown = _sorted(shown, sort)
        matching = len(shown)
        shown = shown[:MAX_ROWS]
        now = datetime.now(timezone.utc)
        return render(
            request,
            "queue.html",
            items=shown,
            matching=matching,
            total=len(items),
            counts=counts,
            rules=rules,
            reviewers=reviewers,
            filters={"status": status, "rule": rule, "reviewer": reviewer, "since": since, "until": until},
            sort=sort,
            statuses=_statuses(),
            ages={it.id: _age(it.created_at, now) for it in shown},
            cleared=request.query_params.get("cleared") == "1",
        )

    @app.get("/items/{item_id}", response_class=HTMLResponse)
    async def item_page(request: Request, item_id: int) -> Response:
        it = await run_in_threadpool(_get, queue, item_id)
        pending = [p.id for p in _sorted(await run_in_threadpool(queue.list, ReviewStatus.PENDING), "age")]
        prev_id, next_id = _neighbours(pending, item_id)
        panels = _panels(it.messages)
        return render(
            request,
            "item.html",
            item=it,
            panels=panels,
            scores=it.result.scores() if it.result is not None else {},
            segments=_segments(it),
            prev_id=prev_id,
            next_id=next_id,
            pending_left=len(pending),
            can_cannot_tell=any(s.value == "cannot_tell" for s in ReviewStatus),
            can_reopen=callable(getattr(queue, "reopen", None)),
            verbs=_past_tense(),
        )

    @app.post("/items/{item_id}/decision")
    async def decide(request: Request, item_id: int) -> Response:
        form = await request.form()
        check_post(request, form)
        action = str(form.get("action", ""))
        if action not in ACTIONS:
            raise _Page(400, "Unknown action", f"A decision is one of {', '.join(ACTIONS)}; got {action!r}.")
        answer = str(form.get("answer", "")) if action == "edit" else None
        note = str(form.get("note", "")).strip() or None
        if action == "edit" and not (answer or "").strip():
            raise _Page(400, "Empty edit", "An edit needs the corrected answer text.", item_id)
        try:
            # The queue blocks (SQLite waits on a writer's lock): off the event loop, which may be the service's.
            await run_in_threadpool(
                apply_review_decision,
                queue,
                item_id,
                action,
                answer=answer,
                reviewer=request.state.reviewer or None,
                note=note,
            )
        except AlreadyDecidedError as e:
            verb = _past_tense().get(e.status, e.status)
            raise _Page(
                409,
                f"Already {verb}",
                f"Item {item_id} was already {verb} by {e.reviewer or 'an unnamed reviewer'} at "
                f"{_when(e.decided_at)}. Decisions are final; your {action.replace('_', ' ')} was not recorded.",
                item_id,
            ) from e
        except ReviewItemNotFoundError as e:
            raise _Page(404, "No such item", str(e)) from e
        except ConfigurationError as e:
            raise _Page(400, "Decision refused", str(e), item_id) from e
        pending = [p.id for p in _sorted(await run_in_threadpool(queue.list, ReviewStatus.PENDING), "age")]
        after = [p for p in pending if p > item_id] or pending
        if after:
            return RedirectResponse(f"{base(request)}/items/{after[0]}", 303)
        return RedirectResponse(f"{base(request)}/?cleared=1", 303)

    @app.post("/items/{item_id}/reopen")
    async def reopen(request: Request, item_id: int) -> Response:
        form = await request.form()
        check_post(request, form)
        note = str(form.get("note", "")).strip()
        if not note:
            raise _Page(400, "Say why", "Re-opening is audited: give a reason in the note.", item_id)
        fn = getattr(queue, "reopen", None)
        if not callable(fn):
            raise _Page(400, "Cannot re-open", f"{type(queue).__name__} has no reopen().", item_id)
        try:
            await run_in_threadpool(fn, item_id, reviewer=request.state.reviewer or None, note=note)
        except ReviewItemNotFoundError as e:
            raise _Page(404, "No such item", str(e)) from e
        except ReviewQueueError as e:
            raise _Page(409, "Nothing to re-open", str(e), item_id) from e
        return RedirectResponse(f"{base(request)}/items/{item_id}", 303)

    return app


# ------------------------------------------------------------------------------------------ helpers
def _statuses() -> list[str]:
    return [s.value for s in ReviewStatus]


def _past_tense() -> dict[str, str]:
    """How a status reads after "already ... by A at T" (and on a decided item)."""
    return {s: "marked cannot tell" if s == "cannot_tell" else s.replace("_", " ") for s in _statuses()}


def _bearer(request: Request) -> str:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _cookie_path(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/") or "/"


def _set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path=_cookie_path(request),
    )


def _get(queue: ReviewQueue, item_id: int) -> ReviewItem:
    try:
        return queue.get(item_id)
    except ReviewItemNotFoundError as e:
        raise _Page(404, "No such item", str(e)) from e


def _is_date(value: str) -> bool:
    try:
        datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        return False
    return True


def _sorted(items: Iterable[ReviewItem], sort: str) -> list[ReviewItem]:
    """Pending first, then by ``sort``: age (oldest first), newest, confidence (lowest first) or -confidence."""

    def conf(it: ReviewItem, sign: float) -> float:
        return sign * it.confidence if it.confidence is not None else float("inf")

    keys: dict[str, Callable[[ReviewItem], Any]] = {
        "age": lambda it: it.id,
        "newest": lambda it: -it.id,
        "confidence": lambda it: (conf(it, 1.0), it.id),
        "-confidence": lambda it: (conf(it, -1.0), it.id),
    }
    key = keys[sort]
    return sorted(items, key=lambda it: (it.status is not ReviewStatus.PENDING, key(it)))


def _neighbours(ids: Sequence[int], item_id: int) -> tuple[int | None, int | None]:
    before = [i for i in ids if i < item_id]
    after = [i for i in ids if i > item_id]
    return (before[-1] if before else None), (after[0] if after else None)


def _age(created_at: str, now: datetime) -> str:
    try:
        seconds = (now - datetime.fromisoformat(created_at)).total_seconds()
    except ValueError:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(0, int(seconds))}s"


def _when(at: str | None) -> str:
    return at[:19].replace("T", " ") + " UTC" if at else "an unknown time"


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _panels(messages: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The chat split the way a reviewer reads it: system prompt, context (tool results), earlier turns, question."""
    out: dict[str, list[dict[str, Any]]] = {"system": [], "context": [], "turns": [], "question": []}
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    for i, m in enumerate(messages):
        role = str(m.get("role", ""))
        content = m.get("content")
        text = content if isinstance(content, str) else _flatten(content)
        entry = {"role": role, "text": text, "name": m.get("name") or m.get("tool_call_id")}
        if i == last_user:
            out["question"].append(entry)
        else:
            out[_ROLE_PANELS.get(role, "turns")].append(entry)
    return out


def _flatten(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, list):
        return "\n".join(str(p.get("text", p)) if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def _field(span: Any, name: str) -> Any:
    return span.get(name) if isinstance(span, dict) else getattr(span, name, None)


def _segments(item: ReviewItem) -> list[dict[str, Any]] | None:
    """The answer cut at the shaky spans (``ScoreResult.spans``, where the scorer gives them), else None.

    A span has character offsets ``start``/``end`` into the answer (a :class:`~semgrad_guard.SpanScore`).
    It is shaky when the span policy's decision on it (``metadata["span_decisions"]``, written by the
    Guard) is not ``keep``, and its score is that decision's confidence; a span with its own ``shaky``
    and ``score`` fields says so itself. Spans that do not fit the answer are ignored rather than shown
    at the wrong place.
    """
    spans = getattr(item.result, "spans", None) if item.result is not None else None
    if not spans:
        return None
    decided = (getattr(item, "metadata", None) or {}).get("span_decisions")
    decisions = {
        (d.get("start"), d.get("end")): d
        for d in (decided if isinstance(decided, list) else [])
        if isinstance(d, dict)
    }
    text = item.answer
    marks = []
    for s in spans:
        start, end = _field(s, "start"), _field(s, "end")
        if not isinstance(start, int) or not isinstance(end, int) or not 0 <= start < end <= len(text):
            continue
        shaky, score = _field(s, "shaky"), _field(s, "score")
        decision = decisions.get((start, end))
        if decision is not None:
            shaky, score = decision.get("action") not in (None, "keep"), decision.get("confidence")
        elif shaky is None:
            shaky = score is not None  # a bare score from the scorer, undecided: shown as it says
        marks.append((start, end, score, bool(shaky)))
    marks.sort()
    out: list[dict[str, Any]] = []
    at = 0
    for start, end, score, shaky in marks:
        if start < at:
            continue  # overlapping spans: keep the first
        if start > at:
            out.append({"text": text[at:start], "shaky": False, "score": None})
        out.append({"text": text[start:end], "shaky": shaky, "score": score})
        at = end
    if at < len(text):
        out.append({"text": text[at:], "shaky": False, "score": None})
    return out if any(s["shaky"] for s in out) else None
