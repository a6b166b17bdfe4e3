"""Quickstart: the embedded default model answers a few questions; SemGrad scores every answer.

    python cookbook/quickstart.py

Higher scores mean less certain. One forward and one backward pass per answer, no sampling.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from semgrad_guard import SemGradScorer

QUESTIONS = [
    "What is the capital of France?",
    "What gas do plants absorb from the air for photosynthesis?",
    "How many legs does a spider have?",
    "Who was the 14th person to walk on the Moon's far side?",
    "What is the melting point of the metal zirconium hafnide in kelvin?",
]


def main(scorer: SemGradScorer | None = None, console: Console | None = None) -> list[dict[str, Any]]:
    scorer = scorer or SemGradScorer.from_pretrained("default")
    console = console or Console()
    console.print(f"[bold]{scorer!r}[/bold]")
    table = Table(title="Answers of SmolLM2-135M-Instruct, scored with SemGrad (higher = less certain)")
    for col in ("question", "answer", "semgrad", "hybridgrad", "mean_nll", "tokens"):
        table.add_column(
            col, overflow="fold", justify="right" if col not in ("question", "answer") else "left"
        )
    rows = []
    with console.status("answering...") as status:
        for i, q in enumerate(QUESTIONS, 1):
            status.update(f"question {i}/{len(QUESTIONS)}: {q}")
            answer, r = scorer.generate(q, max_new_tokens=48)
            rows.append({"question": q, "answer": answer, "result": r})
            table.add_row(
                q,
                answer,
                f"{r.semgrad:.3g}",
                f"{r.hybridgrad:.3g}",
                f"{r.mean_nll:.2f}",
                str(r.answer_tokens),
            )
    console.print(table)
    return rows


if __name__ == "__main__":
    main()
