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

import abc
import asyncio
import builtins
import contextlib
import csv
import hashlib
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
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from ..errors import (
    AlreadyDecidedError,
    ConfigurationError,
    ReviewItemNotFoundError,
    ReviewQueueCorruptError,
    ReviewQueueError,
    ReviewQueueMissingError,
)
from ..messages import Messages, normalize_messages
from ..results import ScoreResult

logger = logging.getLogger(__name__)

APPLICATION_ID = 0x53474752  # "SGGR": marks the file as a semgrad-guard review database
SCHEMA_VERSION = 3
"""2 added ``cannot_tell``, ``kind``, ``inclusion_probability`` and the judging versions; 3 added
``answer_key`` and ``repeat_of`` (a repeated answer is decided once). Older files are migrated in
place on open."""
ENV_DB = "SEMGRAD_GUARD_REVIEW_DB"
_SQLITE_MAGIC = b"SQLite format 3\x00"


class ReviewStatus(str, Enum):
    """Where a review item stands."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EDITED = "edited"
    CANNOT_TELL = "cannot_tell"
    """Decided: the reviewer cannot tell whether the answer is right (no answer is released; not a label)."""

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
    """pending, approved, rejected, edited or cannot_tell."""
    reviewer: str | None = None
    """Who decided."""
    decided_at: str | None = None
    """When the decision was made."""
    final_answer: str | None = None
    """The answer to use: the original (approved), the reviewer's (edited), None (rejected, cannot_tell, pending)."""
    note: str | None = None
    """Reviewer's note."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Caller's metadata (e.g. run id, attempts)."""
    audit: list[AuditEntry] = Field(default_factory=list)
    """Every change, oldest first."""
    kind: ItemKind = "review"
    """'review' (the policy sent it) or 'audit' (a random copy: the user already got the policy's answer)."""
    inclusion_probability: float = 1.0
    """Probability that an answer like this one was queued (1 for review items, the audit rate for
    audit items): labels are weighted by its inverse, so they stand for every answer served."""
    calibrator_version: str | None = None
    """:attr:`Calibrator.fingerprint <semgrad_guard.Calibrator.fingerprint>` of the calibrator that judged it."""
    policy_version: str | None = None
    """:attr:`GuardPolicy.fingerprint <semgrad_guard.GuardPolicy.fingerprint>` of the policy that judged it."""
    repeat_of: int | None = None
    """The item whose decision this one took: the same chat and the same answer were decided there
    (greedy decoding repeats answers to repeated questions; a person judges each one once)."""

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


ItemKind = Literal["review", "audit"]
"""'review': the policy sent it; 'audit': a random copy of an answer the user got as the policy decided."""

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
        kind: ItemKind = "review",
        inclusion_probability: float = 1.0,
        calibrator_version: str | None = None,
        policy_version: str | None = None,
    ) -> int: ...

    def get(self, item_id: int) -> ReviewItem: ...

    def list(
        self, status: ReviewStatus | str | None = None, *, limit: int | None = None
    ) -> builtins.list[ReviewItem]: ...

    def approve(
        self, item_id: int, *, reviewer: str | None = None, note: str | None = None
    ) -> ReviewItem: ...

    def reject(self, item_id: int, *, reviewer: str | None = None, note: str | None = None) -> ReviewItem: ...

    def cannot_tell(
        self, item_id: int, *, reviewer: str | None = None, note: str | None = None
    ) -> ReviewItem: ...

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


def default_review_db() -> str:
    """The queue used when none is named: ``$SEMGRAD_GUARD_REVIEW_DB`` as given (a path or a
    ``postgresql://`` URL, never rewritten), else ``review.db`` in the platform's user data dir."""
    env = os.environ.get(ENV_DB)
    if env:
        return env
    from platformdirs import user_data_dir

    return str(Path(user_data_dir("semgrad-guard")) / "review.db")


def answer_key(messages_json: str, answer: str) -> str:
    """What makes two items repeats of each other: the same chat (as stored) and the same answer.

    A JSON array never holds a raw newline, so the separator cannot be forged; PostgreSQL's
    migration computes the same key in SQL.
    """
    return hashlib.sha256(f"{messages_json}\n{answer}".encode()).hexdigest()


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
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'approved', 'rejected', 'edited', 'cannot_tell')),
    reviewer TEXT,
    decided_at TEXT,
    final_answer TEXT,
    note TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    kind TEXT NOT NULL DEFAULT 'review' CHECK (kind IN ('review', 'audit')),
    inclusion_probability REAL NOT NULL DEFAULT 1.0
        CHECK (inclusion_probability > 0 AND inclusion_probability <= 1),
    calibrator_version TEXT,
    policy_version TEXT,
    answer_key TEXT,
    repeat_of INTEGER
);
CREATE INDEX items_status ON items(status);
CREATE INDEX items_answer_key ON items(answer_key);
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

    ``action`` is ``"approve"``, ``"reject"``, ``"edit"`` (which needs ``answer``, the corrected
    text) or ``"cannot_tell"`` (the reviewer cannot judge it: final, not a label). Decisions are
    final: a second decision raises :class:`AlreadyDecidedError`.

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
    if action == "cannot_tell":
        return queue.cannot_tell(item_id, reviewer=reviewer, note=note)
    raise ConfigurationError(
        f"a review decision is 'approve', 'reject', 'edit' or 'cannot_tell', got {action!r}"
    )


def parse_status(status: ReviewStatus | str) -> ReviewStatus:
    """``status`` as a :class:`ReviewStatus`, or a :class:`ConfigurationError` listing the valid ones."""
    try:
        return ReviewStatus(status)
    except ValueError as e:
        raise ConfigurationError(
            f"status must be one of {[s.value for s in ReviewStatus]}, got {status!r}"
        ) from e


class EnqueueRow(BaseModel):
    """An item as validated and serialised for storage (what every backend inserts)."""

    model_config = ConfigDict(frozen=True)

    created_at: str
    messages: str
    answer: str
    result: str | None
    confidence: float | None
    rule: str | None
    metadata: str
    kind: ItemKind
    inclusion_probability: float
    calibrator_version: str | None
    policy_version: str | None

    @property
    def answer_key(self) -> str:
        """See :func:`answer_key`."""
        return answer_key(self.messages, self.answer)

    @property
    def created_details(self) -> str:
        """The ``created`` audit entry's details."""
        created: dict[str, Any] = {"rule": self.rule}
        if self.kind != "review":
            created.update(kind=self.kind, inclusion_probability=self.inclusion_probability)
        return json.dumps(created)

    def values(self) -> tuple[Any, ...]:
        """The row in the order of ``_INSERT_COLUMNS``."""
        return (
            self.created_at,
            self.messages,
            self.answer,
            self.result,
            self.confidence,
            self.rule,
            self.metadata,
            self.kind,
            self.inclusion_probability,
            self.calibrator_version,
            self.policy_version,
            self.answer_key,
        )


_INSERT_COLUMNS = (
    "created_at, messages, answer, result, confidence, rule, metadata, kind, inclusion_probability, "
    "calibrator_version, policy_version, answer_key"
)


def enqueue_row(
    messages: Messages,
    answer: str,
    *,
    result: ScoreResult | None,
    confidence: float | None,
    rule: str | None,
    metadata: Mapping[str, Any] | None,
    kind: ItemKind = "review",
    inclusion_probability: float = 1.0,
    calibrator_version: str | None = None,
    policy_version: str | None = None,
) -> EnqueueRow:
    """Validate an enqueue's arguments and serialise them (shared by every backend)."""
    if not isinstance(answer, str):
        raise ConfigurationError(
            f"enqueue(answer=...) must be a string, got {type(answer).__name__}; "
            "queue the answer text (str(...) it first if it is an object)"
        )
    if confidence is not None and not isinstance(confidence, (int, float)):
        raise ConfigurationError(
            f"enqueue(confidence=...) must be a number or None, got {type(confidence).__name__}"
        )
    if kind not in ("review", "audit"):
        raise ConfigurationError(f"enqueue(kind=...) is 'review' or 'audit', got {kind!r}")
    p = inclusion_probability
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
        raise ConfigurationError(
            f"enqueue(inclusion_probability=...) must be a probability in (0, 1], got {p!r} "
            "(the chance this answer was sampled into the queue: 1 unless it was sampled)"
        )
    chat = normalize_messages(messages)
    try:
        meta_json = json.dumps(dict(metadata or {}), default=str)
    except (TypeError, ValueError) as e:
        raise ConfigurationError(f"review metadata must be JSON-serialisable: {e}") from e
    return EnqueueRow(
        created_at=_now(),
        messages=json.dumps(chat),
        answer=answer,
        result=result.model_dump_json() if result is not None else None,
        confidence=None if confidence is None else float(confidence),
        rule=rule,
        metadata=meta_json,
        kind=kind,
        inclusion_probability=float(p),
        calibrator_version=calibrator_version,
        policy_version=policy_version,
    )


def decision_details(
    status: ReviewStatus, new_answer: str | None, note: str | None, repeat_of: int | None = None
) -> str:
    """The audit details of a decision (``repeat_of``: taken from that item's decision)."""
    details: dict[str, Any] = {"from": ReviewStatus.PENDING.value, "to": status.value}
    if new_answer is not None:
        details["answer"] = new_answer
    if note:
        details["note"] = note
    if repeat_of is not None:
        details["repeat_of"] = repeat_of
    return json.dumps(details)


def reopen_details(
    previous: str, reviewer: str | None, decided_at: str | None, final_answer: str | None, note: str | None
) -> str:
    """The audit details of a re-open (what was undone)."""
    details: dict[str, Any] = {
        "from": previous,
        "to": ReviewStatus.PENDING.value,
        "undone": {"status": previous, "reviewer": reviewer, "decided_at": decided_at},
    }
    if final_answer is not None:
        details["undone"]["final_answer"] = final_answer
    if note:
        details["note"] = note
    return json.dumps(details)


_EXPORT_COLUMNS = (
    "id",
    "created_at",
    "status",
    "rule",
    "confidence",
    "question",
    "answer",
    "final_answer",
    "reviewer",
    "decided_at",
    "note",
    "messages",
    "kind",
    "inclusion_probability",
    "calibrator_version",
    "policy_version",
    "repeat_of",
)


def export_items(items: Sequence[ReviewItem], fmt: str) -> str:
    """Items as JSONL (full items, audit included) or CSV (one row per item, scores as columns)."""
    if fmt == "jsonl":
        return "".join(item.model_dump_json() + "\n" for item in items)
    if fmt != "csv":
        raise ConfigurationError(f"export format must be 'jsonl' or 'csv', got {fmt!r}")
    from ..results import SCORE_FIELDS

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*_EXPORT_COLUMNS[:5], *SCORE_FIELDS, *_EXPORT_COLUMNS[5:]])
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
                it.kind,
                it.inclusion_probability,
                it.calibrator_version or "",
                it.policy_version or "",
                "" if it.repeat_of is None else it.repeat_of,
            ]
        )
    return buf.getvalue()


_Q = TypeVar("_Q", bound="ReviewQueueBase")


class ReviewQueueBase(abc.ABC):
    """What every review queue backend shares: argument checks, the SQL of each change, waiting, export.

    The SQL is written once, with ``?`` placeholders and ``{items}`` / ``{audit}`` for the table
    names; a backend says how to run it (:meth:`_transaction`, :meth:`_reading`,
    :meth:`_insert_returning`, its placeholder and table names) and how decisions reach callbacks
    (:meth:`_decided`) and waiters (:meth:`_wait_for_change`).
    """

    _placeholder = "?"
    _items_table = "items"
    _audit_table = "audit"
    _closed: bool = False

    @property
    @abc.abstractmethod
    def _where(self) -> str:
        """The queue as named in error messages (never with credentials)."""

    @property
    def location(self) -> str:
        """The queue as a person names it on a command line: a file path, or a PostgreSQL URL with
        its password masked (what the drift advice prints after ``calibrate --from-reviews``)."""
        return self._where

    def _q(self, sql: str) -> str:
        return sql.format(items=self._items_table, audit=self._audit_table).replace("?", self._placeholder)

    @abc.abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[Any]:
        """One write transaction: yields a connection (``execute(sql, params)`` -> cursor), commits on exit."""

    @abc.abstractmethod
    def _reading(self) -> contextlib.AbstractContextManager[Any]:
        """A connection to read with."""

    @abc.abstractmethod
    def _insert_returning(self, conn: Any, sql: str, params: Sequence[Any], column: str) -> int:
        """Run an INSERT and return the new row's ``column`` (its id or seq)."""

    def _decided(self, item_id: int, seq: int, conn: Any | None) -> None:
        """A decision was recorded: called inside the transaction (``conn``), then after commit (None)."""
        return None  # a backend without callbacks or listeners has nothing to do

    def _lock_answer(self, conn: Any, key: str | None) -> None:
        """Hold off other transactions on the same answer until this one ends, so an enqueue and a
        decision of one answer see each other (no repeat left pending). SQLite's write transaction
        already excludes every other writer."""
        return None

    def _change_token(self) -> int | None:
        """Taken before reading an item; :meth:`_wait_for_change` returns early once it is stale."""
        return None

    def _wait_for_change(self, item_id: int, pause: float, token: int | None = None) -> None:
        """Sleep up to ``pause`` s; a backend that hears of changes returns as soon as one arrives."""
        time.sleep(pause)

    @abc.abstractmethod
    def close(self) -> None:
        """Release the backend's connections; later calls raise ReviewQueueError."""

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
        kind: ItemKind = "review",
        inclusion_probability: float = 1.0,
        calibrator_version: str | None = None,
        policy_version: str | None = None,
    ) -> int:
        """Add an answer for review; returns its id once it is durably stored (committed).

        ``kind="audit"`` marks a random copy of an answer already served (see ``GuardPolicy.audit``);
        ``inclusion_probability`` is the chance it was sampled (labels are weighted by its inverse).
        ``calibrator_version`` / ``policy_version`` name what judged it (their ``fingerprint``).

        A repeat (the same chat and the same answer as an item already decided) is stored decided
        as that one was, with :attr:`ReviewItem.repeat_of` naming it: a person judges an answer once,
        and whoever waits on the new item hears at once. A repeat of a *pending* item waits with it
        and is decided with it.

        Raises:
            ConfigurationError: ``answer`` is not a string, ``metadata`` is not JSON-serialisable,
                ``kind`` is unknown or ``inclusion_probability`` is not in (0, 1].
            ScoringError: ``messages`` is malformed (see :func:`~semgrad_guard.messages.normalize_messages`).
        """
        row = enqueue_row(
            messages,
            answer,
            result=result,
            confidence=confidence,
            rule=rule,
            metadata=metadata,
            kind=kind,
            inclusion_probability=inclusion_probability,
            calibrator_version=calibrator_version,
            policy_version=policy_version,
        )
        seq = None
        with self._transaction() as conn:
            self._lock_answer(conn, row.answer_key)
            item_id = self._insert_returning(
                conn,
                self._q(f"INSERT INTO {{items}} ({_INSERT_COLUMNS}) VALUES ({', '.join('?' * 12)})"),
                row.values(),
                "id",
            )
            conn.execute(
                self._q(
                    "INSERT INTO {audit} (item_id, at, event, actor, details) VALUES (?, ?, 'created', NULL, ?)"
                ),
                (item_id, row.created_at, row.created_details),
            )
            earlier = conn.execute(
                self._q(
                    "SELECT id, status, reviewer, final_answer, repeat_of FROM {items} "
                    "WHERE answer_key = ? AND status != 'pending' AND id != ? "
                    "ORDER BY decided_at DESC, id DESC LIMIT 1"  # the latest judgement of this answer
                ),
                (row.answer_key, item_id),
            ).fetchone()
            if earlier is not None:
                origin = int(earlier[4] if earlier[4] is not None else earlier[0])  # the person's decision
                status = ReviewStatus(earlier[1])
                seq = self._record_decision(
                    conn, item_id, status, earlier[2], None, earlier[3], origin, row.created_at
                )
        if seq is not None:
            self._decided(item_id, seq, None)
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

    def cannot_tell(
        self, item_id: int, *, reviewer: str | None = None, note: str | None = None
    ) -> ReviewItem:
        """Record that the reviewer cannot tell whether the answer is right.

        A final decision like the others (no answer is released: ``final_answer`` is None), but not
        a label: fitting leaves it out and counts it (see :func:`~semgrad_guard.review.labels.labelled`).

        Raises:
            AlreadyDecidedError: The item was decided already.
            ReviewItemNotFoundError: No such item.
        """
        return self._decide(item_id, ReviewStatus.CANNOT_TELL, reviewer, note, None)

    def reopen(self, item_id: int, *, reviewer: str | None = None, note: str | None = None) -> ReviewItem:
        """Put a decided item back to pending so it can be decided again (an explicit, audited action).

        The previous decision stays in the audit trail (event ``reopened``, with what was undone).
        The repeats that took this decision (:attr:`ReviewItem.repeat_of`) are re-opened with it, so
        the next decision reaches them too.

        Raises:
            ReviewItemNotFoundError: No such item.
            ReviewQueueError: The item is still pending (nothing to re-open).
        """
        now = _now()
        select = "SELECT status, reviewer, decided_at, final_answer FROM {items} WHERE id = ?"
        with self._transaction() as conn:
            key = conn.execute(
                self._q("SELECT answer_key FROM {items} WHERE id = ?"), (int(item_id),)
            ).fetchone()
            if key is None:
                raise ReviewItemNotFoundError(f"no review item with id {item_id} in {self._where}")
            self._lock_answer(conn, key[0])
            row = conn.execute(self._q(select), (int(item_id),)).fetchone()
            if row[0] == ReviewStatus.PENDING.value:
                raise ReviewQueueError(f"review item {item_id} is pending; there is no decision to re-open")
            repeats = conn.execute(
                self._q("SELECT id FROM {items} WHERE repeat_of = ? AND status != 'pending' ORDER BY id"),
                (int(item_id),),
            ).fetchall()
            for target in [int(item_id), *(int(r[0]) for r in repeats)]:
                previous, prev_reviewer, prev_at, prev_final = (
                    row if target == item_id else conn.execute(self._q(select), (target,)).fetchone()
                )
                cur = conn.execute(
                    self._q(
                        "UPDATE {items} SET status = 'pending', reviewer = NULL, decided_at = NULL, "
                        "final_answer = NULL, note = NULL, repeat_of = NULL WHERE id = ? AND status != 'pending'"
                    ),
                    (target,),
                )
                if cur.rowcount != 1:
                    if target == item_id:  # another transaction re-opened it first
                        raise ReviewQueueError(
                            f"review item {item_id} is pending; there is no decision to re-open"
                        )
                    continue  # a repeat someone re-opened on its own meanwhile
                details = reopen_details(previous, prev_reviewer, prev_at, prev_final, note)
                if target != item_id:
                    details = json.dumps({**json.loads(details), "with": int(item_id)})
                conn.execute(
                    self._q(
                        "INSERT INTO {audit} (item_id, at, event, actor, details) VALUES (?, ?, 'reopened', ?, ?)"
                    ),
                    (target, now, reviewer, details),
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
            row = conn.execute(
                self._q("SELECT answer, answer_key FROM {items} WHERE id = ?"), (int(item_id),)
            ).fetchone()
            if row is None:
                raise ReviewItemNotFoundError(f"no review item with id {item_id} in {self._where}")
            self._lock_answer(conn, row[1])
            final = row[0] if status is ReviewStatus.APPROVED else new_answer
            seq = self._record_decision(conn, int(item_id), status, reviewer, note, final, None, now)
            if seq is None:
                done = conn.execute(
                    self._q("SELECT status, reviewer, decided_at FROM {items} WHERE id = ?"), (int(item_id),)
                ).fetchone()
                raise AlreadyDecidedError(int(item_id), done[0], done[1], done[2], attempted=_VERBS[status])
            # Its pending repeats (the same chat and answer) are decided with it.
            repeats = conn.execute(
                self._q(
                    "SELECT r.id FROM {items} r JOIN {items} i ON r.answer_key = i.answer_key "
                    "WHERE i.id = ? AND r.id != i.id AND r.status = 'pending' ORDER BY r.id"
                ),
                (int(item_id),),
            ).fetchall()
            decided = [(int(item_id), seq)]
            for (repeat_id,) in repeats:
                r_seq = self._record_decision(
                    conn, int(repeat_id), status, reviewer, None, final, int(item_id), now
                )
                if r_seq is not None:
                    decided.append((int(repeat_id), r_seq))
        for decided_id, decided_seq in decided:
            self._decided(decided_id, decided_seq, None)
        return self.get(item_id)

    def _record_decision(
        self,
        conn: Any,
        item_id: int,
        status: ReviewStatus,
        reviewer: str | None,
        note: str | None,
        final: str | None,
        repeat_of: int | None,
        now: str,
    ) -> int | None:
        """Decide pending ``item_id`` in ``conn``'s transaction (``repeat_of``: as that item was
        decided; None: a person's decision); its audit seq, or None when it was no longer pending.

        A compare-and-set on the pending state: only one decision can ever move an item out of it.
        """
        cur = conn.execute(
            self._q(
                "UPDATE {items} SET status = ?, reviewer = ?, decided_at = ?, final_answer = ?, note = ?, "
                "repeat_of = ? WHERE id = ? AND status = 'pending'"
            ),
            (status.value, reviewer, now, final, note, repeat_of, item_id),
        )
        if cur.rowcount != 1:
            return None
        new_answer = final if status is ReviewStatus.EDITED else None
        seq = self._insert_returning(
            conn,
            self._q("INSERT INTO {audit} (item_id, at, event, actor, details) VALUES (?, ?, ?, ?, ?)"),
            (item_id, now, status.value, reviewer, decision_details(status, new_answer, note, repeat_of)),
            "seq",
        )
        self._decided(item_id, seq, conn)
        return seq

    # ------------------------------------------------------------------ reading
    def get(self, item_id: int) -> ReviewItem:
        """One item with its audit trail."""
        with self._reading() as conn:
            row = conn.execute(
                self._q(f"SELECT {_COLUMNS} FROM {{items}} WHERE id = ?"), (int(item_id),)
            ).fetchone()
            if row is None:
                raise ReviewItemNotFoundError(f"no review item with id {item_id} in {self._where}")
            audit = conn.execute(
                self._q("SELECT at, event, actor, details FROM {audit} WHERE item_id = ? ORDER BY seq"),
                (int(item_id),),
            ).fetchall()
        return _item(row, audit)

    def list(
        self, status: ReviewStatus | str | None = None, *, limit: int | None = None
    ) -> builtins.list[ReviewItem]:
        """Items, newest first, optionally only those with ``status``."""
        sql = f"SELECT {_COLUMNS} FROM {{items}}"
        args: builtins.list[Any] = []
        if status is not None:
            sql += " WHERE status = ?"
            args.append(parse_status(status).value)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._reading() as conn:
            rows = conn.execute(self._q(sql), args).fetchall()
            audits: dict[int, builtins.list[Any]] = {}
            if rows:
                ids = [r[0] for r in rows]
                marks = ",".join("?" * len(ids))
                for a in conn.execute(
                    self._q(
                        f"SELECT item_id, at, event, actor, details FROM {{audit}} WHERE item_id IN ({marks}) "
                        "ORDER BY seq"
                    ),
                    ids,
                ).fetchall():
                    audits.setdefault(a[0], []).append(a[1:])
        return [_item(r, audits.get(r[0], [])) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of items by status."""
        with self._reading() as conn:
            rows = conn.execute(self._q("SELECT status, COUNT(*) FROM {items} GROUP BY status")).fetchall()
        out = {s.value: 0 for s in ReviewStatus}
        out.update({k: int(v) for k, v in rows})
        return out

    def __len__(self) -> int:
        return sum(self.counts().values())

    # ------------------------------------------------------------------ waiting, callbacks, export
    def wait(self, item_id: int, *, timeout: float | None = None, poll_interval: float = 1.0) -> ReviewItem:
        """Block until a reviewer decides (in any process); returns the resolved item.

        Raises:
            ReviewTimeoutError: ``timeout`` seconds passed and the item is still pending.
            ReviewItemNotFoundError: No such item.
        """
        from ..errors import ReviewTimeoutError

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            token = self._change_token()
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
            self._wait_for_change(item_id, pause, token)

    async def await_decision(
        self, item_id: int, *, timeout: float | None = None, poll_interval: float = 1.0
    ) -> ReviewItem:
        """Async :meth:`wait`: waits without blocking the event loop."""
        from ..errors import ReviewTimeoutError

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            token = await asyncio.to_thread(self._change_token)
            item = await asyncio.to_thread(self.get, item_id)
            if item.resolved:
                return item
            if deadline is not None and loop.time() >= deadline:
                raise ReviewTimeoutError(f"review item {item_id} is still pending after {timeout} s")
            pause = (
                poll_interval if deadline is None else min(poll_interval, max(0.0, deadline - loop.time()))
            )
            await asyncio.to_thread(self._wait_for_change, item_id, pause, token)

    def _fire(self, callbacks: Sequence[ResolvedCallback], item_ids: Sequence[int]) -> None:
        for item_id in item_ids:
            item = self.get(item_id)
            for cb in callbacks:
                try:
                    cb(item)
                except Exception:
                    logger.exception("review on_resolved callback failed for item %s", item_id)

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
        text = export_items(builtins.list(reversed(self.list(status))), fmt)
        if file is not None:
            file.write(text)
        return text

    def __enter__(self: _Q) -> _Q:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SQLiteReviewQueue(ReviewQueueBase):
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

    @property
    def _where(self) -> str:
        return str(self.path)

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
            raise ReviewQueueMissingError(f"review database {self.path} does not exist")
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
                if version < SCHEMA_VERSION:
                    self._migrate(conn)
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

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring an older file to the current schema in one transaction. From version 1 the items
        table is rebuilt (SQLite cannot widen a CHECK constraint in place) and existing items become
        review items (p = 1); from version 2 two columns are added. Existing items get their
        ``answer_key``; earlier repeats keep their own decisions."""
        conn.execute("PRAGMA foreign_keys = OFF")  # the rebuild drops the table the audit refers to
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated it between our read and the lock.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version >= SCHEMA_VERSION:
                conn.execute("COMMIT")
                return
            if version < 2:
                table = _SCHEMA.split(";")[0].replace("CREATE TABLE items", "CREATE TABLE items_v2", 1)
                conn.execute(table)
                old = "id, created_at, messages, answer, result, confidence, rule, status, reviewer, decided_at, final_answer, note, metadata"
                conn.execute(f"INSERT INTO items_v2 ({old}) SELECT {old} FROM items")
                conn.execute("DROP TABLE items")
                conn.execute("ALTER TABLE items_v2 RENAME TO items")
                conn.execute("CREATE INDEX items_status ON items(status)")
            else:
                conn.execute("ALTER TABLE items ADD COLUMN answer_key TEXT")
                conn.execute("ALTER TABLE items ADD COLUMN repeat_of INTEGER")
            keys = [
                (answer_key(m, a), i) for i, m, a in conn.execute("SELECT id, messages, answer FROM items")
            ]
            conn.executemany("UPDATE items SET answer_key = ? WHERE id = ?", keys)
            conn.execute("CREATE INDEX items_answer_key ON items(answer_key)")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        logger.info("review database %s migrated to schema version %d", self.path, SCHEMA_VERSION)

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

    def _insert_returning(self, conn: Any, sql: str, params: Sequence[Any], column: str) -> int:
        return int(conn.execute(sql, params).lastrowid or 0)

    def _reading(self) -> contextlib.AbstractContextManager[Any]:
        return self._read()

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise ReviewQueueError("review queue is closed")
            yield self._conn

    def _decided(self, item_id: int, seq: int, conn: Any | None) -> None:
        if conn is None:
            self._dispatch()  # decisions made through this object fire at once

    # ------------------------------------------------------------------ callbacks
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
        self._fire(callbacks, [int(r[1]) for r in rows])

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

    def __repr__(self) -> str:
        return f"SQLiteReviewQueue({str(self.path)!r})"


_VERBS = {
    ReviewStatus.APPROVED: "approve",
    ReviewStatus.REJECTED: "reject",
    ReviewStatus.EDITED: "edit",
    ReviewStatus.CANNOT_TELL: "cannot_tell",
}

_COLUMNS = (
    "id, created_at, messages, answer, result, confidence, rule, status, reviewer, decided_at, final_answer, "
    "note, metadata, kind, inclusion_probability, calibrator_version, policy_version, repeat_of"
)


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
        kind,
        inclusion,
        cal_version,
        policy_version,
        repeat_of,
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
            kind=kind,
            inclusion_probability=inclusion,
            calibrator_version=cal_version,
            policy_version=policy_version,
            repeat_of=repeat_of,
            audit=[
                AuditEntry(at=a[0], event=a[1], actor=a[2], details=json.loads(a[3] or "{}")) for a in audit
            ],
        )
    except (ValueError, TypeError) as e:
        raise ReviewQueueCorruptError(f"review item {item_id} is malformed: {e}") from e


def review_db_name(spec: str | os.PathLike[str] | None = None) -> str:
    """How a queue spec is shown to people: the path, or the URL with its password as ``***``."""
    from .postgres import is_postgres_url, redact_url

    value = os.fspath(spec) if spec is not None else default_review_db()
    return redact_url(value) if is_postgres_url(value) else str(Path(value).expanduser())


def warn_if_password_in_url(spec: object, *, source: str = "--db") -> bool:
    """Log a warning (and return True) when ``spec`` is a PostgreSQL URL with a password in it.

    A password on a command line is visible to every user of the machine (``ps``) and lands in
    shell history; the warning points to the ways libpq takes it instead.
    """
    from .postgres import is_postgres_url, url_password

    if not (is_postgres_url(spec) and url_password(str(spec))):
        return False
    logger.warning(
        "%s has a password in the PostgreSQL URL (visible in `ps` and shell history); leave it out and "
        "set PGPASSWORD, a ~/.pgpass line, or ?service=NAME with a pg_service.conf entry instead",
        source,
    )
    return True


def open_review_queue(
    spec: ReviewQueue | str | os.PathLike[str] | None = None, *, create: bool = True
) -> ReviewQueue:
    """The review queue ``spec`` names: the one way every entry point (Guard, adapters, CLI, service) opens one.

    ``spec`` is a ready queue (returned as is), a ``postgresql://`` URL
    (:class:`~semgrad_guard.review.postgres.PostgresReviewQueue`), a file path
    (:class:`SQLiteReviewQueue`), or None: ``$SEMGRAD_GUARD_REVIEW_DB`` (a URL or a path), else
    ``review.db`` in the user data dir. ``create=False`` refuses to create a queue that is not there.

    Raises:
        ReviewQueueError: the queue cannot be opened (the message names it without credentials).
        MissingDependencyError: a URL was given and psycopg is not installed.
    """
    if spec is not None and not isinstance(spec, (str, os.PathLike)):
        if isinstance(spec, ReviewQueue):
            return spec
        raise ConfigurationError(
            f"a review queue is a path, a postgresql:// URL or a ReviewQueue, got {type(spec).__name__}"
        )
    from .postgres import PostgresReviewQueue, is_postgres_url

    value = os.fspath(spec) if spec is not None else default_review_db()
    if is_postgres_url(value):
        return PostgresReviewQueue(value, create=create)
    return SQLiteReviewQueue(value, create=create)


_FORMULA_LEAD = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run: text starting like a formula gets a leading ``'``.

    OWASP's CSV-injection rule (``=HYPERLINK(...)``, ``=1+1``, ``@SUM``, ``+``, ``-``, tab, CR from
    model or user text). Numbers are left as they are (a negative score stays a number).
    """
    if isinstance(value, str) and value.startswith(_FORMULA_LEAD):
        return "'" + value
    return value
