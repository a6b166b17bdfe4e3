"""Human review queue: answers the policy sends to a person, stored durably in SQLite (no server).

Every change is one transaction (WAL mode, ``synchronous=FULL``): an ``enqueue`` that returned is
on disk, and a process killed mid-write leaves no half-written item. The database file is created
readable and writable by its owner only (it holds user prompts). A file that is not a
semgrad-guard review database (corrupted, or some other SQLite or non-SQLite file) raises
:class:`ReviewQueueCorruptError` and is never modified.

Decisions are final: each one is a compare-and-set on the pending state (``UPDATE ... WHERE
status = 'pending'``), so of two reviewers deciding the same item at once exactly one wins and the
other gets :class:`~semgrad_guard.errors.AlreadyDecidedError` naming who decided what and when.
Deciding again takes an explicit, audited :meth:`SQLiteReviewQueue.reopen`.

Decisions reach code three ways: poll with :meth:`SQLiteReviewQueue.get`, block with
:meth:`~SQLiteReviewQueue.wait` / ``await`` :meth:`~SQLiteReviewQueue.await_decision`, or register
a callback with :meth:`~SQLiteReviewQueue.on_resolved` (called for decisions made in this process
at once, and for decisions made elsewhere, e.g. the CLI, by a background poller).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import csv
import io
import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from ..errors import (
    AlreadyDecidedError,
    ConfigurationError,
    ReviewItemNotFoundError,
    ReviewQueueCorruptError,
    ReviewQueueError,
)
from ..messages import Messages, normalize_messages
from ..results import ScoreResult

logger = logging.getLogger(__name__)

APPLICATION_ID = 0x53474752  # "SGGR": marks the file as a semgrad-guard review database
SCHEMA_VERSION = 1
ENV_DB = "SEMGRAD_GUARD_REVIEW_DB"
_SQLITE_MAGIC = b"SQLite format 3\x00"


class ReviewStatus(str, Enum):
    """Where a review item stands."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EDITED = "edited"

    def __str__(self) -> str:
        return self.value


class AuditEntry(BaseModel):
    """One change to a review item."""

    model_config = ConfigDict(frozen=True)

    at: str
    """When (ISO 8601, UTC)."""
    event: str
    """created, approved, rejected, edited or reopened."""
    actor: str | None = None
    """Who (the reviewer; None for the pipeline)."""
    details: dict[str, Any] = Field(default_factory=dict)
    """What changed (status, answer, note)."""


class ReviewItem(BaseModel):
    """An answer waiting for (or having had) human review."""

    model_config = ConfigDict(frozen=True)

    id: int
    """Item id."""
    created_at: str
    """When it was enqueued (ISO 8601, UTC)."""
    messages: list[dict[str, Any]]
    """The chat the answer replies to."""
    answer: str
    """The answer as the model gave it."""
    result: ScoreResult | None = None
    """All scores (None when scoring failed)."""
    confidence: float | None = None
    """Calibrated confidence, if any."""
    rule: str | None = None
    """Policy rule that sent it to review."""
    status: ReviewStatus = ReviewStatus.PENDING
    """pending, approved, rejected or edited."""
    reviewer: str | None = None
    """Who decided."""
    decided_at: str | None = None
    """When the decision was made."""
    final_answer: str | None = None
    """The answer to use: the original (approved), the reviewer's (edited), None (rejected or pending)."""
    note: str | None = None
    """Reviewer's note."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Caller's metadata (e.g. run id, attempts)."""
    audit: list[AuditEntry] = Field(default_factory=list)
    """Every change, oldest first."""

    @property
    def resolved(self) -> bool:
        """True once a reviewer decided."""
        return self.status is not ReviewStatus.PENDING

    @property
    def question(self) -> str:
        """The last user message (for display)."""
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return str(m.get("content", ""))
        return ""


ResolvedCallback = Callable[[ReviewItem], Any]


@runtime_checkable
class ReviewQueue(Protocol):
    """Where the guard sends answers for human review. :class:`SQLiteReviewQueue` is the default."""

    def enqueue(
        self,
        messages: Messages,
        answer: str,
        *,
        result: ScoreResult | None = None,
        confidence: float | None = None,
        rule: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> int: ...

    def get(self, item_id: int) -> ReviewItem: ...

    def list(
        self, status: ReviewStatus | str | None = None, *, limit: int | None = None
    ) -> builtins.list[ReviewItem]: ...

    def approve(
        self, item_id: int, *, reviewer: str | None = None, note: str | None = None
    ) -> ReviewItem: ...

    def reject(self, item_id: int, *, reviewer: str | None = None, note: str | None = None) -> ReviewItem: ...

    def edit(
        self, item_id: int, *, answer: str, reviewer: str | None = None, note: str | None = None
    ) -> ReviewItem: ...

    def wait(
        self, item_id: int, *, timeout: float | None = None, poll_interval: float = 1.0
    ) -> ReviewItem: ...

    async def await_decision(
        self, item_id: int, *, timeout: float | None = None, poll_interval: float = 1.0
    ) -> ReviewItem: ...

    def on_resolved(self, callback: ResolvedCallback) -> None: ...


def default_review_db_path() -> Path:
    """``$SEMGRAD_GUARD_REVIEW_DB``, else ``review.db`` in the platform's user data dir for semgrad-guard."""
    env = os.environ.get(ENV_DB)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("semgrad-guard")) / "review.db"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


_SCHEMA = """
CREATE TABLE items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    messages TEXT NOT NULL,
    answer TEXT NOT NULL,
    result TEXT,
    confidence REAL,
    rule TEXT,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'rejected', 'edited')),
    reviewer TEXT,
    decided_at TEXT,
    final_answer TEXT,
    note TEXT,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX items_status ON items(status);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id INTEGER NOT NULL REFERENCES items(id),
    at TEXT NOT NULL,
    event TEXT NOT NULL,
    actor TEXT,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_item ON audit(item_id);
"""


def apply_review_decision(
    queue: ReviewQueue,
    item_id: int,
    action: str,
    *,
    answer: str | None = None,
    reviewer: str | None = None,
    note: str | None = None,
) -> ReviewItem:
    """Record a person's decision on a review item: the one way every adapter does it.

    ``action`` is ``"approve"``, ``"reject"`` or ``"edit"`` (which needs ``answer``, the corrected
    text). Decisions are final: a second decision raises :class:`AlreadyDecidedError`.

    Raises:
        ConfigurationError: unknown action, or an edit without the corrected answer.
    """
    if action == "approve":
        return queue.approve(item_id, reviewer=reviewer, note=note)
    if action == "reject":
        return queue.reject(item_id, reviewer=reviewer, note=note)
    if action == "edit":
        if not isinstance(answer, str) or not answer:
            raise ConfigurationError("an 'edit' review decision needs the corrected answer text")
        return queue.edit(item_id, answer=answer, reviewer=reviewer, note=note)
    raise ConfigurationError(f"a review decision is 'approve', 'reject' or 'edit', got {action!r}")


class SQLiteReviewQueue:
    """The review queue in one SQLite file: WAL, one transaction per change, owner-only permissions.

    Safe to share between threads and processes (SQLite locking; writers wait up to ``timeout`` s).

    Example:
        >>> import tempfile, os
        >>> q = SQLiteReviewQueue(os.path.join(tempfile.mkdtemp(), "review.db"))
        >>> item_id = q.enqueue("Capital of Australia?", "Sydney", rule="unsure")
        >>> q.edit(item_id, answer="Canberra", reviewer="ana").final_answer
        'Canberra'
        >>> q.get(item_id).status
        <ReviewStatus.EDITED: 'edited'>
        >>> q.close()
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0, create: bool = True) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.RLock()
        self._callbacks: builtins.list[ResolvedCallback] = []
        self._last_seq: int | None = None
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self._watch_interval = 1.0
        self._closed = False
        self._conn = self._open(timeout, create)

    # ------------------------------------------------------------------ opening
    def _open(self, timeout: float, create: bool) -> sqlite3.Connection:
        if self.path.is_dir():
            raise ReviewQueueError(
                f"review database {self.path} is a directory; give a file path, e.g. {self.path / 'review.db'}"
            )
        existed = self.path.exists() and self.path.stat().st_size > 0
        if existed:
            self._check_header()
        elif not create:
            raise ReviewQueueError(f"review database {self.path} does not exist")
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                if not self.path.exists():
                    # Create the file ourselves so it is owner-only from the first byte (SQLite would use the umask).
                    with contextlib.suppress(FileExistsError):
                        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except OSError as e:
                raise ReviewQueueError(
                    f"cannot create review database {self.path}: {e.strerror or e}; give a writable file path"
                ) from e
        try:
            conn = sqlite3.connect(
                str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise ReviewQueueError(f"cannot open review database {self.path}: {e}") from e
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if app_id == 0 and not tables:
                self._initialise(conn)
            elif app_id != APPLICATION_ID:
                raise ReviewQueueCorruptError(
                    f"{self.path} is an SQLite database but not a semgrad-guard review queue "
                    f"(application_id {app_id:#x}, tables {sorted(tables)}); it was left untouched: "
                    "use another --db path"
                )
            else:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise ReviewQueueCorruptError(
                        f"{self.path} has review schema version {version}; this build knows <= {SCHEMA_VERSION}"
                    )
                if not {"items", "audit"} <= tables:
                    raise ReviewQueueCorruptError(
                        f"{self.path} is missing review tables; it was left untouched"
                    )
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except ReviewQueueError:
            conn.close()
            raise
        except sqlite3.DatabaseError as e:
            conn.close()
            raise ReviewQueueCorruptError(
                f"{self.path} is corrupted or not a review database ({e}); it was left untouched"
            ) from e
        self._harden_permissions()
        return conn

    def _check_header(self) -> None:
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
        except OSError as e:
            raise ReviewQueueError(f"cannot read review database {self.path}: {e.strerror or e}") from e
        if head != _SQLITE_MAGIC:
            raise ReviewQueueCorruptError(
                f"{self.path} is not an SQLite database (bad header); it was left untouched: use another --db path"
            )

    def _initialise(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have initialised it between our check and the lock.
            if conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID:
                conn.execute("COMMIT")
                return
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _harden_permissions(self) -> None:
        for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            with contextlib.suppress(FileNotFoundError, PermissionError):
                if stat.S_IMODE(p.stat().st_mode) & 0o077:
                    os.chmod(p, 0o600)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise ReviewQueueError("review queue is closed")
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as e:
                raise ReviewQueueError(f"review database {self.path}: {e}") from e
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------ writing
    def enqueue(
        self,
        messages: Messages,
        answer: str,
        *,
        result: ScoreResult | None = None,
        confidence: float | None = None,
        rule: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> int:
        """Add an answer for review; returns its id once it is durably stored.

        Raises:
            ConfigurationError: ``answer`` is not a string, or ``metadata`` is not JSON-serialisable.
            ScoringError: ``messages`` is malformed (see :func:`~semgrad_guard.messages.normalize_messages`).
        """
        if not isinstance(answer, str):
            raise ConfigurationError(
                f"enqueue(answer=...) must be a string, got {type(answer).__name__}; "
                "queue the answer text (str(...) it first if it is an object)"
            )
        if confidence is not None and not isinstance(confidence, (int, float)):
            raise ConfigurationError(
                f"enqueue(confidence=...) must be a number or None, got {type(confidence).__name__}"
            )
        chat = normalize_messages(messages)
        try:
            meta_json = json.dumps(dict(metadata or {}), default=str)
        except (TypeError, ValueError) as e:
            raise ConfigurationError(f"review metadata must be JSON-serialisable: {e}") from e
        now = _now()
        with self._transaction() as conn:
            cur = conn.execute(
                "INSERT INTO items (created_at, messages, answer, result, confidence, rule, metadata) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    now,
                    json.dumps(chat),
                    answer,
                    result.model_dump_json() if result is not None else None,
                    confidence,
                    rule,
                    meta_json,
                ),
            )
            item_id = int(cur.lastrowid or 0)
            conn.execute(
                "INSERT INTO audit (item_id, at, event, actor, details) VALUES (?, ?, 'created', NULL, ?)",
                (item_id, now, json.dumps({"rule": rule})),
            )
        return item_id

    def approve(self, item_id: int, *, reviewer: str | None = None, note: str | None = None) -> ReviewItem:
        """Approve the answer as it is.

        Raises:
            AlreadyDecidedError: The item was decided already (by anyone, in any process).
            ReviewItemNotFoundError: No such item.
        """
        return self._decide(item_id, ReviewStatus.APPROVED, reviewer, note, None)

    def reject(self, item_id: int, *, reviewer: str | None = None, note: str | None = None) -> ReviewItem:
        """Reject the answer (the pipeline abstains)."""
        return self._decide(item_id, ReviewStatus.REJECTED, reviewer, note, None)

    def edit(
        self, item_id: int, *, answer: str, reviewer: str | None = None, note: str | None = None
    ) -> ReviewItem:
        """Replace the answer with the reviewer's."""
        if not isinstance(answer, str):
            raise ConfigurationError("edit(answer=...) must be a string")
        return self._decide(item_id, ReviewStatus.EDITED, reviewer, note, answer)

    def reopen(self, item_id: int, *, reviewer: str | None = None, note: str | None = None) -> ReviewItem:
        """Put a decided item back to pending so it can be decided again (an explicit, audited action).

        The previous decision stays in the audit trail (event ``reopened``, with what was undone).

        Raises:
            ReviewItemNotFoundError: No such item.
            ReviewQueueError: The item is still pending (nothing to re-open).
        """
        now = _now()
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT status, reviewer, decided_at, final_answer FROM items WHERE id = ?", (int(item_id),)
            ).fetchone()
            if row is None:
                raise ReviewItemNotFoundError(f"no review item with id {item_id} in {self.path}")
            previous, prev_reviewer, prev_at, prev_final = row
            cur = conn.execute(
                "UPDATE items SET status = 'pending', reviewer = NULL, decided_at = NULL, final_answer = NULL, "
                "note = NULL WHERE id = ? AND status != 'pending'",
                (int(item_id),),
            )
            if cur.rowcount != 1:
                raise ReviewQueueError(f"review item {item_id} is pending; there is no decision to re-open")
            details: dict[str, Any] = {
                "from": previous,
                "to": ReviewStatus.PENDING.value,
                "undone": {"status": previous, "reviewer": prev_reviewer, "decided_at": prev_at},
            }
            if prev_final is not None:
                details["undone"]["final_answer"] = prev_final
            if note:
                details["note"] = note
            conn.execute(
                "INSERT INTO audit (item_id, at, event, actor, details) VALUES (?, ?, 'reopened', ?, ?)",
                (int(item_id), now, reviewer, json.dumps(details)),
            )
        return self.get(item_id)

    def _decide(
        self,
        item_id: int,
        status: ReviewStatus,
        reviewer: str | None,
        note: str | None,
        new_answer: str | None,
    ) -> ReviewItem:
        now = _now()
        with self._transaction() as conn:
            row = conn.execute("SELECT answer FROM items WHERE id = ?", (int(item_id),)).fetchone()
            if row is None:
                raise ReviewItemNotFoundError(f"no review item with id {item_id} in {self.path}")
            final = row[0] if status is ReviewStatus.APPROVED else new_answer
            # Compare-and-set on the pending state: only one decision can ever move an item out of it.
            cur = conn.execute(
                "UPDATE items SET status = ?, reviewer = ?, decided_at = ?, final_answer = ?, note = ? "
                "WHERE id = ? AND status = 'pending'",
                (status.value, reviewer, now, final, note, int(item_id)),
            )
            if cur.rowcount != 1:
                done = conn.execute(
                    "SELECT status, reviewer, decided_at FROM items WHERE id = ?", (int(item_id),)
                ).fetchone()
                raise AlreadyDecidedError(int(item_id), done[0], done[1], done[2], attempted=_VERBS[status])
            details: dict[str, Any] = {"from": ReviewStatus.PENDING.value, "to": status.value}
            if new_answer is not None:
                details["answer"] = new_answer
            if note:
                details["note"] = note
            conn.execute(
                "INSERT INTO audit (item_id, at, event, actor, details) VALUES (?, ?, ?, ?, ?)",
                (int(item_id), now, status.value, reviewer, json.dumps(details)),
            )
        self._dispatch()
        return self.get(item_id)

    # ------------------------------------------------------------------ reading
    def get(self, item_id: int) -> ReviewItem:
        """One item with its audit trail."""
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM items WHERE id = ?", (int(item_id),)).fetchone()
            if row is None:
                raise ReviewItemNotFoundError(f"no review item with id {item_id} in {self.path}")
            audit = self._conn.execute(
                "SELECT at, event, actor, details FROM audit WHERE item_id = ? ORDER BY seq", (int(item_id),)
            ).fetchall()
        return _item(row, audit)

    def list(
        self, status: ReviewStatus | str | None = None, *, limit: int | None = None
    ) -> builtins.list[ReviewItem]:
        """Items, newest first, optionally only those with ``status``."""
        sql = f"SELECT {_COLUMNS} FROM items"
        args: builtins.list[Any] = []
        if status is not None:
            try:
                st = ReviewStatus(status)
            except ValueError as e:
                raise ConfigurationError(
                    f"status must be one of {[s.value for s in ReviewStatus]}, got {status!r}"
                ) from e
            sql += " WHERE status = ?"
            args.append(st.value)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
            audits: dict[int, builtins.list[Any]] = {}
            if rows:
                ids = [r[0] for r in rows]
                marks = ",".join("?" * len(ids))
                for a in self._conn.execute(
                    f"SELECT item_id, at, event, actor, details FROM audit WHERE item_id IN ({marks}) ORDER BY seq",
                    ids,
                ):
                    audits.setdefault(a[0], []).append(a[1:])
        return [_item(r, audits.get(r[0], [])) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of items by status."""
        with self._lock:
            rows = self._conn.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall()
        out = {s.value: 0 for s in ReviewStatus}
        out.update({k: int(v) for k, v in rows})
        return out

    def __len__(self) -> int:
        return sum(self.counts().values())

    # ------------------------------------------------------------------ waiting and callbacks
    def wait(self, item_id: int, *, timeout: float | None = None, poll_interval: float = 1.0) -> ReviewItem:
        """Block until a reviewer decides (in any process); returns the resolved item.

        Raises:
            ReviewTimeoutError: ``timeout`` seconds passed and the item is still pending.
            ReviewItemNotFoundError: No such item.
        """
        from ..errors import ReviewTimeoutError

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            item = self.get(item_id)
            if item.resolved:
                return item
            if deadline is not None and time.monotonic() >= deadline:
                raise ReviewTimeoutError(f"review item {item_id} is still pending after {timeout} s")
            pause = (
                poll_interval
                if deadline is None
                else min(poll_interval, max(0.0, deadline - time.monotonic()))
            )
            time.sleep(pause)

    async def await_decision(
        self, item_id: int, *, timeout: float | None = None, poll_interval: float = 1.0
    ) -> ReviewItem:
        """Async :meth:`wait`: polls without blocking the event loop."""
        from ..errors import ReviewTimeoutError

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            item = await asyncio.to_thread(self.get, item_id)
            if item.resolved:
                return item
            if deadline is not None and loop.time() >= deadline:
                raise ReviewTimeoutError(f"review item {item_id} is still pending after {timeout} s")
            pause = (
                poll_interval if deadline is None else min(poll_interval, max(0.0, deadline - loop.time()))
            )
            await asyncio.sleep(pause)

    def on_resolved(self, callback: ResolvedCallback, *, poll_interval: float = 1.0) -> None:
        """Call ``callback(item)`` whenever an item is approved, rejected or edited.

        Decisions made through this object fire at once; decisions made elsewhere (another
        process, the CLI) are picked up by a background thread every ``poll_interval`` seconds.
        Only decisions made after the first registration are reported. Exceptions in callbacks
        are logged, not raised.
        """
        with self._lock:
            if self._last_seq is None:
                row = self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM audit").fetchone()
                self._last_seq = int(row[0])
            self._callbacks.append(callback)
            self._watch_interval = min(self._watch_interval, poll_interval)
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, name="semgrad-review-watch", daemon=True)
                self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(self._watch_interval):
            try:
                self._dispatch()
            except ReviewQueueError:
                return
            except Exception:  # keep watching: a transient lock or a bad callback must not kill it
                logger.exception("review queue watcher")

    def _dispatch(self) -> None:
        if not self._callbacks:
            return
        with self._lock:
            if self._closed or self._last_seq is None:
                return
            rows = self._conn.execute(
                "SELECT seq, item_id FROM audit WHERE seq > ? AND event NOT IN ('created', 'reopened') ORDER BY seq",
                (self._last_seq,),
            ).fetchall()
            if not rows:
                return
            self._last_seq = int(rows[-1][0])
            callbacks = builtins.list(self._callbacks)
        for _, item_id in rows:
            item = self.get(item_id)
            for cb in callbacks:
                try:
                    cb(item)
                except Exception:
                    logger.exception("review on_resolved callback failed for item %s", item_id)

    # ------------------------------------------------------------------ export and lifecycle
    def export(
        self,
        fmt: Literal["jsonl", "csv"] = "jsonl",
        *,
        status: ReviewStatus | str | None = None,
        file: io.TextIOBase | Any | None = None,
    ) -> str:
        """Items (oldest first) as JSONL (full items, audit included) or CSV (one row per item, scores as columns).

        Returns the text; also writes it to ``file`` when given.
        """
        if fmt not in ("jsonl", "csv"):
            raise ConfigurationError(f"export format must be 'jsonl' or 'csv', got {fmt!r}")
        items = builtins.list(reversed(self.list(status)))
        if fmt == "jsonl":
            text = "".join(item.model_dump_json() + "\n" for item in items)
        else:
            buf = io.StringIO()
            from ..results import SCORE_FIELDS

            cols = [
                "id",
                "created_at",
                "status",
                "rule",
                "confidence",
                *SCORE_FIELDS,
                "question",
                "answer",
                "final_answer",
                "reviewer",
                "decided_at",
                "note",
                "messages",
            ]
            writer = csv.writer(buf)
            writer.writerow(cols)
            for it in items:
                scores = it.result.scores() if it.result is not None else {}
                writer.writerow(
                    _csv_cell(v)
                    for v in [
                        it.id,
                        it.created_at,
                        it.status.value,
                        it.rule or "",
                        "" if it.confidence is None else it.confidence,
                        *[scores.get(f, "") for f in SCORE_FIELDS],
                        it.question,
                        it.answer,
                        it.final_answer or "",
                        it.reviewer or "",
                        it.decided_at or "",
                        it.note or "",
                        json.dumps(it.messages),
                    ]
                )
            text = buf.getvalue()
        if file is not None:
            file.write(text)
        return text

    def close(self) -> None:
        """Stop the callback watcher and close the database."""
        self._stop.set()
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=5)
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> SQLiteReviewQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteReviewQueue({str(self.path)!r})"


_VERBS = {ReviewStatus.APPROVED: "approve", ReviewStatus.REJECTED: "reject", ReviewStatus.EDITED: "edit"}

_COLUMNS = "id, created_at, messages, answer, result, confidence, rule, status, reviewer, decided_at, final_answer, note, metadata"


def _item(row: Sequence[Any], audit: Sequence[Sequence[Any]]) -> ReviewItem:
    (
        item_id,
        created,
        messages,
        answer,
        result,
        confidence,
        rule,
        status,
        reviewer,
        decided,
        final,
        note,
        meta,
    ) = row
    try:
        return ReviewItem(
            id=item_id,
            created_at=created,
            messages=json.loads(messages),
            answer=answer,
            result=ScoreResult.model_validate_json(result) if result else None,
            confidence=confidence,
            rule=rule,
            status=ReviewStatus(status),
            reviewer=reviewer,
            decided_at=decided,
            final_answer=final,
            note=note,
            metadata=json.loads(meta or "{}"),
            audit=[
                AuditEntry(at=a[0], event=a[1], actor=a[2], details=json.loads(a[3] or "{}")) for a in audit
            ],
        )
    except (ValueError, TypeError) as e:
        raise ReviewQueueCorruptError(f"review item {item_id} is malformed: {e}") from e


_FORMULA_LEAD = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run: text starting like a formula gets a leading ``'``.

    OWASP's CSV-injection rule (``=HYPERLINK(...)``, ``=1+1``, ``@SUM``, ``+``, ``-``, tab, CR from
    model or user text). Numbers are left as they are (a negative score stays a number).
    """
    if isinstance(value, str) and value.startswith(_FORMULA_LEAD):
        return "'" + value
    return value
