"""The review queue suite, run against every backend (SQLite file, PostgreSQL server): items, decisions,
audit, waiting, callbacks, export, concurrency and durability under SIGKILL.

Backend-specific behaviour (file permissions, corrupt files, schema refusal, credentials) is in
test_review_sqlite.py and test_review_postgres.py."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from semgrad_guard import (
    AlreadyDecidedError,
    ConfigurationError,
    ReviewItemNotFoundError,
    ReviewQueue,
    ReviewQueueError,
    ReviewStatus,
    ReviewTimeoutError,
    open_review_queue,
)
from semgrad_guard.testing import score_result

RESULT = score_result()


@pytest.fixture
def q(review_db):
    """A fresh queue on each backend (``review_db`` is a path or a postgresql:// URL)."""
    queue = open_review_queue(review_db)
    yield queue
    queue.close()


def test_item_life_cycle_and_audit_trail(q) -> None:
    assert isinstance(q, ReviewQueue)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Australia?"}]
    i = q.enqueue(chat, "Sydney", result=RESULT, confidence=0.31, rule="unsure", metadata={"run_id": "abc"})
    it = q.get(i)
    assert (it.status, it.answer, it.rule, it.confidence, it.final_answer) == (
        ReviewStatus.PENDING,
        "Sydney",
        "unsure",
        0.31,
        None,
    )
    assert it.messages == chat and it.result == RESULT and it.metadata == {"run_id": "abc"}
    assert it.question == "Capital of Australia?" and not it.resolved
    assert [a.event for a in it.audit] == ["created"]
    it = q.edit(i, answer="Canberra", reviewer="ana", note="wrong city")
    assert (it.status, it.final_answer, it.reviewer, it.note) == (
        ReviewStatus.EDITED,
        "Canberra",
        "ana",
        "wrong city",
    )
    assert it.decided_at is not None and it.resolved
    with pytest.raises(AlreadyDecidedError):  # decisions are final
        q.approve(i, reviewer="bo")
    q.reopen(i, reviewer="bo", note="second look")
    it = q.approve(i, reviewer="bo")
    assert (
        it.status is ReviewStatus.APPROVED and it.final_answer == "Sydney"
    )  # approve keeps the model's answer
    trail = [(a.event, a.actor, a.details.get("from"), a.details.get("to")) for a in it.audit]
    assert trail == [
        ("created", None, None, None),
        ("edited", "ana", "pending", "edited"),
        ("reopened", "bo", "edited", "pending"),
        ("approved", "bo", "pending", "approved"),
    ]
    assert q.get(i).audit[1].details["answer"] == "Canberra"


def test_list_filters_and_orders(q) -> None:
    ids = [q.enqueue("q", f"a{k}") for k in range(5)]
    q.reject(ids[1])
    q.approve(ids[3])
    assert [it.id for it in q.list()] == ids[::-1]
    assert [it.id for it in q.list("pending")] == [ids[4], ids[2], ids[0]]
    assert [it.id for it in q.list(ReviewStatus.REJECTED)] == [ids[1]]
    assert len(q.list(limit=2)) == 2
    assert q.counts() == {"pending": 3, "approved": 1, "rejected": 1, "edited": 0, "cannot_tell": 0}
    assert len(q) == 5
    with pytest.raises(ConfigurationError, match="status must be one of"):
        q.list("done")


def test_unknown_item_is_a_typed_error(q) -> None:
    with pytest.raises(ReviewItemNotFoundError, match="no review item with id 99"):
        q.get(99)
    with pytest.raises(ReviewItemNotFoundError):
        q.approve(99)
    with pytest.raises(KeyError):  # also a KeyError, for callers that catch that
        q.reject(99)


def test_metadata_that_is_not_json_is_stored_as_text(q) -> None:
    i = q.enqueue("q", "a", metadata={"path": Path("/x/y"), "n": 3})
    assert q.get(i).metadata == {"path": "/x/y", "n": 3}


def test_export_jsonl_and_csv(q, tmp_path) -> None:
    a = q.enqueue("Capital of Australia?", "Sydney", result=RESULT, confidence=0.3, rule="unsure")
    b = q.enqueue("2+2?", "4, I think", rule="doubt")
    q.edit(a, answer="Canberra", reviewer="ana")
    lines = [json.loads(line) for line in q.export("jsonl").splitlines()]
    assert [x["id"] for x in lines] == [a, b]
    assert lines[0]["final_answer"] == "Canberra" and lines[0]["result"]["semgrad"] == 1e-3
    assert [e["event"] for e in lines[0]["audit"]] == ["created", "edited"]
    rows = list(csv.DictReader(io.StringIO(q.export("csv"))))
    assert [r["status"] for r in rows] == ["edited", "pending"]
    assert (
        rows[0]["semgrad"] == "0.001"
        and rows[0]["question"] == "Capital of Australia?"
        and rows[1]["semgrad"] == ""
    )
    assert rows[1]["answer"] == "4, I think"  # commas survive quoting
    c = q.enqueue("Capital of Australia?", "Sydney")  # a repeat: decided as a was
    rows = list(csv.DictReader(io.StringIO(q.export("csv"))))
    assert [r["repeat_of"] for r in rows] == ["", "", str(a)] and rows[2]["final_answer"] == "Canberra"
    assert json.loads(q.export("jsonl").splitlines()[2])["repeat_of"] == a == q.get(c).repeat_of
    buf = io.StringIO()
    q.export("jsonl", status="pending", file=buf)
    assert [json.loads(x)["id"] for x in buf.getvalue().splitlines()] == [b]
    with pytest.raises(ConfigurationError, match="format"):
        q.export("xml")  # type: ignore[arg-type]


def test_wait_returns_the_decision_or_times_out(q) -> None:
    i = q.enqueue("q", "a")
    with pytest.raises(ReviewTimeoutError, match="still pending"):
        q.wait(i, timeout=0.05, poll_interval=0.01)
    threading.Timer(0.1, lambda: q.edit(i, answer="b", reviewer="ana")).start()
    it = q.wait(i, timeout=10, poll_interval=0.02)
    assert it.status is ReviewStatus.EDITED and it.final_answer == "b"


async def test_await_decision_does_not_block_the_loop(q) -> None:
    i = q.enqueue("q", "a")
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    t = asyncio.create_task(ticker())
    asyncio.get_running_loop().call_later(0.2, lambda: threading.Thread(target=q.approve, args=(i,)).start())
    it = await q.await_decision(i, timeout=10, poll_interval=0.02)
    t.cancel()
    assert it.status is ReviewStatus.APPROVED and ticks >= 5
    with pytest.raises(ReviewTimeoutError):
        await q.await_decision(q.enqueue("q", "b"), timeout=0.05, poll_interval=0.01)


def test_on_resolved_fires_for_local_and_other_connection_decisions(q, review_db) -> None:
    seen: list[tuple[int, str]] = []
    got = threading.Event()

    def cb(item):
        seen.append((item.id, item.status.value))
        if len(seen) == 2:
            got.set()

    old = q.enqueue("q", "decided before registration")
    q.approve(old)
    a, b = q.enqueue("q", "a"), q.enqueue("q", "b")
    q.on_resolved(cb, poll_interval=0.02)
    q.reject(a)  # local: fires at once
    assert seen == [(a, "rejected")]
    with open_review_queue(review_db) as other:  # another connection (like the CLI in another process)
        other.edit(b, answer="B")
    assert got.wait(5)
    assert seen == [(a, "rejected"), (b, "edited")]


def test_callback_errors_do_not_break_the_queue(q) -> None:
    q.on_resolved(lambda item: 1 / 0, poll_interval=0.05)
    i = q.enqueue("q", "a")
    assert q.approve(i).status is ReviewStatus.APPROVED


_WRITER = r"""
import sys
from semgrad_guard import open_review_queue
path, tag, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
q = open_review_queue(path)
print("ready", flush=True)
if sys.argv[5:] == ["barrier"]:
    sys.stdin.readline()  # start together with the other writer
for k in range(count):
    body = (f"{tag}-{k}|" * (size // 8 + 1))[:size]
    item_id = q.enqueue([{"role": "user", "content": f"question {tag}-{k}"}], body, rule=tag, metadata={"k": k})
    print(item_id, k, flush=True)
q.close()
"""


def _spawn(path: str, tag: str, count: int, size: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), tag, str(count), str(size), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _check_items_whole(spec: str) -> list:
    if not spec.startswith("postgresql://"):
        with sqlite3.connect(spec) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
    with open_review_queue(spec) as q:
        items = q.list()
    for it in items:
        # every item has its one 'created' audit entry: no half-written change
        assert [a.event for a in it.audit] == ["created"]
        tag_k = it.messages[0]["content"].removeprefix("question ")
        assert it.rule == tag_k.split("-")[0] and it.metadata["k"] == int(tag_k.split("-")[1])
        assert set(it.answer.split("|")[:-1]) == {tag_k}  # the whole body, not a prefix of it
    return items


@pytest.mark.slow
def test_sigkill_during_enqueue_loses_no_acknowledged_item_and_leaves_none_half_written(review_db) -> None:
    path = review_db
    acknowledged: set[int] = set()
    for round_no, kill_after in enumerate((5, 17, 40)):
        proc = _spawn(path, f"r{round_no}", 10_000, 200_000)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
        for _ in range(kill_after):
            line = proc.stdout.readline()
            acknowledged.add(int(line.split()[0]))
        os.kill(proc.pid, signal.SIGKILL)  # mid-loop: very likely inside the next enqueue's transaction
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL
        items = _check_items_whole(path)
        ids = {it.id for it in items}
        assert acknowledged <= ids, sorted(acknowledged - ids)
    assert len(acknowledged) == 5 + 17 + 40


@pytest.mark.slow
def test_writer_processes_enqueueing_concurrently_lose_nothing(review_db) -> None:
    path = review_db
    tags = ("a", "b", "c", "d")
    procs = [_spawn(path, tag, 60, 2_000, "barrier") for tag in tags]
    for p in procs:  # both have opened the queue: release them at once
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    acked = [int(line.split()[0]) for out, _ in outs for line in out.splitlines()]
    assert len(acked) == 240 and len(set(acked)) == 240  # no id given out twice
    items = _check_items_whole(path)
    assert {it.id for it in items} == set(acked)
    assert sorted(it.messages[0]["content"] for it in items) == sorted(
        f"question {t}-{k}" for t in tags for k in range(60)
    )


# ---------------------------------------------------------------- decisions are final


def test_decided_item_cannot_be_decided_again(q) -> None:
    i = q.enqueue("Capital of Australia?", "Sydney")
    q.approve(i, reviewer="ana")
    for decide in (
        lambda: q.reject(i, reviewer="bo"),
        lambda: q.edit(i, answer="Canberra", reviewer="bo"),
        lambda: q.approve(i, reviewer="bo"),
    ):
        with pytest.raises(AlreadyDecidedError) as err:
            decide()
        assert isinstance(err.value, ReviewQueueError)
        e = err.value
        assert (e.item_id, e.status, e.reviewer) == (i, "approved", "ana") and e.decided_at
        assert f"review item {i} was already approved by ana at {e.decided_at}" in str(e)
        assert "reopen" in str(e)
    it = q.get(i)
    assert (it.status, it.reviewer, it.final_answer) == (ReviewStatus.APPROVED, "ana", "Sydney")
    assert [a.event for a in it.audit] == ["created", "approved"]


def test_reopen_is_explicit_and_audited(q) -> None:
    i = q.enqueue("Capital of Australia?", "Sydney")
    with pytest.raises(ReviewQueueError, match="pending"):
        q.reopen(i)
    q.edit(i, answer="Canberra", reviewer="ana")
    it = q.reopen(i, reviewer="lead", note="policy changed")
    assert (it.status, it.reviewer, it.final_answer, it.decided_at) == (
        ReviewStatus.PENDING,
        None,
        None,
        None,
    )
    undone = it.audit[-1]
    assert (undone.event, undone.actor, undone.details["note"]) == ("reopened", "lead", "policy changed")
    assert undone.details["undone"]["reviewer"] == "ana"
    assert undone.details["undone"]["final_answer"] == "Canberra"
    assert q.reject(i, reviewer="lead").status is ReviewStatus.REJECTED
    with pytest.raises(ReviewItemNotFoundError):
        q.reopen(999)


def test_a_repeated_answer_is_decided_once(q) -> None:
    """Greedy decoding repeats answers to repeated questions: a person judges each (chat, answer)
    once; repeats waiting with it are decided with it, later repeats are decided on arrival."""
    chat = [{"role": "user", "content": "Capital of Australia?"}]
    first = q.enqueue(chat, "Sydney", result=RESULT, kind="review")
    waiting = q.enqueue(chat, "Sydney", result=RESULT, kind="audit", inclusion_probability=0.1)
    other_answer = q.enqueue(chat, "Canberra")
    other_chat = q.enqueue([{"role": "system", "content": "Be brief."}, *chat], "Sydney")
    assert {q.get(i).status for i in (first, waiting, other_answer, other_chat)} == {ReviewStatus.PENDING}

    released = threading.Event()
    threading.Thread(
        target=lambda: q.wait(waiting, timeout=10, poll_interval=0.02) and released.set()
    ).start()
    q.edit(first, answer="Canberra", reviewer="ana", note="capital, not largest city")
    assert released.wait(10)  # whoever waited on the repeat heard the decision
    took = q.get(waiting)
    assert (took.status, took.final_answer, took.reviewer, took.repeat_of, took.note) == (
        ReviewStatus.EDITED,
        "Canberra",
        "ana",
        first,
        None,
    )
    assert took.kind == "audit" and took.inclusion_probability == 0.1  # its own sampling is kept
    assert (took.audit[-1].event, took.audit[-1].details["repeat_of"]) == ("edited", first)
    assert q.get(first).repeat_of is None  # a person's decision
    # Another answer, or the same answer to another chat, is another judgement.
    assert q.get(other_answer).status is q.get(other_chat).status is ReviewStatus.PENDING
    later = q.get(q.enqueue(chat, "Sydney"))  # after the decision: decided on arrival
    assert (later.status, later.final_answer, later.repeat_of) == (ReviewStatus.EDITED, "Canberra", first)
    with pytest.raises(AlreadyDecidedError):
        q.approve(later.id)

    # Re-opening the person's decision re-opens the repeats that took it; the next one reaches them.
    q.reopen(first, reviewer="lead")
    for i in (waiting, later.id):
        it = q.get(i)
        assert (it.status, it.repeat_of, it.audit[-1].event) == (ReviewStatus.PENDING, None, "reopened")
        assert it.audit[-1].details["with"] == first
    q.reject(first, reviewer="lead")
    assert [q.get(i).status for i in (first, waiting, later.id)] == [ReviewStatus.REJECTED] * 3
    # A repeat of a repeat points at the person's decision, not at the copy.
    assert q.get(q.enqueue(chat, "Sydney")).repeat_of == first


def test_a_repeat_takes_the_latest_judgement_of_its_answer(q) -> None:
    first, second = q.enqueue("Is the sea salty?", "No."), q.enqueue("Is the sea salty?", "No.")
    q.approve(second, reviewer="ana")  # the first, pending with it, is approved with it
    assert q.get(first).repeat_of == second
    q.reopen(first, reviewer="lead", note="ana was wrong")  # judged again on its own, later
    q.reject(first, reviewer="lead")
    third = q.get(q.enqueue("Is the sea salty?", "No."))  # the latest judgement, not the newest item
    assert (third.status, third.repeat_of, third.reviewer) == (ReviewStatus.REJECTED, first, "lead")
    assert q.get(second).status is ReviewStatus.APPROVED  # an earlier decision is not rewritten


def test_repeats_reach_on_resolved_callbacks(q) -> None:
    seen: list[tuple[int, str, int | None]] = []
    q.on_resolved(lambda item: seen.append((item.id, item.status.value, item.repeat_of)), poll_interval=0.02)
    a, b = q.enqueue("q", "a"), q.enqueue("q", "a")
    q.cannot_tell(a, reviewer="ana")  # a decision like any other: repeats take it too
    c = q.enqueue("q", "a")
    deadline = threading.Event()
    for _ in range(250):
        if len(seen) >= 3:
            break
        deadline.wait(0.02)
    assert sorted(seen) == [(a, "cannot_tell", None), (b, "cannot_tell", a), (c, "cannot_tell", a)]


def test_repeats_racing_a_decision_are_all_decided(review_db) -> None:
    """Writers enqueue copies of one answer while a reviewer decides it: each copy is either pending
    when the decision lands (decided with it) or arrives after it (decided on arrival), never left
    pending by a race between the two transactions."""
    with open_review_queue(review_db) as setup:
        first = setup.enqueue("Capital of Peru?", "Lima.")
    go = threading.Barrier(5)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with open_review_queue(review_db) as mine:
                go.wait()
                for _ in range(25):
                    mine.enqueue("Capital of Peru?", "Lima.")
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    with open_review_queue(review_db) as reviewer:
        go.wait()
        reviewer.approve(first, reviewer="ana")
    for t in threads:
        t.join(timeout=60)
    assert not errors
    with open_review_queue(review_db) as check:
        items = check.list()
        assert len(items) == 101 and check.counts()["pending"] == 0
        assert {it.repeat_of for it in items if it.id != first} == {first}


def test_concurrent_reviewers_decide_each_item_exactly_once(review_db) -> None:
    """Six reviewers, each with its own connection, race to decide the same 20 items in one queue."""
    db = review_db
    with open_review_queue(db) as setup:
        ids = [setup.enqueue(f"q{n}?", f"a{n}") for n in range(20)]
    reviewers = [f"r{k}" for k in range(6)]
    barrier = threading.Barrier(len(reviewers))
    wins: dict[str, list[int]] = {r: [] for r in reviewers}
    losses: dict[str, list[AlreadyDecidedError]] = {r: [] for r in reviewers}
    unexpected: list[BaseException] = []

    def review(name: str, k: int) -> None:
        try:
            with open_review_queue(db) as mine:
                barrier.wait()
                for i in ids:
                    try:
                        if k % 3 == 0:
                            mine.approve(i, reviewer=name)
                        elif k % 3 == 1:
                            mine.reject(i, reviewer=name)
                        else:
                            mine.edit(i, answer=f"edit by {name}", reviewer=name)
                        wins[name].append(i)
                    except AlreadyDecidedError as e:
                        losses[name].append(e)
        except BaseException as e:  # surfaced below
            unexpected.append(e)

    threads = [threading.Thread(target=review, args=(r, k)) for k, r in enumerate(reviewers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not unexpected
    won = sorted(i for r in reviewers for i in wins[r])
    assert won == ids  # every item decided exactly once
    assert sum(len(v) for v in losses.values()) == len(ids) * (len(reviewers) - 1)
    with open_review_queue(db) as check:
        for i in ids:
            it = check.get(i)
            decisions = [a for a in it.audit if a.event != "created"]
            assert len(decisions) == 1 and decisions[0].actor == it.reviewer
            assert i in wins[it.reviewer or ""]
        for r in reviewers:  # each loser was told who really decided
            for e in losses[r]:
                assert e.reviewer == check.get(e.item_id).reviewer != r


def test_concurrent_processes_decide_each_item_once(review_db) -> None:
    db = review_db
    with open_review_queue(db) as setup:
        ids = [setup.enqueue(f"q{n}?", f"a{n}") for n in range(10)]
    script = (
        "import sys\n"
        "from semgrad_guard import open_review_queue, AlreadyDecidedError\n"
        "q = open_review_queue(sys.argv[1]); won = 0\n"
        "for i in map(int, sys.argv[3].split(',')):\n"
        "    try:\n"
        "        q.approve(i, reviewer=sys.argv[2]); won += 1\n"
        "    except AlreadyDecidedError:\n"
        "        pass\n"
        "print(won)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, db, f"p{k}", ",".join(map(str, ids))],
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(4)
    ]
    total = sum(int(p.communicate(timeout=120)[0].strip()) for p in procs)
    assert total == len(ids)
    with open_review_queue(db) as check:
        assert all(len(check.get(i).audit) == 2 for i in ids)


def test_enqueue_rejects_a_non_string_answer(q) -> None:
    for bad in (None, 42, b"bytes"):
        with pytest.raises(
            ConfigurationError, match=f"answer=...\\) must be a string, got {type(bad).__name__}"
        ):
            q.enqueue("Capital of Australia?", bad)  # type: ignore[arg-type]
    assert len(q) == 0


def test_apply_review_decision_and_the_answer_a_user_gets(q) -> None:
    from semgrad_guard import ConfigurationError, GuardPolicy
    from semgrad_guard.review.queue import apply_review_decision

    policy = GuardPolicy.from_dict({"rules": [{"action": "review"}], "abstain_message": "Sorry."})
    ids = [q.enqueue(f"Capital of France? ({k})", "Paris.") for k in range(3)]
    approved = apply_review_decision(q, ids[0], "approve", reviewer="ana")
    edited = apply_review_decision(q, ids[1], "edit", answer="Paris, France.", reviewer="ana")
    rejected = apply_review_decision(q, ids[2], "reject", reviewer="ana")
    texts = [
        policy.answer_after_review(i.status.value, i.final_answer, i.answer)
        for i in (approved, edited, rejected)
    ]
    assert texts == ["Paris.", "Paris, France.", "Sorry."]
    assert policy.answer_after_review("pending", None, "Paris.") == policy.review.pending_message
    with pytest.raises(ConfigurationError, match="'approve', 'reject', 'edit' or 'cannot_tell'"):
        apply_review_decision(q, q.enqueue("q", "a"), "maybe")
    with pytest.raises(ConfigurationError, match="corrected answer"):
        apply_review_decision(q, q.enqueue("q", "a"), "edit")


def test_the_default_queue_from_the_environment_is_kept_as_given(monkeypatch, tmp_path) -> None:
    import semgrad_guard.review as review

    # One helper names the default queue, a path or a URL (a Path of a URL was "postgresql:/h/db").
    assert [n for n in review.__all__ if n.startswith("default_review")] == ["default_review_db"]
    url = "postgresql://guard@db.internal:5432/reviews?sslmode=require"
    monkeypatch.setenv(review.ENV_DB, url)
    assert review.default_review_db() == url
    assert review.review_db_name() == url
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(review.ENV_DB, "~/queues/review.db")
    (tmp_path / "queues").mkdir()
    assert review.default_review_db() == "~/queues/review.db"
    with open_review_queue() as q:  # a path is expanded where the file is opened
        assert Path(q.path) == tmp_path / "queues" / "review.db"
