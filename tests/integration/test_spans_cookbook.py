"""cookbook/spans_rag.py on the embedded model: each sentence scored, the shakiest named, the text
delivered exactly the scored answer with the policy's marks."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from rich.console import Console

pytestmark = pytest.mark.integration

COOKBOOK = Path(__file__).resolve().parents[2] / "cookbook" / "spans_rag.py"


def test_spans_cookbook_marks_the_sentences_below_the_band(default_scorer) -> None:
    ns = runpy.run_path(str(COOKBOOK))
    console = Console(record=True, width=200)
    out = ns["main"](scorer=default_scorer, console=console)
    result, outcome = out["result"], out["outcome"]
    answer = ns["ANSWER"]
    assert [s.text for s in result.spans] == [
        "The Sovula Library was founded in 1841.",
        "It holds 26,000 books.",
        "It opens at 6 am on Sundays.",
        "Its founder was Dorran Straka.",
    ]
    # The spans' scores are those of scoring the answer with spans again (same pass, deterministic).
    again = default_scorer.score(ns["MESSAGES"], answer, spans="sentences")
    assert [s.semgrad for s in again.spans] == pytest.approx([s.semgrad for s in result.spans], rel=1e-5)
    flagged = [d for d in outcome.decisions if d.action == "flag"]
    assert all(d.confidence < ns["POLICY"].flag_below for d in flagged)
    expected = answer
    for d in reversed(flagged):
        expected = expected[: d.start] + f"[? {d.text}]" + expected[d.end :]
    assert outcome.text == expected
    assert out["shakiest"].confidence == min(d.confidence for d in outcome.decisions)
    assert out["shakiest"].text in console.export_text()
