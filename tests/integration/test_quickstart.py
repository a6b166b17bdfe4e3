"""cookbook/quickstart.py runs on the embedded model and its scores are those of scoring the text."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import pytest
from rich.console import Console

pytestmark = pytest.mark.integration

QUICKSTART = Path(__file__).resolve().parents[2] / "cookbook" / "quickstart.py"


def test_quickstart_answers_and_scores_every_question(default_scorer) -> None:
    ns = runpy.run_path(str(QUICKSTART))
    console = Console(record=True, width=200)
    rows = ns["main"](scorer=default_scorer, console=console)
    assert [r["question"] for r in rows] == ns["QUESTIONS"]
    printed = console.export_text()
    for row in rows:
        r = row["result"]
        assert row["answer"].strip() and 1 <= r.answer_tokens <= 48
        assert all(math.isfinite(v) and v >= 0 for v in r.scores().values())
        assert f"{r.semgrad:.3g}" in printed
    # The table shows generation's scores; they are the scores of the answer text (KV cache reused).
    ended = [row for row in rows if row["result"].answer_tokens < 48]
    assert ended, "no answer ended before max_new_tokens"
    for row in ended:
        again = default_scorer.score(row["question"], row["answer"])
        assert again.semgrad == pytest.approx(row["result"].semgrad, rel=1e-4)
