"""cookbook/review_ui_rag_service.py on the embedded model: the review band lands in the queue the
service's own /review/ pages show, and a reviewer clears it there."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from semgrad_guard import SQLiteReviewQueue

COOKBOOK = Path(__file__).resolve().parents[2] / "cookbook" / "review_ui_rag_service.py"


@pytest.mark.integration
@pytest.mark.slow
def test_the_review_band_lands_in_the_queue_and_the_page_clears_it(tmp_path):
    out = runpy.run_path(str(COOKBOOK))["run"](review_dir=str(tmp_path))
    reviewed = [a for a in out["answers"] if a["action"] == "review"]
    assert reviewed, "the policy sent nothing to a person: the demo shows nothing"
    assert sorted(d["id"] for d in out["decided"]) == sorted(int(a["review_id"]) for a in reviewed)
    assert out["decided"][-1]["next"] == "/review/?cleared=1"
    with SQLiteReviewQueue(out["db"], create=False) as q:
        assert q.counts()["pending"] == 0
        for d in out["decided"]:
            it = q.get(d["id"])
            assert it.status.value == {"approve": "approved", "reject": "rejected"}[d["action"]]
            assert it.reviewer == "cookbook reviewer" and it.audit[-1].actor == "cookbook reviewer"
