"""The review queue in PostgreSQL: one queue for guards on several machines (``semgrad-guard[postgres]``).

Same semantics as :class:`~semgrad_guard.SQLiteReviewQueue` (the SQL of every change is shared,
see :class:`~semgrad_guard.review.queue.ReviewQueueBase`): an ``enqueue`` returns its id only
after the commit, a decision is a compare-and-set on the pending state (the second reviewer gets
:class:`~semgrad_guard.errors.AlreadyDecidedError`), re-opening is audited. Decisions are
announced with ``NOTIFY`` in the deciding transaction, so :meth:`~PostgresReviewQueue.wait`,
``await_decision`` and :meth:`~PostgresReviewQueue.on_resolved` hear of them as they commit, from
any machine (``LISTEN``; the poll interval is only a fallback).

The schema (tables ``<prefix>_items``, ``<prefix>_audit``, ``<prefix>_meta`` in the connection's
current schema) is created and migrated by the library under an advisory lock; a database written
by a newer semgrad-guard is refused. Credentials never appear in ``repr``, errors or logs: give the
password through ``PGPASSWORD``, ``~/.pgpass`` or a service file rather than in the URL.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import (
    MissingDependencyError,
    ReviewQueueCorruptError,
    ReviewQueueError,
    ReviewQueueMissingError,
)
from .queue import SCHEMA_VERSION, ResolvedCallback, ReviewQueueBase

logger = logging.getLogger(__name__)

_URL_SCHEMES = ("postgresql://", "postgres://")
_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")
_APPLICATION = "semgrad-guard review queue"

# Schema version -> the statements that bring a database from the previous version to it. A new
# database gets the version-1 tables and then every migration, so both paths build the same schema.
_MIGRATIONS: dict[int, Sequence[str]] = {
    2: [  # cannot_tell decisions; audit items with their inclusion probability; what judged an item
        "ALTER TABLE {prefix}_items DROP CONSTRAINT {prefix}_items_status_check",
        "ALTER TABLE {prefix}_items ADD CONSTRAINT {prefix}_items_status_check "
        "CHECK (status IN ('pending', 'approved', 'rejected', 'edited', 'cannot_tell'))",
        "ALTER TABLE {prefix}_items ADD COLUMN kind TEXT NOT NULL DEFAULT 'review' "
        "CHECK (kind IN ('review', 'audit'))",
        "ALTER TABLE {prefix}_items ADD COLUMN inclusion_probability DOUBLE PRECISION NOT NULL DEFAULT 1.0 "
        "CHECK (inclusion_probability > 0 AND inclusion_probability <= 1)",
        "ALTER TABLE {prefix}_items ADD COLUMN calibrator_version TEXT",
        "ALTER TABLE {prefix}_items ADD COLUMN policy_version TEXT",
    ],
    3: [  # a repeated answer is decided once: the key of (chat, answer), and whose decision it took
        "ALTER TABLE {prefix}_items ADD COLUMN answer_key TEXT",
        "ALTER TABLE {prefix}_items ADD COLUMN repeat_of BIGINT",
        # queue.answer_key in SQL: sha256 of the stored chat, a newline, the answer
        "UPDATE {prefix}_items SET answer_key = "
        "encode(sha256(convert_to(messages || E'\\n' || answer, 'UTF8')), 'hex')",
        "CREATE INDEX {prefix}_items_answer_key ON {prefix}_items (answer_key)",
    ],
}


def is_postgres_url(spec: object) -> bool:
    """True when ``spec`` names a PostgreSQL database (``postgresql://`` or ``postgres://`` URL)."""
    return isinstance(spec, str) and spec.strip().lower().startswith(_URL_SCHEMES)


def url_password(url: str) -> str | None:
    """The password written in ``url`` (user info or ``?password=``), if any."""
    parts = urlsplit(url.strip())
    if parts.password:
        return parts.password
    for key, value in parse_qsl(parts.query):
        if key == "password" and value:
            return value
    return None


def redact_url(url: str) -> str:
    """``url`` with its password (user info or ``?password=``) replaced by ``***``."""
    parts = urlsplit(url.strip())
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}"
    query = parts.query
    if query:
        pairs = [(k, "***" if k == "password" else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _schema_v1(prefix: str) -> builtins.list[str]:
    return [
        f"""CREATE TABLE {prefix}_items (
            id BIGSERIAL PRIMARY KEY,
            created_at TEXT NOT NULL,
            messages TEXT NOT NULL,
            answer TEXT NOT NULL,
            result TEXT,
            confidence DOUBLE PRECISION,
            rule TEXT,
            status TEXT NOT NULL DEFAULT 'pending'
                CONSTRAINT {prefix}_items_status_check
                CHECK (status IN ('pending', 'approved', 'rejected', 'edited')),
            reviewer TEXT,
            decided_at TEXT,
            final_answer TEXT,
            note TEXT,
            metadata TEXT NOT NULL DEFAULT '{{}}'
        )""",
        f"CREATE INDEX {prefix}_items_status ON {prefix}_items (status)",
        f"""CREATE TABLE {prefix}_audit (
            seq BIGSERIAL PRIMARY KEY,
            item_id BIGINT NOT NULL REFERENCES {prefix}_items (id),
            at TEXT NOT NULL,
            event TEXT NOT NULL,
            actor TEXT,
            details TEXT NOT NULL DEFAULT '{{}}'
        )""",
        f"CREATE INDEX {prefix}_audit_item ON {prefix}_audit (item_id)",
    ]


class PostgresReviewQueue(ReviewQueueBase):
    """The review queue in a PostgreSQL database, shared by every guard and reviewer that can reach it.

    Args:
        url: ``postgresql://[user@]host[:port]/dbname[?options]`` (libpq URL; the password is best
            left out of it: ``PGPASSWORD``, ``~/.pgpass`` and ``?service=`` work as with ``psql``).
        create: Create the tables when the database has none (False: a missing queue is an error).
        prefix: Table name prefix (several queues can live in one database).
        max_connections: Size of the connection pool (one connection more listens for decisions).
        timeout: Seconds to wait for a connection.

    Raises:
        MissingDependencyError: psycopg is not installed (``pip install 'semgrad-guard[postgres]'``).
        ReviewQueueError: the server cannot be reached, or (``create=False``) holds no queue.
        ReviewQueueCorruptError: the database holds tables of that name that are not a review
            queue, or a queue of a newer schema version.
    """

    _placeholder = "%s"

    def __init__(
        self,
        url: str,
        *,
        create: bool = True,
        prefix: str = "semgrad_review",
        max_connections: int = 8,
        timeout: float = 30.0,
    ) -> None:
        if not is_postgres_url(url):
            # Not echoed: a malformed URL may still carry a password.
            raise ReviewQueueError(
                "the review database is not a postgresql:// URL; give postgresql://[user@]host[:port]/dbname"
            )
        if not _PREFIX.match(prefix):
            raise ReviewQueueError(f"table prefix must be a lower-case SQL identifier, got {prefix!r}")
        try:
            import psycopg
            import psycopg_pool
        except ImportError as e:
            raise MissingDependencyError(
                e.name or "psycopg", "postgres", "a postgresql:// review queue"
            ) from e
        self._psycopg = psycopg
        self._pool_timeout = psycopg_pool.PoolTimeout
        self._url = url.strip()
        self._secret = url_password(self._url)
        self._display = redact_url(self._url)
        self._prefix = prefix
        self._items_table = f"{prefix}_items"
        self._audit_table = f"{prefix}_audit"
        self._channel = f"{prefix}_decided"
        self._timeout = timeout
        self._closed = False
        self._cond = threading.Condition()
        self._changes = 0
        self._callbacks: builtins.list[ResolvedCallback] = []
        self._fired: set[int] = set()
        self._listener: threading.Thread | None = None
        self._listen_conn: Any = None
        self._stop = threading.Event()
        self._setup(create)
        self._pool = psycopg_pool.ConnectionPool(
            self._url,
            min_size=1,
            max_size=max(1, int(max_connections)),
            timeout=timeout,
            kwargs={"application_name": _APPLICATION, "connect_timeout": max(1, int(timeout))},
            name=f"semgrad-review-{prefix}",
            open=True,
        )

    # ------------------------------------------------------------------ naming and errors
    @property
    def _where(self) -> str:
        return self._display

    def _clean(self, text: str) -> str:
        """``text`` with the URL's password blanked (libpq messages may quote the connection string)."""
        if self._secret:
            text = text.replace(self._secret, "***")
        return text.replace(self._url, self._display)

    def _error(self, what: str, e: BaseException) -> ReviewQueueError:
        return ReviewQueueError(f"{what} review database {self._display}: {self._clean(str(e)).strip()}")

    def _connect(self, **kw: Any) -> Any:
        try:
            return self._psycopg.connect(
                self._url, application_name=_APPLICATION, connect_timeout=max(1, int(self._timeout)), **kw
            )
        except self._psycopg.Error as e:
            raise self._error("cannot connect to", e) from None

    # ------------------------------------------------------------------ schema
    def _setup(self, create: bool) -> None:
        p = self._prefix
        conn = self._connect()
        try:
            with conn.transaction():
                # Serialise set-up and migration between processes starting at once.
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"semgrad-guard:{p}",))
                found = {
                    name
                    for (name,) in conn.execute(
                        "SELECT table_name FROM information_schema.tables "
                        "WHERE table_schema = current_schema() AND table_name IN (%s, %s, %s)",
                        (f"{p}_items", f"{p}_audit", f"{p}_meta"),
                    ).fetchall()
                }
                if not found:
                    if not create:
                        raise ReviewQueueMissingError(
                            f"{self._display} holds no review queue (no {p}_* tables): nothing was queued "
                            "there yet; check --db or $SEMGRAD_GUARD_REVIEW_DB"
                        )
                    for statement in _schema_v1(p):
                        conn.execute(statement)
                    conn.execute(f"CREATE TABLE {p}_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                    conn.execute(
                        f"INSERT INTO {p}_meta (key, value) VALUES ('application', %s), ('schema_version', '1')",
                        (_APPLICATION,),
                    )
                    self._migrate(conn, 1)
                    return
                if f"{p}_meta" not in found:
                    raise ReviewQueueCorruptError(
                        f"{self._display} has tables {sorted(found)} but they are not a semgrad-guard review "
                        "queue; they were left untouched: give another database or a prefix"
                    )
                meta = dict(conn.execute(f"SELECT key, value FROM {p}_meta").fetchall())
                if (
                    meta.get("application") != _APPLICATION
                    or not str(meta.get("schema_version", "")).isdigit()
                ):
                    raise ReviewQueueCorruptError(
                        f"{self._display}: table {p}_meta is not a semgrad-guard review queue's; it was left "
                        "untouched: give another database or a prefix"
                    )
                version = int(meta["schema_version"])
                if version > SCHEMA_VERSION:
                    raise ReviewQueueCorruptError(
                        f"{self._display} has review schema version {version}; this semgrad-guard knows "
                        f"<= {SCHEMA_VERSION}: upgrade it where this runs (pip install -U 'semgrad-guard[postgres]')"
                    )
                if not {f"{p}_items", f"{p}_audit"} <= found:
                    raise ReviewQueueCorruptError(
                        f"{self._display} is missing review tables ({sorted(found)}); it was left untouched"
                    )
                if version < SCHEMA_VERSION:
                    self._migrate(conn, version)
                    logger.info(
                        "review database %s migrated to schema version %s", self._display, SCHEMA_VERSION
                    )
        except self._psycopg.Error as e:
            raise self._error("cannot set up", e) from None
        finally:
            conn.close()

    def _migrate(self, conn: Any, version: int) -> None:
        """From ``version`` to :data:`SCHEMA_VERSION`, in the caller's transaction (under its advisory lock)."""
        p = self._prefix
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS.get(target, ()):
                conn.execute(statement.format(prefix=p))
        conn.execute(f"UPDATE {p}_meta SET value = %s WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))

    # ------------------------------------------------------------------ running SQL
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        if self._closed:
            raise ReviewQueueError("review queue is closed")
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield conn
        except self._psycopg.Error as e:
            raise self._error("error on", e) from None
        except self._pool_timeout as e:
            raise self._error("no connection to", e) from None

    _reading = _transaction

    def _insert_returning(self, conn: Any, sql: str, params: Sequence[Any], column: str) -> int:
        return int(conn.execute(f"{sql} RETURNING {column}", params).fetchone()[0])

    def _lock_answer(self, conn: Any, key: str | None) -> None:
        # Read committed lets an enqueue and a decision of one answer miss each other's uncommitted
        # rows (the repeat would stay pending): one transaction-scoped advisory lock per answer.
        if key is not None:
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"semgrad-guard:{self._prefix}:{key}",)
            )

    # ------------------------------------------------------------------ decisions reach waiters and callbacks
    def _decided(self, item_id: int, seq: int, conn: Any | None) -> None:
        if conn is not None:
            # Delivered to every listener when (and only if) the transaction commits.
            self._fired.add(seq)
            conn.execute("SELECT pg_notify(%s, %s)", (self._channel, f"{seq}:{item_id}"))
            return
        with self._cond:
            self._changes += 1
            self._cond.notify_all()
            callbacks = builtins.list(self._callbacks)
        if callbacks:
            self._fire(callbacks, [item_id])

    def _change_token(self) -> int:
        self._listen()
        with self._cond:
            return self._changes

    def _wait_for_change(self, item_id: int, pause: float, token: int | None = None) -> None:
        with self._cond:
            if token is None or self._changes == token:
                self._cond.wait(pause)

    def on_resolved(self, callback: ResolvedCallback, *, poll_interval: float = 1.0) -> None:
        """Call ``callback(item)`` whenever an item is approved, rejected or edited, by anyone.

        Decisions made through this object fire at once; others as their ``NOTIFY`` arrives (a
        listening connection; ``poll_interval`` is accepted for parity with SQLite). Only decisions
        committed after the first registration are reported; exceptions in callbacks are logged.
        """
        self._listen()
        with self._cond:
            self._callbacks.append(callback)

    def _listen(self) -> None:
        """Start the listener (``LISTEN`` is in place when this returns, so no later decision is missed)."""
        with self._cond:
            if self._listener is not None or self._closed:
                return
            self._listen_conn = self._connect(autocommit=True)
            self._listen_conn.execute(f"LISTEN {self._channel}")
            self._listener = threading.Thread(
                target=self._listen_loop, name="semgrad-review-listen", daemon=True
            )
            self._listener.start()

    def _listen_loop(self) -> None:
        while not self._stop.is_set():
            try:
                for note in self._listen_conn.notifies(timeout=0.5):
                    self._heard(note.payload)
            except self._psycopg.Error as e:
                if self._stop.is_set():
                    return
                logger.warning(
                    "review queue listener lost %s: %s; reconnecting", self._display, self._clean(str(e))
                )
                self._stop.wait(1.0)
                with contextlib.suppress(Exception):
                    self._listen_conn.close()
                with contextlib.suppress(ReviewQueueError, self._psycopg.Error):
                    conn = self._connect(autocommit=True)
                    conn.execute(f"LISTEN {self._channel}")
                    self._listen_conn = conn
                    with self._cond:  # decisions may have been missed: wake waiters to re-read
                        self._changes += 1
                        self._cond.notify_all()

    def _heard(self, payload: str) -> None:
        try:
            seq_text, item_text = payload.split(":", 1)
            seq, item_id = int(seq_text), int(item_text)
        except ValueError:
            return
        with self._cond:
            self._changes += 1
            self._cond.notify_all()
            if seq in self._fired:  # ours: fired at commit already
                self._fired.discard(seq)
                return
            callbacks = builtins.list(self._callbacks)
        if callbacks:
            try:
                self._fire(callbacks, [item_id])
            except ReviewQueueError:
                logger.exception("review on_resolved: cannot read item %s", item_id)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop the listener and close the connections."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        listener = self._listener
        if listener is not None and listener is not threading.current_thread():
            listener.join(timeout=5)
        if self._listen_conn is not None:
            with contextlib.suppress(Exception):
                self._listen_conn.close()
        self._pool.close()

    def __repr__(self) -> str:
        return f"PostgresReviewQueue({self._display!r})"


__all__ = ["PostgresReviewQueue", "is_postgres_url", "redact_url", "url_password"]
