"""cookbook/streaming_modes.py on the embedded model: each mode streams as it says."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

COOKBOOK = Path(__file__).resolve().parents[2] / "cookbook" / "streaming_modes.py"


def test_each_mode_streams_as_documented(default_scorer) -> None:
    printed: list[str] = []
    runs = runpy.run_path(str(COOKBOOK))["main"](scorer=default_scorer, out=printed.append)
    observe, gate, hold = runs["observe"], runs["gate"], runs["hold"]
    # observe: many chunks, the first long before the end; hold: one chunk, at the end.
    assert len(observe["pieces"]) > 3 and observe["pieces"][0][0] < observe["total"] / 2
    assert len(hold["pieces"]) == 1 and hold["pieces"][0][0] == pytest.approx(hold["total"], abs=0.05)
    text = observe["last"].text
    assert hold["last"].text == text  # greedy: the same answer
    assert "".join(p for _, p in observe["pieces"]) == text
    # gate: whole sentences of the same answer; a stop means fewer tokens were generated.
    shown = "".join(p for _, p in gate["pieces"])
    assert text.startswith(shown)
    stopped = gate["last"].stopped
    if stopped is None:
        assert shown == text
    else:
        assert any("[stopped at" in line for line in printed)
        if stopped.generation_stopped:
            assert gate["last"].result.answer_tokens < observe["last"].result.answer_tokens
    assert any(line.startswith("--- gate:") for line in printed)
