"""`semgrad-guard review ...`: list, show, approve, reject, edit, export; --db and the env default; errors."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from semgrad_guard import open_review_queue
from semgrad_guard.cli import main
from semgrad_guard.testing import score_result

RESULT = score_result(semgrad=0.0123)


@pytest.fixture
def db(review_db):
    """Three pending items, in a SQLite file or a PostgreSQL database (the CLI takes either as --db)."""
    path = review_db
    with open_review_queue(path) as q:
        q.enqueue("Capital of Australia?", "Sydney", result=RESULT, confidence=0.31, rule="unsure")
        q.enqueue("Boiling point of water at sea level?", "90 degrees", rule="doubt")
        q.enqueue("Largest planet?", "Jupiter", rule="unsure")
    return path


def test_list_shows_a_table(db, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")  # wide enough for the whole question
    assert main(["review", "list", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "Capital of Australia?" in out and "Sydney" in out and "0.310" in out and "0.0123" in out
    assert "pending: 3" in out
    assert main(["review", "list", "--db", str(db), "--status", "approved"]) == 0
    out = capsys.readouterr().out
    assert "Sydney" not in out and "approved: 0" in out


def test_show_approve_reject_edit_round(db, capsys) -> None:
    assert main(["review", "approve", "1", "--db", str(db), "--reviewer", "ana"]) == 0
    assert "item 1: approved by ana" in capsys.readouterr().out
    assert main(["review", "reject", "2", "--db", str(db), "--reviewer", "bo", "--note", "wrong"]) == 0
    assert (
        main(["review", "edit", "3", "--db", str(db), "--answer", "Jupiter, by far", "--reviewer", "cy"]) == 0
    )
    capsys.readouterr()
    assert main(["review", "show", "3", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "Largest planet?" in out and "Jupiter, by far" in out and "edited" in out and "audit trail" in out
    with open_review_queue(db) as q:
        assert [(it.id, it.status.value, it.reviewer) for it in reversed(q.list())] == [
            (1, "approved", "ana"),
            (2, "rejected", "bo"),
            (3, "edited", "cy"),
        ]
        assert q.get(2).note == "wrong"
    assert main(["review", "show", "1", "--db", str(db)]) == 0
    assert "semgrad" in capsys.readouterr().out  # scores table


def test_export_jsonl_csv_and_file(db, capsys, tmp_path) -> None:
    assert main(["review", "export", "--db", str(db)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3] and rows[0]["result"]["semgrad"] == 0.0123
    assert main(["review", "export", "--format", "csv", "--db", str(db)]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["answer"] for r in table] == ["Sydney", "90 degrees", "Jupiter"]
    out = tmp_path / "out.jsonl"
    assert main(["review", "export", "--db", str(db), "--status", "pending", "-o", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 3


def test_env_default_database(db, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SEMGRAD_GUARD_REVIEW_DB", str(db))
    assert main(["review", "approve", "2"]) == 0
    with open_review_queue(db) as q:
        assert q.get(2).status.value == "approved"


def test_errors_exit_2_with_a_clear_message(db, tmp_path, capsys) -> None:
    assert main(["review", "show", "42", "--db", str(db)]) == 2
    assert "no review item with id 42" in capsys.readouterr().err
    missing = tmp_path / "typo.db"
    assert main(["review", "approve", "1", "--db", str(missing)]) == 2
    assert "is empty (nothing was queued yet" in capsys.readouterr().err and not missing.exists()
    junk = tmp_path / "junk.db"
    junk.write_text("not a database")
    assert main(["review", "list", "--db", str(junk)]) == 2
    assert "not an SQLite database" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["review", "edit", "1", "--db", str(db)])  # --answer is required


def test_console_script_entry_point(db) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "semgrad_guard", "review", "list", "--db", str(db)],
        env={**os.environ, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Largest planet?" in proc.stdout


def test_list_before_anything_was_queued_is_an_empty_queue(tmp_path, capsys, monkeypatch) -> None:
    fresh = tmp_path / "never-created.db"
    assert main(["review", "list", "--db", str(fresh)]) == 0
    out = capsys.readouterr().out
    assert "pending: 0" in out and not fresh.exists()  # listing never creates the database
    monkeypatch.setenv("SEMGRAD_GUARD_REVIEW_DB", str(fresh))
    assert main(["review", "list"]) == 0
    assert main(["review", "export"]) == 0
    assert capsys.readouterr().out.endswith("cannot_tell: 0\n")  # export of an empty queue prints nothing
    assert not fresh.exists()


def test_a_directory_as_db_is_a_clear_error(tmp_path, capsys) -> None:
    assert main(["review", "list", "--db", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a directory; give a file path" in err and "Traceback" not in err


def test_second_decision_exits_2_naming_who_decided(db, capsys) -> None:
    assert main(["review", "approve", "1", "--db", str(db), "--reviewer", "ana"]) == 0
    capsys.readouterr()
    assert main(["review", "reject", "1", "--db", str(db), "--reviewer", "bo"]) == 2
    err = capsys.readouterr().err
    assert "review item 1 was already approved by ana at" in err and "reopen" in err
    assert main(["review", "reopen", "1", "--db", str(db), "--reviewer", "bo", "--note", "typo"]) == 0
    assert "re-opened" in capsys.readouterr().out
    assert main(["review", "reject", "1", "--db", str(db), "--reviewer", "bo"]) == 0
    with open_review_queue(db) as q:
        assert [a.event for a in q.get(1).audit] == ["created", "approved", "reopened", "rejected"]


def test_an_empty_postgres_database_is_an_empty_queue_and_is_not_written(postgres_url, capsys) -> None:
    import psycopg

    assert main(["review", "list", "--db", postgres_url]) == 0
    assert "pending: 0" in capsys.readouterr().out
    assert main(["review", "approve", "1", "--db", postgres_url]) == 2
    assert "is empty (nothing was queued yet" in capsys.readouterr().err
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone() == (0,)


def test_a_password_in_the_db_url_warns_and_is_never_printed(postgres_url, capsys, caplog) -> None:
    with open_review_queue(postgres_url) as q:
        q.enqueue("q", "a")
    with_pw = postgres_url.replace(
        "semgrad@", "semgrad:topsecret@"
    )  # the test server trusts; the password is unused
    assert main(["review", "list", "--db", with_pw]) == 0
    out = capsys.readouterr()
    assert "topsecret" not in out.out + out.err + caplog.text
    assert "PGPASSWORD" in caplog.text and "semgrad:***@" in out.out.replace("\n", "")
