"""What only the SQLite queue has: a file (owner-only permissions, WAL) that may be corrupt or foreign."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from semgrad_guard import (
    ReviewQueueCorruptError,
    ReviewQueueError,
    ReviewQueueMissingError,
    SQLiteReviewQueue,
)


def test_database_and_journal_files_are_owner_only(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "sub" / "review.db"
        with SQLiteReviewQueue(path) as q:
            q.enqueue("secret prompt", "answer")
            files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files if p.exists()}
    finally:
        os.umask(old)
    assert modes[path.name] == 0o600
    assert all(m & 0o077 == 0 for m in modes.values()), modes
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_non_sqlite_file_is_refused_and_left_untouched(tmp_path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 100)
    before = _digest(path)
    with pytest.raises(ReviewQueueCorruptError, match="not an SQLite database"):
        SQLiteReviewQueue(path)
    assert _digest(path) == before


def test_foreign_sqlite_database_is_refused_and_left_untouched(tmp_path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.execute("INSERT INTO users VALUES ('ana')")
    conn.close()
    before = _digest(path)
    with pytest.raises(ReviewQueueCorruptError, match="not a semgrad-guard review queue"):
        SQLiteReviewQueue(path)
    assert _digest(path) == before


def test_corrupted_review_database_is_refused_and_left_untouched(tmp_path) -> None:
    path = tmp_path / "review.db"
    with SQLiteReviewQueue(path) as q:
        for k in range(50):
            q.enqueue("q", f"answer {k}" * 50)
    with sqlite3.connect(path) as conn:  # fold the WAL back so the main file holds everything
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    data[100:4096] = os.urandom(4096 - 100)  # smash the schema page after the header
    path.write_bytes(bytes(data))
    before = _digest(path)
    with pytest.raises(ReviewQueueCorruptError, match="left untouched"):
        SQLiteReviewQueue(path)
    assert _digest(path) == before


def test_missing_database_without_create(tmp_path) -> None:
    with pytest.raises(ReviewQueueMissingError, match="does not exist"):
        SQLiteReviewQueue(tmp_path / "nope.db", create=False)
    assert not (tmp_path / "nope.db").exists()


def test_a_directory_as_database_is_a_typed_error(tmp_path) -> None:
    with pytest.raises(ReviewQueueError, match="is a directory; give a file path"):
        SQLiteReviewQueue(tmp_path)
