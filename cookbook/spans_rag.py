"""RAG with span scores: which sentence of a long answer is shaky, on the embedded model.

    python cookbook/spans_rag.py

A retrieved document, a question, and a four-sentence answer in which one fact contradicts the
document. One scoring pass gives the whole answer's scores and each sentence's (docs/spans.md);
the shipped span calibrator turns each sentence's scores into P(supported), and a span policy marks
the sentences below its band. The text returned is exactly the scored answer, marks added.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from semgrad_guard import SemGradScorer, SpanPolicy

DOCUMENT = (
    "The Sovula Library: It was founded in 1841. It holds 26,000 books. It opens at 9 am on Sundays. "
    "Its founder was Dorran Straka."
)
MESSAGES = [
    {
        "role": "system",
        "content": "Answer the question using only the documents below.\n\nDocuments:\n[1] " + DOCUMENT,
    },
    {"role": "user", "content": "Tell me about the Sovula Library."},
]
# The third sentence contradicts the document (it opens at 9 am).
ANSWER = (
    "The Sovula Library was founded in 1841. It holds 26,000 books. It opens at 6 am on Sundays. "
    "Its founder was Dorran Straka."
)
POLICY = SpanPolicy(flag_below=0.5, flag_format="[? {text}]")  # calibrator: the shipped one


def main(scorer: SemGradScorer | None = None, console: Console | None = None) -> dict[str, Any]:
    scorer = scorer or SemGradScorer.from_pretrained("default")
    console = console or Console()
    result = scorer.score(MESSAGES, ANSWER, spans="sentences")
    policy = POLICY.resolve(scorer.model_id)
    outcome = policy.apply(ANSWER, result)
    table = Table(title="Each sentence of the answer (one scoring pass)")
    for col in ("sentence", "semgrad", "mean_nll", "P(supported)", "action"):
        table.add_column(col, overflow="fold", justify="left" if col == "sentence" else "right")
    for span, d in zip(result.spans or [], outcome.decisions, strict=True):
        table.add_row(
            span.text, f"{span.semgrad:.3g}", f"{span.mean_nll:.2f}", f"{d.confidence:.2f}", d.action
        )
    console.print(table)
    shakiest = min(outcome.decisions, key=lambda d: d.confidence or 0.0)
    console.print(f"shakiest sentence: [bold]{shakiest.text}[/bold] (P(supported) {shakiest.confidence:.2f})")
    console.print(f"answer as delivered: {outcome.text}")
    return {"result": result, "outcome": outcome, "shakiest": shakiest}


if __name__ == "__main__":
    main()
