"""docs/errors.md stays true to itself: a count in its intro matches its tables (it went stale at 37)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def _rows(text: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith(("| Input", "|---"))
    ]


def test_a_count_in_the_intro_matches_the_tables() -> None:
    text = DOC.read_text(encoding="utf-8")
    intro = text.split("\n## ", 1)[0]
    rows = _rows(text)
    assert len(rows) > 30
    for stated in re.findall(r"(\d+) (?:inputs|bad inputs|rows)", intro):
        assert int(stated) == len(rows), f"the intro says {stated} inputs, the tables have {len(rows)}"


def test_every_row_names_its_test() -> None:
    for row in _rows(DOC.read_text(encoding="utf-8")):
        last = row.rstrip().rstrip("|").rsplit("|", 1)[-1].strip()
        assert last, f"a row without a test: {row[:80]}"
