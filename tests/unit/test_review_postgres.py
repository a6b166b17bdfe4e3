"""What only the PostgreSQL queue has: a versioned schema on a server, LISTEN/NOTIFY, credentials in URLs.

The behaviour both backends share is in test_review.py (parametrised over both).
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg
import pytest

from semgrad_guard import (
    PostgresReviewQueue,
    ReviewQueueCorruptError,
    ReviewQueueError,
    ReviewStatus,
    open_review_queue,
)
from semgrad_guard.review import postgres as pg_module
from semgrad_guard.review.postgres import redact_url, url_password
from semgrad_guard.review.queue import review_db_name, warn_if_password_in_url


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        }


def test_open_review_queue_picks_the_backend_from_the_spec(postgres_url, tmp_path, monkeypatch) -> None:
    with open_review_queue(postgres_url) as q:
        assert isinstance(q, PostgresReviewQueue)
        assert open_review_queue(q) is q  # a ready queue passes through
    monkeypatch.setenv("SEMGRAD_GUARD_REVIEW_DB", postgres_url)
    with open_review_queue() as q:
        assert isinstance(q, PostgresReviewQueue)
    assert _tables(postgres_url) == {"semgrad_review_items", "semgrad_review_audit", "semgrad_review_meta"}


def test_missing_queue_without_create_is_an_error_and_creates_nothing(postgres_url) -> None:
    with pytest.raises(ReviewQueueError, match="holds no review queue"):
        PostgresReviewQueue(postgres_url, create=False)
    assert _tables(postgres_url) == set()


def test_newer_schema_is_refused_with_the_fix_and_left_untouched(postgres_url) -> None:
    PostgresReviewQueue(postgres_url).close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("UPDATE semgrad_review_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(ReviewQueueCorruptError, match=r"schema version 99.*pip install -U"):
        PostgresReviewQueue(postgres_url)
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute(
            "SELECT value FROM semgrad_review_meta WHERE key = 'schema_version'"
        ).fetchone() == ("99",)


def _schema_version(url: str) -> str:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT value FROM semgrad_review_meta WHERE key = 'schema_version'").fetchone()[
            0
        ]


def test_a_version_1_queue_is_migrated_in_place(postgres_url, monkeypatch) -> None:
    with monkeypatch.context() as m:  # the tables the first release created
        m.setattr(pg_module, "SCHEMA_VERSION", 1)
        PostgresReviewQueue(postgres_url).close()
    assert _schema_version(postgres_url) == "1"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        (item,) = conn.execute(
            "INSERT INTO semgrad_review_items (created_at, messages, answer, metadata) "
            "VALUES ('2026-01-01T00:00:00.000+00:00', '[{\"role\": \"user\", \"content\": \"q\"}]', 'a', '{}') "
            "RETURNING id"
        ).fetchone()
        with pytest.raises(psycopg.errors.CheckViolation):  # version 1 knows no cannot_tell
            conn.execute("UPDATE semgrad_review_items SET status = 'cannot_tell'")
    with PostgresReviewQueue(postgres_url) as q:
        it = q.get(item)
        assert (it.answer, it.kind, it.inclusion_probability, it.calibrator_version) == (
            "a",
            "review",
            1.0,
            None,
        )
        assert q.cannot_tell(item, reviewer="ana").status is ReviewStatus.CANNOT_TELL
        audit = q.get(q.enqueue("q", "b", kind="audit", inclusion_probability=0.25, policy_version="p1"))
        assert (audit.kind, audit.inclusion_probability, audit.policy_version) == ("audit", 0.25, "p1")
        # The migration keyed the old item in SQL as enqueue keys a new one: a repeat finds it.
        again = q.get(q.enqueue("q", "a"))
        assert (again.status, again.repeat_of, again.reviewer) == (ReviewStatus.CANNOT_TELL, item, "ana")
    assert _schema_version(postgres_url) == str(pg_module.SCHEMA_VERSION) == "3"


def test_a_later_migration_runs_once_on_open(postgres_url, monkeypatch) -> None:
    with PostgresReviewQueue(postgres_url) as q:
        item = q.enqueue("q", "kept across the migration")
    monkeypatch.setattr(pg_module, "SCHEMA_VERSION", 3)
    probe = {**pg_module._MIGRATIONS, 3: ["ALTER TABLE {prefix}_items ADD COLUMN probe TEXT"]}
    monkeypatch.setattr(pg_module, "_MIGRATIONS", probe)
    with PostgresReviewQueue(postgres_url) as q:
        assert q.get(item).answer == "kept across the migration"
    PostgresReviewQueue(postgres_url).close()  # already at 3: the ALTER would fail if it ran again
    assert _schema_version(postgres_url) == "3"


def test_foreign_tables_of_the_same_name_are_refused_and_left_untouched(postgres_url) -> None:
    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TABLE semgrad_review_items (name TEXT)")
        conn.execute("INSERT INTO semgrad_review_items VALUES ('ana')")
    with pytest.raises(ReviewQueueCorruptError, match="not a semgrad-guard review queue"):
        PostgresReviewQueue(postgres_url)
    assert _tables(postgres_url) == {"semgrad_review_items"}
    with PostgresReviewQueue(postgres_url, prefix="other") as q:  # another prefix is another queue
        assert q.get(q.enqueue("q", "a")).status is ReviewStatus.PENDING


def test_credentials_never_appear_in_repr_errors_or_logs(caplog) -> None:
    url = "postgresql://ana:s3cr3t-pw@127.0.0.1:1/review?sslmode=disable"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ReviewQueueError) as err:
        PostgresReviewQueue(url, timeout=2)
    assert "s3cr3t-pw" not in str(err.value) and "ana:***@127.0.0.1:1/review" in str(err.value)
    assert "s3cr3t-pw" not in caplog.text
    assert redact_url(url) == "postgresql://ana:***@127.0.0.1:1/review?sslmode=disable"
    assert redact_url("postgresql://h/db?password=pw&user=bo") == "postgresql://h/db?password=***&user=bo"
    assert (
        url_password("postgresql://h/db?password=pw") == "pw" and url_password("postgresql://bo@h/db") is None
    )
    assert review_db_name(url) == redact_url(url)
    with pytest.raises(ReviewQueueError) as err:  # a malformed URL is not echoed either
        PostgresReviewQueue("postgres:/ana:s3cr3t-pw@host/db")
    assert "s3cr3t-pw" not in str(err.value)


def test_repr_hides_the_password(postgres_server) -> None:
    url = postgres_server.create_database().replace("semgrad@", "semgrad:hunter2@")  # trust auth ignores it
    with PostgresReviewQueue(url) as q:
        assert "hunter2" not in repr(q) and repr(q).startswith(
            "PostgresReviewQueue('postgresql://semgrad:***@"
        )


def test_a_password_in_a_url_warns_and_points_to_the_alternatives(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        assert warn_if_password_in_url("postgresql://ana:pw@db/review", source="--db")
    assert "PGPASSWORD" in caplog.text and ".pgpass" in caplog.text and "service" in caplog.text
    assert "pw@" not in caplog.text
    caplog.clear()
    assert not warn_if_password_in_url("postgresql://ana@db/review") and not caplog.text
    assert not warn_if_password_in_url("/tmp/review.db")


def test_wait_hears_a_decision_from_another_connection_without_polling(postgres_url) -> None:
    with PostgresReviewQueue(postgres_url) as q, PostgresReviewQueue(postgres_url) as other:
        i = q.enqueue("q", "a")
        threading.Timer(0.3, lambda: other.approve(i, reviewer="ana")).start()
        start = time.monotonic()
        it = q.wait(i, timeout=30, poll_interval=30)  # one poll would take 30 s: NOTIFY must wake it
        assert it.status is ReviewStatus.APPROVED and time.monotonic() - start < 10


async def test_await_decision_hears_a_decision_without_polling(postgres_url) -> None:
    with PostgresReviewQueue(postgres_url) as q, PostgresReviewQueue(postgres_url) as other:
        i = q.enqueue("q", "a")
        threading.Timer(0.3, lambda: other.reject(i, reviewer="bo")).start()
        start = time.monotonic()
        it = await q.await_decision(i, timeout=30, poll_interval=30)
        assert it.status is ReviewStatus.REJECTED and time.monotonic() - start < 10


def test_on_resolved_fires_once_per_decision_local_or_remote(postgres_url) -> None:
    seen: list[tuple[int, str]] = []
    both = threading.Event()

    def cb(item) -> None:
        seen.append((item.id, item.status.value))
        if len(seen) >= 2:
            both.set()

    with PostgresReviewQueue(postgres_url) as q, PostgresReviewQueue(postgres_url) as other:
        a, b = q.enqueue("q", "a"), q.enqueue("q", "b")
        q.on_resolved(cb, poll_interval=60)
        q.approve(a)
        assert seen == [(a, "approved")]  # local: at once
        other.edit(b, answer="B")
        assert both.wait(10)
        time.sleep(0.5)  # the local decision's own NOTIFY arrives too: it must not fire again
        assert seen == [(a, "approved"), (b, "edited")]


def test_the_listener_reconnects_when_its_connection_drops(postgres_url) -> None:
    got = threading.Event()
    listening = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'semgrad-guard review queue' AND query LIKE 'LISTEN%%'"
    )
    with PostgresReviewQueue(postgres_url) as q, PostgresReviewQueue(postgres_url) as other:
        i = q.enqueue("q", "a")
        q.on_resolved(lambda item: got.set())
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            (old,) = admin.execute(listening).fetchall()
            admin.execute("SELECT pg_terminate_backend(%s)", old)  # a server restart or a proxy timeout
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                pids = admin.execute(listening).fetchall()
                if pids and pids != [old]:
                    break
                time.sleep(0.1)
            else:
                pytest.fail("the listener did not reconnect")
        other.approve(i)
        assert got.wait(10)  # a decision from elsewhere still reaches the callback
