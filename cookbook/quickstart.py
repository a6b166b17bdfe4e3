"""Quickstart: the embedded default model answers a few questions; SemGrad scores every answer.

    python cookbook/quickstart.py

Higher scores mean less certain. One forward and one backward pass per answer, no sampling.
"""

from __future__ import annotations

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


def main() -> None:
    scorer = SemGradScorer.from_pretrained("default")
    console = Console()
    console.print(f"[bold]{scorer!r}[/bold]")
    table = Table(title="Answers of SmolLM2-135M-Instruct, scored with SemGrad (higher = less certain)")
    for col in ("question", "answer", "semgrad", "hybridgrad", "mean_nll", "tokens"):
        table.add_column(
            col, overflow="fold", justify="right" if col not in ("question", "answer") else "left"
        )
    for q in QUESTIONS:
        answer, r = scorer.generate(q, max_new_tokens=48)
        table.add_row(
            q, answer, f"{r.semgrad:.3g}", f"{r.hybridgrad:.3g}", f"{r.mean_nll:.2f}", str(r.answer_tokens)
        )
    console.print(table)


if __name__ == "__main__":
    main()
