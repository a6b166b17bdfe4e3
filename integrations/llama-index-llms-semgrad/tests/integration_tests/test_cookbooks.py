"""Both LlamaIndex cookbooks run end to end on the embedded model (via runpy, sharing the session's model)."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

COOKBOOK = Path(__file__).resolve().parents[4] / "cookbook"
DATA_FILES = {p.name for p in (COOKBOOK / "llamaindex_data").glob("*.md")}


def test_rag_gating_cookbook(scorer: Any, tmp_path: Path) -> None:
    ns = runpy.run_path(str(COOKBOOK / "llamaindex_rag_gating.py"))
    rows = ns["main"](scorer=scorer, review_db=tmp_path / "review.db")
    policy = ns["POLICY"]
    assert [r["question"] for r in rows] == ns["IN_SCOPE"] + ns["OUT_OF_SCOPE"]
    for row in rows:
        assert row["action"] in {"accept", "review", "abstain"}, row
        assert row["semgrad"] is not None and row["semgrad"] > 0
        assert row["confidence"] is not None  # the bands are over the shipped calibrator's confidence
        assert 1 <= row["attempts"] <= policy.retry.max_attempts
        # Each retry doubled similarity_top_k (widen_retrieval).
        assert row["top_k"] == [2 * 2**i for i in range(row["attempts"])]
        assert row["sources"] and set(row["sources"]) <= DATA_FILES
        if row["action"] == "abstain":
            assert row["answer"] == policy.abstain_message
            assert row["source_status"] == ["abstained"]
        elif row["action"] == "review":
            assert row["review_id"] is not None and row["source_status"] == ["pending_review"]
            assert row["answer"] != row["original_answer"]  # the pending message, not the unreviewed answer
        else:
            assert row["source_status"] == [""] and row["answer"].strip()
    # No answer to a question the documents cannot answer is accepted.
    assert all(r["action"] != "accept" for r in rows if r["scope"] == "out of scope"), rows


def test_review_workflow_cookbook(scorer: Any, tmp_path: Path) -> None:
    ns = runpy.run_path(str(COOKBOOK / "llamaindex_review_workflow.py"))
    rows = ns["main"](scorer=scorer, review_db=tmp_path / "review.db")
    questions = ns["QUESTIONS"]
    assert [r["question"] for r in rows] == list(questions)
    assert any(r["reviewed"] for r in rows), "the strict demo bar should send at least one answer to a person"
    for row in rows:
        fact, correct = questions[row["question"]]
        if not row["reviewed"]:
            assert row["final_answer"] == row["model_answer"]
            continue
        assert row["audit"][0] == "created" and len(row["audit"]) >= 2
        if fact.lower() in (row["model_answer"] or "").lower():
            assert row["review_status"] == "approved" and row["final_answer"] == row["model_answer"]
        else:
            assert row["review_status"] == "edited" and row["final_answer"] == correct
