"""Every LangChain cookbook script runs (via runpy, as ``__main__``) on the embedded model."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from semgrad_guard.guard.outcomes import GuardResult
from semgrad_guard.guard.policy import GuardPolicy
from semgrad_guard.review.queue import SQLiteReviewQueue

QUESTIONS = [
    ("Who founded the Orbitra Science Museum?", True),
    ("How long does a planetarium show last?", True),
    ("How much does an adult ticket cost?", True),
    ("Who is the current director of the museum?", False),
    ("What is the population of the city?", False),
]  # as in cookbook/langchain_rag_gating.py

pytestmark = pytest.mark.integration

COOKBOOK = Path(__file__).resolve().parents[4] / "cookbook"


def run_main(name: str, monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    path = COOKBOOK / name
    monkeypatch.setattr(sys, "argv", [str(path), *args])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(path), run_name="__main__")
    assert exited.value.code == 0


def test_rag_gating_routes_in_and_out_of_scope_questions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    summary = tmp_path / "rag.jsonl"
    run_main(
        "langchain_rag_gating.py",
        monkeypatch,
        "--review-db",
        str(tmp_path / "r.db"),
        "--summary",
        str(summary),
    )
    results = [GuardResult.model_validate_json(line) for line in summary.read_text().splitlines()]
    assert len(results) == 5
    by_question = dict(zip([q for q, _ in QUESTIONS], results, strict=True))
    # The guard's promise on this demo, with the shipped calibrator and cookbook/policies/with_retry.yaml:
    # the answer the documents support with a confident model is accepted, exactly as scored...
    ticket = by_question["How much does an adult ticket cost?"]
    assert ticket.action.value == "accept" and "12 euros" in ticket.answer
    assert ticket.answer == ticket.best_attempt.answer
    # ...and no answer to a question the documents cannot answer is accepted (the model invents them).
    for q, in_docs in QUESTIONS:
        if not in_docs:
            assert by_question[q].action.value in ("review", "abstain"), (q, by_question[q].action)
    retried = [r for r in results if len(r.attempts) > 1 and r.attempts[0].action.value == "retry"]
    assert retried, [[a.action for a in r.attempts] for r in results]
    for r in results:
        assert r.result is not None and r.result.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert r.confidence is not None  # every decision is over the calibrated confidence
        if r.action.value == "abstain":
            assert r.answer == "I don't know; the documents do not say."
        if r.action.value == "review":
            assert r.review_id is not None and r.review_status == "pending"
    queue = SQLiteReviewQueue(tmp_path / "r.db")
    assert len(queue) == sum(r.action.value == "review" for r in results)


def test_agent_guard_scores_final_answers_after_tool_calls(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    summary = tmp_path / "agent.json"
    run_main(
        "langchain_agent_guard.py",
        monkeypatch,
        "--review-db",
        str(tmp_path / "r.db"),
        "--summary",
        str(summary),
    )
    rows = json.loads(summary.read_text())
    assert len(rows) == 3
    policy = GuardPolicy.from_yaml(COOKBOOK / "policies" / "with_retry.yaml")
    for row in rows:
        assert row["tool_calls"] >= 1  # the tool ran before the answer
        assert row["scores"]["semgrad"] > 0 and row["confidence"] is not None
        if row["attempts"] == 1:  # decided on its first attempt: the band of its confidence
            assert row["action"] == policy.decide(None, row["confidence"]).action.value, row
        else:  # retried, then accepted or (retries exhausted) sent to review
            assert row["action"] in ("accept", "review"), row
        if row["human"] is not None:  # paused with interrupt() and resumed with the person's edit
            assert row["review_status"] == "edited" and row["answer"] == row["human"]["answer"]


def test_abstain_or_escalate_review_flow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    run_main("langchain_abstain_or_escalate.py", monkeypatch, "--review-db", str(db))
    items = SQLiteReviewQueue(db).list()
    assert items, "the flow escalated nothing"
    assert all(i.status.value != "pending" for i in items)  # every escalation got a human decision
    assert any(a.event == "edited" and a.actor == "desk" for i in items for a in i.audit)
    assert any(i.status.value == "rejected" and i.reviewer == "night-shift" for i in items)
    # The question asked again was decided as the desk had decided it, with no one asked.
    repeated = [a for i in items for a in i.audit if a.event == "edited" and "repeat_of" in a.details]
    assert repeated and all(a.actor == "desk" for a in repeated)


def test_service_rag_decides_the_same_remotely_and_on_the_guard_endpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Two `semgrad-guard serve` subprocesses (generation, guard), started and stopped by the script.
    summary = tmp_path / "service.jsonl"
    run_main(
        "langchain_service_rag.py", monkeypatch, "--review-dir", str(tmp_path), "--summary", str(summary)
    )
    rows = [json.loads(line) for line in summary.read_text().splitlines()]
    assert len(rows) == 6
    policy = GuardPolicy.from_yaml(COOKBOOK / "policies" / "default.yaml")
    remote, guarded = rows[0::2], rows[1::2]
    for r, g in zip(remote, guarded, strict=True):
        assert r["question"] == g["question"]
        # The same weights generate greedily in both pipelines and score the same answer: one score,
        # one confidence, one decision, whether the app scores remotely or the guard endpoint does.
        assert abs(r["semgrad"] - g["semgrad"]) <= 1e-5 * r["semgrad"], (r, g)
        assert r["confidence"] is not None and abs(r["confidence"] - g["confidence"]) <= 1e-5
        assert r["action"] == g["action"] == policy.decide(None, r["confidence"]).action.value
        if g["action"] == "accept":
            assert g["answer"] == r["answer"]
        else:  # abstain and review replace the answer on the guard's endpoint, as the Guard does
            assert g["answer"] != r["answer"]
    queue = SQLiteReviewQueue(tmp_path / "review.db") if (tmp_path / "review.db").exists() else None
    assert (len(queue) if queue else 0) == sum(g["action"] == "review" for g in guarded)
