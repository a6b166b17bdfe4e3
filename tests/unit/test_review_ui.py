"""The review pages over a real SQLite queue, through FastAPI's test client: security, decisions, filters."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from semgrad_guard import MockScorer, SQLiteReviewQueue
from semgrad_guard.errors import ConfigurationError
from semgrad_guard.serve import create_app
from semgrad_guard.serve.review_ui import ReviewerTokens, create_review_app, mount_review_ui
from semgrad_guard.serve.review_ui.app import CSRF_COOKIE, SESSION_COOKIE, _segments

ANA = "ana-token-0123456789"
BOB = "bob-token-0123456789"
SHARED = "shared-token-0123456789"
XSS = "<script>document.title='pwned'</script><img src=x onerror=\"alert(1)\">"
TEMPLATES = Path(__file__).resolve().parents[2] / "semgrad_guard" / "serve" / "review_ui" / "templates"


@pytest.fixture
def queue(tmp_path):
    q = SQLiteReviewQueue(tmp_path / "review.db")
    yield q
    q.close()


def fill(q: SQLiteReviewQueue) -> list[int]:
    chat = [
        {"role": "system", "content": "Answer from the context only."},
        {"role": "tool", "content": "Doc 1: Paris is the capital of France.", "tool_call_id": "search"},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    return [
        q.enqueue(chat, "Paris.", confidence=0.62, rule="review_band", metadata={"run": "r1"}),
        q.enqueue("Who wrote Hamlet?", "Marlowe.", confidence=0.41, rule="review_band"),
        q.enqueue("2+2?", "5", confidence=0.2, rule="low_confidence"),
    ]


def client(app, host: str = "127.0.0.1") -> TestClient:
    return TestClient(app, base_url=f"http://{host}", follow_redirects=False)


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "the page has no CSRF field"
    return m.group(1)


def login(c: TestClient, token: str, name: str | None = None, prefix: str = "") -> None:
    page = c.get(f"{prefix}/login")
    data = {"csrf": csrf_of(page.text), "token": token}
    if name is not None:
        data["name"] = name
    r = c.post(f"{prefix}/login", data=data)
    assert r.status_code == 303, r.text


def decide(c: TestClient, item_id: int, action: str, prefix: str = "", **fields: str):
    page = c.get(f"{prefix}/items/{item_id}")
    return c.post(
        f"{prefix}/items/{item_id}/decision", data={"csrf": csrf_of(page.text), "action": action, **fields}
    )


@pytest.fixture
def named(queue):
    return create_review_app(queue, tokens=ReviewerTokens(named={"ana": ANA, "bob": BOB}))


# ------------------------------------------------------------------------------------------ security
def test_every_page_and_action_needs_a_login_but_health_and_static(queue, named):
    (i, *_) = fill(queue)
    c = client(named)
    assert c.get("/").headers["location"] == "/login"
    assert c.get(f"/items/{i}").status_code == 303
    r = c.post(f"/items/{i}/decision", data={"action": "approve"})
    assert r.status_code == 401
    assert c.post(f"/items/{i}/reopen", data={"note": "x"}).status_code == 401
    assert queue.get(i).status.value == "pending"
    assert c.get("/healthz").json() == {"status": "ok"}
    assert c.get("/static/review.js").status_code == 200


def test_a_wrong_token_is_refused_and_a_token_in_the_url_does_nothing(queue, named):
    c = client(named)
    page = c.get("/login")
    r = c.post("/login", data={"csrf": csrf_of(page.text), "token": "not-the-token-at-all"})
    assert r.status_code == 401 and "Wrong token" in r.text
    assert SESSION_COOKIE not in c.cookies
    assert c.get(f"/?token={ANA}").status_code == 303
    assert c.get(f"/login?token={ANA}").status_code == 200 and SESSION_COOKIE not in c.cookies
    # The login form posts the token in the body, never in a URL.
    assert 'method="post"' in page.text and 'type="password"' in page.text


def test_guessing_tokens_is_throttled(queue, named, monkeypatch):
    from semgrad_guard.serve.review_ui import app as ui

    c = client(named)
    csrf = csrf_of(c.get("/login").text)
    for _ in range(ui.LOGIN_FAILURES):
        assert c.post("/login", data={"csrf": csrf, "token": "guess-guess-guess"}).status_code == 401
    r = c.post("/login", data={"csrf": csrf, "token": ANA})  # even the right one, until the window passes
    assert r.status_code == 429 and "wait a few minutes" in r.text
    later = ui._clock() + ui.LOGIN_WINDOW_S + 1
    monkeypatch.setattr(ui, "_clock", lambda: later)
    assert c.post("/login", data={"csrf": csrf, "token": ANA}).status_code == 303


def test_the_session_cookie_is_httponly_and_samesite_strict_and_cannot_be_forged(queue, named):
    c = client(named)
    page = c.get("/login")
    assert "httponly" in page.headers["set-cookie"].lower()
    r = c.post("/login", data={"csrf": csrf_of(page.text), "token": ANA})
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert ANA.lower() not in cookie  # the token itself is never stored in the browser
    forged = client(named)
    forged.cookies.set(SESSION_COOKIE, "bjpib2I=.0000")  # "n:bob" with a wrong signature
    assert forged.get("/").status_code == 303


def test_posts_without_the_csrf_token_or_from_another_site_are_refused(queue, named):
    (i, *_) = fill(queue)
    c = client(named)
    login(c, ANA)
    assert c.post(f"/items/{i}/decision", data={"action": "approve"}).status_code == 403
    assert c.post(f"/items/{i}/decision", data={"action": "approve", "csrf": "0" * 64}).status_code == 403
    # A token from another browser (another CSRF cookie) does not fit this one.
    other = client(named)
    login(other, BOB)
    stolen = csrf_of(other.get(f"/items/{i}").text)
    assert c.post(f"/items/{i}/decision", data={"action": "approve", "csrf": stolen}).status_code == 403
    page = c.get(f"/items/{i}")
    r = c.post(
        f"/items/{i}/decision",
        data={"action": "approve", "csrf": csrf_of(page.text)},
        headers={"Origin": "http://evil.example"},
    )
    assert r.status_code == 403 and "another site" in r.text
    assert queue.get(i).status.value == "pending"
    # The logout and login forms are protected too.
    assert c.post("/logout", data={}).status_code == 403
    assert client(named).post("/login", data={"token": ANA}).status_code == 403


def test_every_response_carries_a_strict_csp_and_the_templates_have_no_inline_script(queue, named):
    (i, *_) = fill(queue)
    c = client(named)
    login(c, ANA)
    for path in ("/", f"/items/{i}", "/login", "/healthz", "/static/review.css", "/items/999"):
        r = c.get(path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe" not in csp, path
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    for t in TEMPLATES.glob("*.html"):
        text = t.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), t.name
        assert not re.search(r"\son[a-z]+\s*=", text), t.name
        assert "style=" not in text, t.name  # style-src 'self' would block it


def test_model_and_user_text_renders_as_text(queue, named):
    i = queue.enqueue(
        [{"role": "system", "content": XSS}, {"role": "user", "content": XSS}],
        XSS,
        rule=XSS,
        metadata={"x": XSS},
    )
    c = client(named)
    login(c, ANA)
    for html in (c.get("/").text, c.get(f"/items/{i}").text, c.get(f"/?rule={XSS}").text):
        assert "<script>document.title" not in html and "<img src=x" not in html
        assert "&lt;script&gt;" in html
    r = decide(c, i, "edit", answer=XSS, note=XSS)
    assert r.status_code == 303
    html = c.get(f"/items/{i}").text
    assert "<img src=x" not in html and html.count("&lt;img src=x onerror=") >= 3


def test_open_pages_answer_only_a_loopback_host(queue):
    (i, *_) = fill(queue)
    app = create_review_app(queue, default_reviewer="carol")
    assert client(app, "evil.example").get("/").status_code == 403  # DNS rebinding
    c = client(app)
    assert c.get("/").status_code == 200
    assert decide(c, i, "approve").status_code == 303
    assert queue.get(i).reviewer == "carol"
    assert c.get("/login").headers["location"] == "/"


def test_a_bearer_header_works_for_scripts(queue):
    (i, *_) = fill(queue)
    app = create_review_app(queue, tokens=ReviewerTokens(shared=SHARED))
    c = client(app)
    h = {"Authorization": f"Bearer {SHARED}", "X-Reviewer": "script"}
    assert c.get("/", headers=h).status_code == 200
    assert c.post(f"/items/{i}/decision", data={"action": "reject"}, headers=h).status_code == 303
    assert queue.get(i).reviewer == "script"
    assert c.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 303


# ------------------------------------------------------------------------------------------ reviewers
def test_a_shared_token_asks_the_name_and_records_it(queue):
    (i, *_) = fill(queue)
    app = create_review_app(queue, tokens=ReviewerTokens(shared=SHARED))
    c = client(app)
    page = c.get("/login")
    r = c.post("/login", data={"csrf": csrf_of(page.text), "token": SHARED, "name": "  "})
    assert r.status_code == 400 and "Type your name" in r.text
    login(c, SHARED, name="Dana Smith")
    assert "Dana Smith" in c.get("/").text
    decide(c, i, "approve", note="checked the source")
    it = queue.get(i)
    assert it.reviewer == "Dana Smith" and it.audit[-1].actor == "Dana Smith"


def test_reviewer_tokens_file(tmp_path):
    f = tmp_path / "reviewers.txt"
    f.write_text(f"# team\nana: {ANA}\nbob:{BOB}  # night shift\n")
    t = ReviewerTokens.from_file(f)
    assert t.reviewer_for(ANA) == "ana" and t.reviewer_for(BOB) == "bob" and t.reviewer_for("x") is None
    for text, msg in (
        ("ana\n", "expected 'name: token'"),
        ("ana: short\n", "16 or more"),
        (f"ana: {ANA}\nana: {BOB}\n", "listed twice"),
        (f"ana: {ANA}\nbob: {ANA}\n", "someone else's"),
        ("# nobody\n", "lists no reviewer"),
    ):
        f.write_text(text)
        with pytest.raises(ConfigurationError, match=msg):
            ReviewerTokens.from_file(f)
    with pytest.raises(ConfigurationError, match="cannot read"):
        ReviewerTokens.from_file(tmp_path / "missing.txt")


def test_a_reviewer_removed_from_the_file_is_logged_out(queue, tmp_path):
    key = b"k" * 32
    c = client(create_review_app(queue, tokens=ReviewerTokens(named={"ana": ANA}), secret=key))
    login(c, ANA)
    assert c.get("/").status_code == 200
    later = create_review_app(queue, tokens=ReviewerTokens(named={"bob": BOB}), secret=key)
    c2 = client(later)
    c2.cookies = c.cookies
    assert c2.get("/").status_code == 303


# ------------------------------------------------------------------------------------------ decisions
def test_a_decision_opens_the_next_pending_item_and_the_last_one_clears_the_queue(queue, named):
    a, b, c3 = fill(queue)
    c = client(named)
    login(c, ANA)
    r = decide(c, a, "approve")
    assert r.headers["location"] == f"/items/{b}"
    r = decide(c, c3, "reject")
    assert r.headers["location"] == f"/items/{b}"  # wraps to the oldest pending
    r = decide(c, b, "edit", answer="Shakespeare.", note="fixed")
    assert r.headers["location"] == "/?cleared=1"
    assert "No pending item left" in c.get(r.headers["location"]).text
    it = queue.get(b)
    assert (it.status.value, it.final_answer, it.reviewer, it.note) == (
        "edited",
        "Shakespeare.",
        "ana",
        "fixed",
    )


def test_a_second_reviewer_gets_a_clear_already_decided_page(queue, named):
    (i, *_) = fill(queue)
    ana, bob = client(named), client(named)
    login(ana, ANA)
    login(bob, BOB)
    bob_page = bob.get(f"/items/{i}").text  # both have the item open
    assert decide(ana, i, "approve").status_code == 303
    r = bob.post(f"/items/{i}/decision", data={"csrf": csrf_of(bob_page), "action": "reject"})
    assert r.status_code == 409
    assert re.search(r"already approved by ana at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", r.text)
    assert queue.get(i).status.value == "approved"
    page = bob.get(f"/items/{i}").text
    assert (
        'id="decided"' in page and "approved</strong> by <strong>ana" in page and 'id="approve"' not in page
    )


def test_cannot_tell_is_a_final_decision_and_audit_items_carry_a_badge(queue, named):
    (i, *_) = fill(queue)
    j = queue.enqueue(
        "Capital of Peru?", "Lima.", confidence=0.93, rule="audit", kind="audit", inclusion_probability=0.05
    )
    c = client(named)
    login(c, ANA)
    assert 'id="cannot-tell"' in c.get(f"/items/{i}").text
    assert decide(c, i, "cannot_tell", note="needs a lawyer").status_code == 303
    assert queue.get(i).status.value == "cannot_tell"
    r = decide(c, i, "approve")
    assert r.status_code == 409 and "already marked cannot tell by ana" in r.text
    assert re.search(r'id="count-cannot_tell">1<', c.get("/").text)
    assert 'class="badge audit"' in c.get(f"/items/{j}").text and "p = 0.050" in c.get(f"/items/{j}").text
    assert 'class="badge audit"' in c.get("/?rule=audit").text


def test_bad_decisions_get_a_page_saying_what_is_wrong(queue, named):
    (i, *_) = fill(queue)
    c = client(named)
    login(c, ANA)
    r = decide(c, i, "edit", answer="   ")
    assert r.status_code == 400 and "corrected answer" in r.text
    r = decide(c, i, "delete")
    assert r.status_code == 400 and "approve, reject, edit, cannot_tell" in r.text
    r = c.post("/items/999/decision", data={"csrf": csrf_of(c.get("/").text), "action": "approve"})
    assert r.status_code == 404 and "no review item with id 999" in r.text
    assert c.get("/items/999").status_code == 404
    assert queue.get(i).status.value == "pending"


def test_reopening_is_explicit_and_audited(queue, named):
    (i, *_) = fill(queue)
    c = client(named)
    login(c, BOB)
    decide(c, i, "reject")
    page = c.get(f"/items/{i}").text
    r = c.post(f"/items/{i}/reopen", data={"csrf": csrf_of(page), "note": ""})
    assert r.status_code == 400 and "give a reason" in r.text
    r = c.post(f"/items/{i}/reopen", data={"csrf": csrf_of(page), "note": "wrong call"})
    assert r.status_code == 303 and r.headers["location"] == f"/items/{i}"
    it = queue.get(i)
    assert it.status.value == "pending"
    assert (it.audit[-1].event, it.audit[-1].actor, it.audit[-1].details["note"]) == (
        "reopened",
        "bob",
        "wrong call",
    )
    assert "wrong call" in c.get(f"/items/{i}").text
    r = c.post(f"/items/{i}/reopen", data={"csrf": csrf_of(page), "note": "again"})
    assert r.status_code == 409


def test_a_repeat_page_says_where_it_was_decided(queue, named):
    (i, *_) = fill(queue)
    c = client(named)
    login(c, ANA)
    assert decide(c, i, "approve").status_code == 303
    first = queue.get(i)
    j = queue.enqueue(first.messages, first.answer, confidence=0.62, rule="review_band")
    page = c.get(f"/items/{j}").text
    assert "approved</strong> by <strong>ana" in page and 'id="approve"' not in page
    assert re.search(rf'id="repeat-of">A repeat: .*<a href="/items/{i}">item {i}</a>', page)
    assert 'id="repeat-of"' not in c.get(f"/items/{i}").text


# ------------------------------------------------------------------------------------------ pages
def rows(html: str) -> list[int]:
    return [int(x) for x in re.findall(r'data-href="/items/(\d+)"', html)]


def test_the_queue_filters_sorts_and_counts(queue, named):
    a, b, c3 = fill(queue)
    c = client(named)
    login(c, ANA)
    decide(c, a, "approve")
    html = c.get("/").text
    assert rows(html) == [b, c3, a]  # pending first, oldest first
    assert re.search(r'id="count-pending">2<', html) and re.search(r'id="count-approved">1<', html)
    assert rows(c.get("/?sort=confidence").text) == [c3, b, a]
    assert rows(c.get("/?sort=-confidence").text) == [b, c3, a]
    assert rows(c.get("/?sort=newest").text) == [c3, b, a]
    assert rows(c.get("/?status=approved").text) == [a]
    assert rows(c.get("/?rule=low_confidence").text) == [c3]
    assert rows(c.get("/?reviewer=ana").text) == [a]
    today = queue.get(a).created_at[:10]
    assert rows(c.get(f"/?since={today}&until={today}").text) == [b, c3, a]
    assert rows(c.get("/?until=2000-01-01").text) == []
    for bad in ("/?status=done", "/?sort=random", "/?since=yesterday"):
        r = c.get(bad)
        assert r.status_code == 400 and "got" in r.text


def test_the_queue_page_lists_at_most_max_rows(queue, named, monkeypatch):
    from semgrad_guard.serve.review_ui import app as ui

    fill(queue)
    monkeypatch.setattr(ui, "MAX_ROWS", 2)
    c = client(named)
    login(c, ANA)
    html = c.get("/").text
    assert len(rows(html)) == 2 and "3 of 3 items" in html and "Showing the first 2" in html
    assert "Showing the first" not in c.get("/?rule=low_confidence").text


def test_the_item_page_shows_the_chat_apart_scores_and_audit(queue, named):
    (i, b, _) = fill(queue)
    c = client(named)
    login(c, ANA)
    html = c.get(f"/items/{i}").text
    assert "System prompt" in html and "Answer from the context only." in html
    assert "Retrieved context / tool results (1)" in html and "Doc 1: Paris" in html
    assert re.search(r'id="question">What is the capital of France\?<', html)
    assert re.search(r'id="rule">review_band<', html) and re.search(r'id="confidence">0.620<', html)
    assert f'id="next" href="/items/{b}"' in html and 'id="prev"' not in html
    assert "<strong>created</strong>" in html


def test_shaky_spans_are_highlighted_when_the_result_has_them():
    answer = "Paris is the capital. It has 90 million people."
    spans = [
        {"start": 0, "end": 21, "score": 0.1, "shaky": False},
        SimpleNamespace(start=22, end=len(answer), score=0.9, shaky=True),
        {"start": 5, "end": 400, "score": 1.0},  # does not fit the answer: ignored
    ]
    item = SimpleNamespace(answer=answer, result=SimpleNamespace(spans=spans))
    seg = _segments(item)  # type: ignore[arg-type]
    assert "".join(s["text"] for s in seg) == answer
    assert [s["text"] for s in seg if s["shaky"]] == ["It has 90 million people."]
    assert _segments(SimpleNamespace(answer=answer, result=SimpleNamespace())) is None  # type: ignore[arg-type]
    assert _segments(SimpleNamespace(answer=answer, result=None)) is None  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ mounted
def test_mounted_in_the_service_the_pages_log_in_themselves_and_the_api_keeps_its_token(queue):
    (i, *_) = fill(queue)
    app = create_app(MockScorer(lambda m, a: 0.5, model_id="mock"), token=SHARED)
    mount_review_ui(app, queue, tokens=ReviewerTokens(shared=SHARED))
    with TestClient(app, base_url="http://127.0.0.1", follow_redirects=False) as c:
        assert c.get("/v1/models").status_code == 401
        first = c.get("/review/")
        assert first.headers["location"] == "/review/login"
        assert "path=/review" in first.headers["set-cookie"].lower()
        page = c.get("/review/login")
        assert 'action="/review/login"' in page.text and 'href="/review/static/review.css"' in page.text
        login(c, SHARED, name="eve", prefix="/review")
        r = decide(c, i, "approve", prefix="/review")
        assert r.status_code == 303 and r.headers["location"].startswith("/review/items/")
        assert queue.get(i).reviewer == "eve"
        assert c.get("/v1/models").status_code == 401  # the review login opens no API route
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {SHARED}"}).status_code == 200


def test_csrf_cookie_is_set_once(queue, named):
    c = client(named)
    c.get("/login")
    seed = c.cookies[CSRF_COOKIE]
    assert "set-cookie" not in c.get("/login").headers
    assert c.cookies[CSRF_COOKIE] == seed


# ------------------------------------------------------------------------------------------ CLI
def test_review_ui_refuses_a_non_local_bind_without_a_token(tmp_path, monkeypatch, capsys):
    from semgrad_guard.cli import main

    monkeypatch.delenv("SEMGRAD_GUARD_TOKEN", raising=False)
    assert main(["review", "ui", "--db", str(tmp_path / "r.db"), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to bind '0.0.0.0' without a token" in err and "--reviewers-file" in err


def test_review_ui_app_from_the_arguments(tmp_path, monkeypatch):
    from semgrad_guard.cli import build_parser
    from semgrad_guard.cli.review import review_ui_app

    monkeypatch.delenv("SEMGRAD_GUARD_TOKEN", raising=False)
    f = tmp_path / "reviewers.txt"
    f.write_text(f"ana: {ANA}\n")
    db = tmp_path / "fresh.db"
    args = build_parser().parse_args(
        ["review", "ui", "--db", str(db), "--host", "0.0.0.0", "--reviewers-file", str(f)]
    )
    app = review_ui_app(args)
    assert db.exists()  # a fresh queue: the pages serve it empty until the guard fills it
    c = client(app)
    login(c, ANA)
    assert re.search(r'id="count-pending">0<', c.get("/").text)
    monkeypatch.setenv("SEMGRAD_GUARD_TOKEN", SHARED)
    g = tmp_path / "guidelines.txt"
    g.write_text("Approve only what the context says. <b>Never</b> guess.")
    args = build_parser().parse_args(["review", "ui", "--db", str(db), "--guidelines", str(g)])
    app = review_ui_app(args)
    assert app.state.review_login
    with SQLiteReviewQueue(db) as q:
        i = q.enqueue("q?", "a")
    c = client(app)
    login(c, SHARED, name="ana")
    assert "Approve only what the context says. &lt;b&gt;Never&lt;/b&gt; guess." in c.get(f"/items/{i}").text
    args = build_parser().parse_args(
        ["review", "ui", "--db", str(db), "--guidelines", str(tmp_path / "no.txt")]
    )
    with pytest.raises(ConfigurationError, match="cannot read --guidelines"):
        review_ui_app(args)


def test_serve_has_a_review_ui_flag():
    from semgrad_guard.cli import build_parser

    args = build_parser().parse_args(["serve", "--review-ui", "--reviewers-file", "r.txt"])
    assert args.review_ui and str(args.reviewers_file) == "r.txt"


def test_the_item_page_marks_shaky_spans_and_escapes_them(queue, named):
    answer = "Paris is the capital. It has <b>90</b> million people."
    i = queue.enqueue("Tell me about Paris.", answer, confidence=0.3, rule="review_band")
    spans = [{"start": 22, "end": len(answer), "score": 0.91, "shaky": True}]

    class WithSpans:  # a queue whose results carry spans (ScoreResult.spans, where the scorer gives them)
        def __getattr__(self, name):
            return getattr(queue, name)

        def get(self, item_id):
            it = queue.get(item_id)
            result = SimpleNamespace(spans=spans, scores=lambda: {"semgrad": 0.5}, flags=[])
            return it.model_construct(**{**dict(it), "result": result})

    app = create_review_app(WithSpans(), tokens=ReviewerTokens(named={"ana": ANA}))  # type: ignore[arg-type]
    c = client(app)
    login(c, ANA)
    html = c.get(f"/items/{i}").text
    assert (
        '<mark class="shaky" title="shaky: 0.910">It has &lt;b&gt;90&lt;/b&gt; million people.</mark>' in html
    )
    assert "Paris is the capital. <mark" in html
    # Without spans the answer is shown plain.
    c2 = client(named)
    login(c2, ANA)
    assert "<mark" not in c2.get(f"/items/{i}").text


def test_serve_review_ui_checks_the_reviewers_file_before_loading_weights(tmp_path, monkeypatch, capsys):
    from semgrad_guard.cli import main

    monkeypatch.delenv("SEMGRAD_GUARD_TOKEN", raising=False)
    bad = tmp_path / "reviewers.txt"
    bad.write_text("ana: short\n")
    # --model names nothing loadable: reaching the weights would fail with another message.
    code = main(["serve", "--model", str(tmp_path / "none"), "--review-ui", "--reviewers-file", str(bad)])
    assert code == 2 and "16 or more" in capsys.readouterr().err
    code = main(["serve", "--ray", "--review-ui"])
    assert code == 2 and "not served on Ray Serve" in capsys.readouterr().err


def test_the_mounted_pages_redirect_their_bare_prefix_and_leave_other_paths_to_the_service(queue):
    app = create_app(MockScorer(lambda m, a: 0.5, model_id="mock"), token=SHARED)
    mount_review_ui(app, queue, tokens=ReviewerTokens(shared=SHARED))
    with TestClient(app, base_url="http://127.0.0.1", follow_redirects=False) as c:
        assert c.get("/review").headers["location"] == "/review/"
        assert c.get("/reviewers").status_code == 401  # not under the prefix: the service's gate
        assert c.get("/healthz").json() == {"status": "ok"}


def test_span_scores_are_marked_by_the_span_policys_decisions():
    from semgrad_guard import SpanScore

    answer = "Paris is the capital. It has 90 million people."

    def span(start, end):
        return SpanScore(
            start=start, end=end, token_start=0, token_end=1, text=answer[start:end], semgrad=0.1,
            exgrad=0.1, hybridgrad=0.1, nll=1.0, mean_nll=1.0, mean_entropy=1.0,
        )  # fmt: skip

    spans = [span(0, 21), span(22, len(answer))]
    decisions = [
        {"action": "keep", "confidence": 0.8, "reason": "r", "start": 0, "end": 21},
        {"action": "drop", "confidence": 0.05, "reason": "r", "start": 22, "end": len(answer)},
    ]
    item = SimpleNamespace(
        answer=answer, result=SimpleNamespace(spans=spans), metadata={"span_decisions": decisions}
    )
    seg = _segments(item)  # type: ignore[arg-type]
    assert [(s["text"], s["score"]) for s in seg if s["shaky"]] == [("It has 90 million people.", 0.05)]
    # Span scores nobody judged are not marked.
    bare = SimpleNamespace(answer=answer, result=SimpleNamespace(spans=spans), metadata={})
    assert _segments(bare) is None  # type: ignore[arg-type]
