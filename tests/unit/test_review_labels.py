"""Review decisions as labels: cannot_tell, audit items and inclusion probabilities, the judging versions,
the version-1 -> 2 migration, ``labelled()``, ``review cannot-tell`` and ``review export --labels``."""

from __future__ import annotations

import json
import sqlite3

import pytest

from semgrad_guard import (
    AlreadyDecidedError,
    ConfigurationError,
    GuardPolicy,
    ReviewStatus,
    ScoreResult,
    SQLiteReviewQueue,
)
from semgrad_guard.cli import main
from semgrad_guard.review import label_counts, labelled
from semgrad_guard.review.queue import APPLICATION_ID, SCHEMA_VERSION, apply_review_decision
from semgrad_guard.testing import score_result


def result(semgrad: float = 1e-3) -> ScoreResult:
    return score_result(semgrad=semgrad)


@pytest.fixture
def q(tmp_path):
    queue = SQLiteReviewQueue(tmp_path / "review.db")
    yield queue
    queue.close()


def test_cannot_tell_is_final_releases_nothing_and_is_not_a_label(q) -> None:
    i = q.enqueue("Who wrote it?", "Ana.", result=result())
    it = q.cannot_tell(i, reviewer="bo", note="no source")
    assert (it.status, it.final_answer, it.reviewer, it.resolved) == (
        ReviewStatus.CANNOT_TELL,
        None,
        "bo",
        True,
    )
    assert it.audit[-1].event == "cannot_tell"
    with pytest.raises(AlreadyDecidedError, match="cannot_tell"):
        q.approve(i)
    policy = GuardPolicy.from_dict({"rules": [{"action": "review"}], "abstain_message": "Sorry."})
    assert policy.answer_after_review("cannot_tell", None, "Ana.") == "Sorry."
    assert labelled(q) == []
    counts = label_counts(q)
    assert (counts.labelled, counts.cannot_tell) == (0, 1)
    assert q.counts()["cannot_tell"] == 1
    j = q.enqueue("q", "a")
    assert apply_review_decision(q, j, "cannot_tell").status is ReviewStatus.CANNOT_TELL


def test_labels_weights_versions_and_who_decided(q) -> None:
    a = q.enqueue("q1", "right", result=result(), calibrator_version="cal1", policy_version="pol1")
    b = q.enqueue("q2", "wrong", result=result(), kind="audit", inclusion_probability=0.05)
    c = q.enqueue("q3", "Sydney", result=result())
    d = q.enqueue("q4", "unscored")  # scoring failed: no scores to learn from
    e = q.enqueue("q5", "pending", result=result())
    q.approve(a, reviewer="ana")
    q.reject(b, reviewer="bo")
    q.edit(c, answer="Canberra", reviewer="cy")
    q.approve(d)
    labels = labelled(q)
    assert [lab.item_id for lab in labels] == [a, b, c]
    assert [lab.correct for lab in labels] == [True, False, False]
    assert [lab.weight for lab in labels] == pytest.approx([1.0, 20.0, 1.0])
    assert [lab.kind for lab in labels] == ["review", "audit", "review"]
    assert (labels[0].calibrator_version, labels[0].policy_version, labels[0].reviewer) == (
        "cal1",
        "pol1",
        "ana",
    )
    assert labels[2].correct_answer == "Canberra" and labels[0].correct_answer is None
    got = q.get(b)
    assert (got.kind, got.inclusion_probability) == ("audit", 0.05)
    assert got.audit[0].details == {"rule": None, "kind": "audit", "inclusion_probability": 0.05}
    counts = label_counts(q)
    assert (counts.labelled, counts.audit, counts.unscored, counts.pending) == (3, 1, 1, 1)
    assert e not in {lab.item_id for lab in labels}


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, True, "0.5"])
def test_inclusion_probability_must_be_a_probability(q, p) -> None:
    with pytest.raises(ConfigurationError, match=r"inclusion_probability.*\(0, 1\]"):
        q.enqueue("q", "a", inclusion_probability=p)
    assert len(q) == 0


def test_unknown_kind_is_refused(q) -> None:
    with pytest.raises(ConfigurationError, match="'review' or 'audit'"):
        q.enqueue("q", "a", kind="sample")


_V1_SCHEMA = """
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


def _v1_database(path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(_V1_SCHEMA)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    msgs = json.dumps([{"role": "user", "content": "Capital?"}])
    conn.execute(
        "INSERT INTO items (created_at, messages, answer, result, status, reviewer, decided_at, final_answer) "
        "VALUES ('2026-01-01T00:00:00Z', ?, 'Paris', ?, 'approved', 'ana', '2026-01-02T00:00:00Z', 'Paris')",
        (msgs, result().model_dump_json()),
    )
    conn.execute(
        "INSERT INTO items (created_at, messages, answer) VALUES ('2026-01-03T00:00:00Z', ?, 'Lyon')", (msgs,)
    )
    conn.execute("INSERT INTO audit (item_id, at, event) VALUES (1, '2026-01-01T00:00:00Z', 'created')")
    conn.commit()
    conn.close()


def test_a_version_1_database_is_migrated_in_place_and_keeps_everything(tmp_path) -> None:
    path = tmp_path / "old.db"
    _v1_database(path)
    with SQLiteReviewQueue(path) as q:
        old = q.get(1)
        assert (old.status, old.reviewer, old.final_answer, old.kind, old.inclusion_probability) == (
            ReviewStatus.APPROVED,
            "ana",
            "Paris",
            "review",
            1.0,
        )
        assert old.audit[0].event == "created"
        assert [lab.item_id for lab in labelled(q)] == [1]
        # The widened CHECK constraint: cannot_tell is now a status the old file can hold.
        assert q.cannot_tell(2).status is ReviewStatus.CANNOT_TELL
        new = q.enqueue("q", "a", kind="audit", inclusion_probability=0.1)
        assert q.get(new).kind == "audit"
        # The old items were keyed: a repeat of the approved one takes its decision.
        again = q.get(q.enqueue([{"role": "user", "content": "Capital?"}], "Paris"))
        assert (again.status, again.repeat_of, again.reviewer) == (ReviewStatus.APPROVED, 1, "ana")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()
    with SQLiteReviewQueue(path) as q:  # a second open finds it current and changes nothing
        assert len(q) == 4


def test_a_version_2_database_gets_repeat_keys_in_place(tmp_path) -> None:
    path = tmp_path / "v2.db"
    with SQLiteReviewQueue(path) as q:
        decided = q.enqueue("Capital?", "Paris", result=result())
        q.reject(decided, reviewer="ana")
        twin = q.enqueue("Capital?", "Paris", result=result())  # decided on arrival under version 3
    conn = sqlite3.connect(path)  # what version 2 wrote: no key, no repeat_of, both decided by hand
    conn.execute("DROP INDEX items_answer_key")
    conn.execute("ALTER TABLE items DROP COLUMN answer_key")
    conn.execute("ALTER TABLE items DROP COLUMN repeat_of")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with SQLiteReviewQueue(path) as q:
        assert q.get(twin).repeat_of is None  # earlier decisions stay as they were
        later = q.get(q.enqueue("Capital?", "Paris", result=result()))
        assert (later.status, later.repeat_of) == (ReviewStatus.REJECTED, twin)
        assert [lab.item_id for lab in labelled(q)] == [decided, twin, later.id]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    conn.close()


def test_cli_cannot_tell_and_export_labels_feed_calibrate(tmp_path, capsys) -> None:
    db = tmp_path / "review.db"
    with SQLiteReviewQueue(db) as q:
        for k in range(4):
            q.enqueue(
                f"q{k}",
                "a",
                result=result(10.0 ** -(k + 1)),
                kind="audit" if k else "review",
                inclusion_probability=0.5 if k else 1.0,
            )
    assert main(["review", "cannot-tell", "1", "--db", str(db), "--reviewer", "ana"]) == 0
    assert "cannot_tell" in capsys.readouterr().out
    assert main(["review", "approve", "2", "--db", str(db)]) == 0
    assert main(["review", "reject", "3", "--db", str(db)]) == 0
    assert main(["review", "list", "--db", str(db), "--status", "cannot_tell"]) == 0
    capsys.readouterr()
    out = tmp_path / "labels.jsonl"
    assert main(["review", "export", "--labels", "--db", str(db), "-o", str(out)]) == 0
    assert "2 labels (2 audit), 1 cannot tell" in capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["item_id"], r["correct"], r["weight"]) for r in rows] == [(2, True, 2.0), (3, False, 2.0)]
    assert rows[0]["semgrad"] == pytest.approx(1e-2) and rows[0]["result"]["model_id"] == "m"
    assert main(["review", "export", "--labels", "--format", "csv", "--db", str(db)]) == 2
    assert "JSONL only" in capsys.readouterr().err


# -- the Guard: audit sampling never changes the answer; items and results record what judged them ---------
def _guard(tmp_path, rate: float | None, seed: int = 0, name: str = "review"):
    from semgrad_guard import Calibrator, Guard, MockScorer

    scorer = MockScorer(lambda m, a: 0.1 if a.startswith("right") else 0.9)
    cal = Calibrator.fit(
        [scorer.score("q", a) for a in ["right", "wrong"] * 10],
        [True, False] * 10,
        method="isotonic",
        features=["semgrad"],
    )
    spec: dict = {
        "rules": [
            {"name": "sure", "min": 0.8, "action": "accept"},
            {"name": "lost", "max": 0.2, "action": "abstain"},
            {"name": "unsure", "action": "review"},
        ]
    }
    if rate is not None:
        spec["audit"] = {"rate": rate, "seed": seed}
    queue = SQLiteReviewQueue(tmp_path / f"{name}-{rate}.db")
    return Guard(GuardPolicy.from_dict(spec), scorer=scorer, calibrator=cal, review_queue=queue), queue, cal


def test_audit_copies_a_seeded_share_and_never_changes_what_the_user_gets(tmp_path) -> None:
    answers = [f"right {k}" if k % 3 else f"wrong {k}" for k in range(200)]
    plain, _, _ = _guard(tmp_path, None)
    audited, queue, cal = _guard(tmp_path, 0.25)
    base = [plain.check("q", a) for a in answers]
    got = [audited.check("q", a) for a in answers]
    assert [(r.action, r.answer, r.rule) for r in got] == [(r.action, r.answer, r.rule) for r in base]
    items = queue.list()
    assert all(it.kind == "audit" and it.inclusion_probability == 0.25 for it in items)
    assert {r.audit_id for r in got if r.audit_id is not None} == {it.id for it in items}
    assert 30 <= len(items) <= 70  # 200 x 0.25, seeded
    assert {it.metadata["served"] for it in items} == {"accept", "abstain"}
    assert all(it.calibrator_version == cal.fingerprint for it in items)
    assert all(it.policy_version == audited.policy.fingerprint for it in items)
    again, queue2, _ = _guard(tmp_path, 0.25, name="again")
    ids = [again.check("q", a).audit_id is not None for a in answers]
    assert ids == [r.audit_id is not None for r in got]  # same seed, same sample
    queue.close()
    queue2.close()


def test_a_failing_audit_write_is_logged_and_the_answer_served(tmp_path, caplog) -> None:
    guard, queue, _ = _guard(tmp_path, 1.0)
    queue.close()  # every write now fails
    r = guard.check("q", "right")
    assert (r.action.value, r.answer, r.audit_id) == ("accept", "right", None)
    assert "audit sample not queued" in caplog.text


def test_results_payloads_and_review_items_record_the_calibrator_version(tmp_path) -> None:
    from semgrad_guard import Calibrator, ScorePayload

    guard, queue, cal = _guard(tmp_path, None)
    r = guard.check("q", "right")
    assert r.calibrator_version == cal.fingerprint
    payload = ScorePayload.of(r.result, r)
    assert ScorePayload.read({"semgrad": payload.to_json()}).calibrator_version == cal.fingerprint
    other = Calibrator.fit(
        [guard.scorer.score("q", a) for a in ["right", "wrong"] * 10], [True, False] * 10, method="platt"
    )
    assert other.fingerprint != cal.fingerprint
    assert guard.set_calibrator(other) is cal
    middle = Calibrator.model_validate({**cal.model_dump(), "params": {"x": [0.1, 0.9], "y": [0.5, 0.5]}})
    guard.set_calibrator(middle)
    rv = guard.check("q", "right")
    assert rv.action.value == "review"
    item = queue.get(rv.review_id)
    assert (item.calibrator_version, item.policy_version) == (middle.fingerprint, guard.policy.fingerprint)
    assert (
        Calibrator.from_json(cal.model_dump_json()).fingerprint == cal.fingerprint
    )  # stable across save/load
    queue.close()


def test_the_drift_warning_names_the_fix_and_the_labels_already_held(tmp_path, caplog) -> None:
    import numpy as np

    guard, queue, cal = _guard(tmp_path, None)
    for k in range(3):
        queue.approve(queue.enqueue(f"q{k}", "a", result=result(), kind="audit", inclusion_probability=0.5))
    assert cal.drift is not None
    cal.drift.update(np.full(200, 0.5))  # nothing like its fitting data (0 or 1)
    assert cal.drift.drifted
    text = caplog.text
    assert f"semgrad-guard calibrate --from-reviews {queue.path} --out calibrator.json" in text
    assert "the queue holds 3 labels" in text and "kill -HUP" in text
    queue.close()


def test_the_drift_advice_names_a_postgres_queue_by_its_url_without_the_password(
    postgres_url, caplog
) -> None:
    """The advice names the queue as `calibrate --from-reviews` opens it; a PostgreSQL URL keeps its
    host and database and masks its password (a placeholder would send the user looking)."""
    import numpy as np

    from semgrad_guard import Calibrator, Guard, MockScorer
    from semgrad_guard.review import open_review_queue
    from semgrad_guard.review.postgres import redact_url

    scorer = MockScorer(lambda m, a: 0.1 if a.startswith("right") else 0.9)
    cal = Calibrator.fit(
        [scorer.score("q", a) for a in ["right", "wrong"] * 10], [True, False] * 10, method="isotonic"
    )
    queue = open_review_queue(postgres_url)
    policy = GuardPolicy.from_dict({"rules": [{"name": "unsure", "action": "review"}]})
    Guard(policy, scorer=scorer, calibrator=cal, review_queue=queue)
    queue.approve(queue.enqueue("q", "a", result=result()))
    assert cal.drift is not None
    cal.drift.update(np.full(200, 0.5))
    assert cal.drift.drifted
    assert queue.location == redact_url(postgres_url)
    assert f"semgrad-guard calibrate --from-reviews {queue.location} --out" in caplog.text
    assert "the queue holds 1 labels" in caplog.text
    queue.close()
