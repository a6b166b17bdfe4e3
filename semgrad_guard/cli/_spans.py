"""The span table ``score --spans`` and ``review show`` print: one row per sentence, 80 columns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..spans import SpanDecision, SpanScore
from ._text import visible


def span_table(spans: Sequence[SpanScore], decisions: Sequence[SpanDecision] | None = None) -> Any:
    """A rich table of the spans' scores (and the span policy's decisions); the text column wraps."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="spans (higher = more uncertain)", expand=False)
    table.add_column("#", justify="right")
    table.add_column("tok", justify="right")
    table.add_column("semgrad", justify="right")
    table.add_column("m_nll", justify="right")
    table.add_column("m_ent", justify="right")
    if decisions is not None:
        table.add_column("conf / action")
    table.add_column("sentence", overflow="fold", ratio=1, min_width=20)
    by_start = {(d.start, d.end): d for d in decisions or []}
    for i, s in enumerate(spans):
        row = [str(i + 1), str(s.tokens), f"{s.semgrad:.3g}", f"{s.mean_nll:.2f}", f"{s.mean_entropy:.2f}"]
        if decisions is not None:
            d = by_start.get((s.start, s.end))
            conf = "-" if d is None or d.confidence is None else f"{d.confidence:.2f}"
            row.append("-" if d is None else f"{conf} {d.action}")
        table.add_row(*row, Text(visible(s.text)))
    return table
