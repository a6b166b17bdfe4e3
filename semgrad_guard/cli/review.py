"""``semgrad-guard review list | show ID | approve ID | reject ID | edit ID --answer TEXT | cannot-tell ID |
reopen ID | export [--labels]``.

The queue is ``--db PATH`` or ``--db postgresql://...``, else ``$SEMGRAD_GUARD_REVIEW_DB``, else ``review.db`` in the user
data directory (the same default the :class:`~semgrad_guard.Guard` uses). A database that does not
exist yet is an empty queue (``list`` and ``export`` show nothing); the CLI never creates one.
Decisions are final: deciding an item that was decided already exits 2 naming who decided what and
when; ``reopen`` undoes a decision explicitly (audited). ``review ui`` serves the queue's pages in a
browser (extra ``serve``; it creates an empty queue when there is none, for the guard to fill).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._text import repeats_note, visible


def register(subparsers: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        metavar="PATH|URL",
        default=None,
        help="review queue: a SQLite file or a postgresql://user@host/db URL (password via PGPASSWORD or "
        "~/.pgpass, not the URL; default: $SEMGRAD_GUARD_REVIEW_DB or review.db in the user data dir)",
    )
    parser = subparsers.add_parser(
        "review", help="human review queue: list, show, approve, reject, edit, export"
    )
    sub = parser.add_subparsers(dest="review_command", required=True, metavar="ACTION")

    statuses = ["pending", "approved", "rejected", "edited", "cannot_tell"]
    p = sub.add_parser("list", parents=[common], help="list review items (newest first)")
    p.add_argument("--status", choices=statuses, default=None)
    p.add_argument("--limit", type=int, default=50, help="at most this many items (default 50; 0 = all)")
    p.set_defaults(func=_list)

    p = sub.add_parser("show", parents=[common], help="show one item with its chat, scores and audit trail")
    p.add_argument("id", type=int)
    p.set_defaults(func=_show)

    for name, helptext in (("approve", "approve the answer as it is"), ("reject", "reject the answer")):
        p = sub.add_parser(name, parents=[common], help=helptext)
        p.add_argument("id", type=int)
        p.add_argument("--reviewer", default=None, help="who decides (default: $USER)")
        p.add_argument("--note", default=None)
        p.set_defaults(func=_decide, decision=name)

    p = sub.add_parser("edit", parents=[common], help="replace the answer with yours")
    p.add_argument("id", type=int)
    p.add_argument("--answer", required=True, help="the corrected answer")
    p.add_argument("--reviewer", default=None, help="who decides (default: $USER)")
    p.add_argument("--note", default=None)
    p.set_defaults(func=_decide, decision="edit")

    p = sub.add_parser(
        "cannot-tell",
        parents=[common],
        help="record that you cannot tell whether the answer is right (final; not used as a label)",
    )
    p.add_argument("id", type=int)
    p.add_argument("--reviewer", default=None, help="who decides (default: $USER)")
    p.add_argument("--note", default=None)
    p.set_defaults(func=_decide, decision="cannot_tell")

    p = sub.add_parser(
        "reopen",
        parents=[common],
        help="put a decided item back to pending (audited) so it can be decided again",
    )
    p.add_argument("id", type=int)
    p.add_argument("--reviewer", default=None, help="who re-opens (default: $USER)")
    p.add_argument("--note", default=None, help="why (kept in the audit trail)")
    p.set_defaults(func=_decide, decision="reopen")

    p = sub.add_parser("export", parents=[common], help="export items as JSONL or CSV (oldest first)")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", dest="fmt")
    p.add_argument("--status", choices=statuses, default=None)
    p.add_argument(
        "--labels",
        action="store_true",
        help="write the labels instead (decided items with scores, weighted): JSONL that calibrate --data reads",
    )
    p.add_argument("--output", "-o", default=None, help="file to write (default: standard output)")
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "ui",
        parents=[common],
        help="the queue in a browser: a page to work through it (extra: serve)",
        description="Serve the review pages. Open (no token) on a loopback address only; with a token "
        "($SEMGRAD_GUARD_TOKEN or --token-file: one shared token, reviewers type their name) or "
        "--reviewers-file (name: token lines), every page needs a login.",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need a token)"
    )
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: a free one)")
    p.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="file holding the shared token (else $SEMGRAD_GUARD_TOKEN)",
    )
    p.add_argument(
        "--reviewers-file", type=Path, default=None, help="named reviewer tokens, 'name: token' per line"
    )
    p.add_argument(
        "--reviewer", default=None, help="name decisions are recorded under on open pages (default: $USER)"
    )
    p.add_argument(
        "--guidelines",
        type=Path,
        default=None,
        help="a text file of what reviewers should check (shown on each item)",
    )
    p.set_defaults(func=_ui)


def _spec(args: argparse.Namespace) -> str:
    """The queue named by --db, else $SEMGRAD_GUARD_REVIEW_DB, else the default file (a path or a URL)."""
    from ..review.postgres import is_postgres_url
    from ..review.queue import default_review_db, warn_if_password_in_url

    if args.db:
        warn_if_password_in_url(args.db, source="--db")
        return str(args.db) if is_postgres_url(args.db) else str(Path(args.db).expanduser())
    return default_review_db()


def _queue(args: argparse.Namespace) -> Any:
    """The queue, or None when there is none yet (an empty queue): the CLI never creates one."""
    from ..errors import ReviewItemNotFoundError, ReviewQueueMissingError
    from ..review.queue import open_review_queue, review_db_name

    spec = _spec(args)
    try:
        return open_review_queue(spec, create=False)
    except ReviewQueueMissingError:
        if getattr(args, "id", None) is not None:
            raise ReviewItemNotFoundError(
                f"no review item with id {args.id}: the review queue {review_db_name(spec)} is empty (nothing "
                "was queued yet; check --db or $SEMGRAD_GUARD_REVIEW_DB)"
            ) from None
        return None


def _console() -> Any:
    from rich.console import Console

    # Width: the terminal's, else $COLUMNS, else 80. No highlighting or emoji codes: stored text is
    # shown as it is, through _plain.
    return Console(highlight=False, emoji=False)


def _plain(text: Any, style: str = "") -> Any:
    """Stored text as a rich ``Text``: never read as markup (``[/bold]``, ``[link=...]``)."""
    from rich.text import Text

    return Text(visible(str(text)), style=style)


def _short(text: str, n: int = 60) -> Any:
    text = " ".join(text.split())
    return _plain(text if len(text) <= n else text[: n - 1] + "…")


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ..review.queue import ReviewStatus, review_db_name

    q = _queue(args)
    if q is None:
        items: list[Any] = []
        counts = {s.value: 0 for s in ReviewStatus}
    else:
        with q:
            items = q.list(args.status, limit=args.limit or None)
            counts = q.counts()
    # No rules and one space between columns: at 80 columns the dates stay whole and the question
    # and answer give up the room (cut with an ellipsis, never wrapped).
    table = Table(
        title=_plain(f"Review queue {review_db_name(_spec(args))}"),
        box=None,
        padding=(0, 1),
        collapse_padding=True,
        pad_edge=False,
        header_style="bold underline",
    )
    console = _console()
    rules = [visible(it.rule or "-") for it in items]
    widths = {
        "id": max([2, *(len(str(it.id)) for it in items)]),
        "created (UTC)": 19,
        "status": 8,
        "rule": min(max((len(r) for r in rules), default=4), 12),
        "conf.": 5,
        "semgrad": 7,
    }
    # Fixed columns at their width; the question and answer share what is left (cut with an
    # ellipsis), at least 8 columns each; one space between columns.
    text_width = max(8, (console.width - sum(widths.values()) - (len(widths) + 1)) // 2)
    for col, w in widths.items():
        right = col in ("id", "conf.", "semgrad")
        table.add_column(
            col, justify="right" if right else "left", width=w, no_wrap=True, overflow="ellipsis"
        )
    for col in ("question", "answer"):
        table.add_column(col, width=text_width, no_wrap=True, overflow="ellipsis")
    style = {
        "pending": "yellow",
        "approved": "green",
        "rejected": "red",
        "edited": "cyan",
        "cannot_tell": "magenta",
    }
    for it in items:
        table.add_row(
            str(it.id),
            it.created_at[:19].replace("T", " "),
            _plain(it.status.value, style[it.status.value]),
            _plain(it.rule or "-"),
            _fmt(it.confidence),
            _fmt(it.result.semgrad if it.result else None, ".3g"),
            _short(it.question, text_width),
            _short(it.final_answer if it.final_answer is not None else it.answer, text_width),
        )
    console.print(table)
    console.print(", ".join(f"{k}: {v}" for k, v in counts.items()))
    return 0


def _show(args: argparse.Namespace) -> int:
    from rich.panel import Panel
    from rich.table import Table

    with _queue(args) as q:
        it = q.get(args.id)
    console = _console()
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("id", str(it.id))
    head.add_row("status", it.status.value)
    head.add_row("created", _plain(it.created_at))
    head.add_row("rule", _plain(it.rule or "-"))
    head.add_row("confidence", _fmt(it.confidence))
    if it.reviewer or it.decided_at:
        head.add_row("reviewer", _plain(it.reviewer or "-"))
        head.add_row("decided", _plain(it.decided_at or "-"))
    if it.repeat_of is not None:
        head.add_row("repeat of", f"item {it.repeat_of} (the same chat and answer, decided there)")
    if it.note:
        head.add_row("note", _plain(it.note))
    console.print(Panel(head, title=f"review item {it.id}"))
    chat = Table(title="chat", show_header=True)
    chat.add_column("role")
    chat.add_column("content")
    for m in it.messages:
        chat.add_row(_plain(m.get("role")), _plain(m.get("content")))
    chat.add_row("[bold]answer[/]", _plain(it.answer))
    if it.final_answer is not None and it.final_answer != it.answer:
        chat.add_row("[bold cyan]final answer[/]", _plain(it.final_answer))
    console.print(chat)
    if it.result is not None:
        scores = Table(title="scores (higher = more uncertain)")
        for name in it.result.scores():
            scores.add_column(name, justify="right")
        scores.add_row(*(f"{v:.4g}" for v in it.result.scores().values()))
        console.print(scores)
        if it.result.spans is not None:
            from ..spans import SpanDecision
            from ._spans import span_table

            raw = (it.metadata or {}).get("span_decisions")
            decisions = [SpanDecision.model_validate(d) for d in raw] if isinstance(raw, list) else None
            console.print(span_table(it.result.spans, decisions))
    if it.metadata:
        console.print(_plain(f"metadata: {it.metadata}"))
    audit = Table(title="audit trail")
    for col in ("at", "event", "actor", "details"):
        audit.add_column(col)
    for a in it.audit:
        details = ", ".join(f"{k}={v}" for k, v in a.details.items())
        audit.add_row(_plain(a.at), _plain(a.event), _plain(a.actor or "-"), _plain(details))
    console.print(audit)
    return 0


def _decide(args: argparse.Namespace) -> int:
    import getpass

    reviewer = args.reviewer
    if reviewer is None:
        try:
            reviewer = getpass.getuser()
        except Exception:  # no login name (containers): leave it empty
            reviewer = None
    with _queue(args) as q:
        if args.decision == "approve":
            it = q.approve(args.id, reviewer=reviewer, note=args.note)
        elif args.decision == "reject":
            it = q.reject(args.id, reviewer=reviewer, note=args.note)
        elif args.decision == "cannot_tell":
            it = q.cannot_tell(args.id, reviewer=reviewer, note=args.note)
        elif args.decision == "reopen":
            it = q.reopen(args.id, reviewer=reviewer, note=args.note)
            _console().print(
                f"item {it.id}: [bold]re-opened[/] (pending) by ", _plain(reviewer or "-"), sep=""
            )
            return 0
        else:
            it = q.edit(args.id, answer=args.answer, reviewer=reviewer, note=args.note)
    _console().print(f"item {it.id}: [bold]{it.status.value}[/] by ", _plain(it.reviewer or "-"), sep="")
    return 0


def _export(args: argparse.Namespace) -> int:
    q = _queue(args)
    if q is None:  # an empty queue exports nothing
        if args.output:
            Path(args.output).write_text("")
            print(f"wrote {args.output} (the queue is empty)", file=sys.stderr)
        return 0
    with q:
        if args.labels:
            return _export_labels(q, args)
        if args.output:
            with open(args.output, "w", newline="") as fh:
                q.export(args.fmt, status=args.status, file=fh)
            print(f"wrote {args.output}", file=sys.stderr)
        else:
            sys.stdout.write(q.export(args.fmt, status=args.status))
    return 0


def _export_labels(q: Any, args: argparse.Namespace) -> int:
    import json

    from ..errors import ConfigurationError
    from ..review.labels import label_counts, labelled

    if args.fmt != "jsonl":
        raise ConfigurationError("export --labels writes JSONL only (drop --format csv)")
    text = "".join(json.dumps(lab.to_row()) + "\n" for lab in labelled(q))
    counts = label_counts(q)
    if args.output:
        Path(args.output).write_text(text)
        print(
            f"wrote {args.output}: {counts.labelled} labels ({counts.audit} audit{repeats_note(counts.repeats)}), "
            f"{counts.cannot_tell} cannot tell and {counts.unscored} unscored left out",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
    return 0


def review_ui_app(args: argparse.Namespace) -> Any:
    """The review pages the arguments ask for, checked (a non-local bind needs a token); no server started."""
    import getpass

    from ..errors import ConfigurationError
    from ..review.queue import open_review_queue
    from ..serve.review_ui import ReviewerTokens, create_review_app
    from ..serve.settings import is_local_host
    from .serve import read_token

    shared = read_token(args.token_file)
    if args.reviewers_file is not None:
        tokens = ReviewerTokens.from_file(args.reviewers_file, shared=shared)
    else:
        tokens = ReviewerTokens(shared=shared)
    if not is_local_host(args.host) and not tokens.required:
        raise ConfigurationError(
            f"refusing to bind {args.host!r} without a token: anyone who can reach it could decide reviews. "
            "Set $SEMGRAD_GUARD_TOKEN, pass --token-file or --reviewers-file, or bind 127.0.0.1"
        )
    reviewer = args.reviewer
    if reviewer is None and not tokens.required:
        try:
            reviewer = getpass.getuser()
        except Exception:  # no login name (containers)
            reviewer = None

    queue = open_review_queue(_spec(args))  # creates an empty queue: the guard fills it later
    guidelines = None
    if args.guidelines is not None:
        try:
            guidelines = args.guidelines.read_text()
        except OSError as e:
            raise ConfigurationError(f"cannot read --guidelines {args.guidelines}: {e}") from e
    return create_review_app(queue, tokens=tokens, default_reviewer=reviewer, guidelines=guidelines)


def _ui(args: argparse.Namespace) -> int:
    app = review_ui_app(args)
    from ..review.queue import review_db_name
    from ..serve.server import run

    how = "login required" if app.state.review_login else "open: loopback only"
    print(
        f"semgrad-guard: review pages for {review_db_name(_spec(args))} on http://{args.host}:{args.port}/ ({how})",
        file=sys.stderr,
        flush=True,
    )
    run(app, args.host, args.port)
    return 0
