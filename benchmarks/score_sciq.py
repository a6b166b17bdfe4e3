"""Answer the 1,000 SciQ development questions with the embedded model and score every answer.

Writes one JSON object a line to ``benchmarks/results/sciq_smollm2_scored.jsonl``: ``index``,
``query``, ``references``, ``answer``, ``correct`` and every score field. Resumable: lines already
written are kept and their questions skipped, so an interrupted run picks up where it stopped.

Greedy decoding, ``max_new_tokens=32``, the prompt below (see docs/policies.md). The correctness
rule is deliberately simple and documented: an answer is correct when one of the reference answers
appears in it, case-insensitively (substring match after stripping whitespace).

Usage:
    python benchmarks/score_sciq.py [--limit N] [--out PATH] [--data PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "sciq" / "test.jsonl"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "sciq_smollm2_scored.jsonl"

SYSTEM_PROMPT = "You are a helpful assistant. Answer the question briefly, in a few words."
"""The system prompt used for every SciQ question; the user message is the question itself."""


def sciq_messages(query: str) -> list[dict[str, str]]:
    """The chat sent to the model for one SciQ question."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": query}]


def is_correct(answer: str, references: list[str]) -> bool:
    """Correct when a reference answer appears in the answer, case-insensitively."""
    text = answer.lower()
    return any(ref.strip().lower() in text for ref in references if ref.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument("--start", type=int, default=0, help="first question index (to split the work)")
    parser.add_argument("--stop", type=int, default=None, help="stop before this question index")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from semgrad_guard import SCORE_FIELDS, SemGradScorer

    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    if args.limit is not None:
        rows = rows[: args.limit]
    done: set[int] = set()
    if args.out.exists():
        lines = args.out.read_text().splitlines()
        good: list[str] = []
        for line in lines:
            try:
                done.add(int(json.loads(line)["index"]))
                good.append(line)
            except (ValueError, KeyError):  # a line cut by a kill: drop it and redo that question
                break
        if len(good) != len(lines):
            args.out.write_text("".join(g + "\n" for g in good))
    stop = len(rows) if args.stop is None else min(args.stop, len(rows))
    todo = [i for i in range(args.start, stop) if i not in done]
    if not todo:
        print(f"all {len(rows)} questions already scored in {args.out}")
        return 0

    scorer = SemGradScorer.from_pretrained("default")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with (
        args.out.open("a") as fh,
        Progress(TextColumn("SciQ"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as progress,
    ):
        task = progress.add_task("score", total=stop - args.start, completed=stop - args.start - len(todo))
        for i in todo:
            row = rows[i]
            refs = list(row["truthful answer"])
            answer, result = scorer.generate(sciq_messages(row["query"]), max_new_tokens=args.max_new_tokens)
            record = {
                "index": i,
                "query": row["query"],
                "references": refs,
                "answer": answer,
                "correct": is_correct(answer, refs),
                **{name: getattr(result, name) for name in SCORE_FIELDS},
                "answer_tokens": result.answer_tokens,
                "prompt_tokens": result.prompt_tokens,
                "anchor_offset": result.anchor_offset,
                "layers": list(result.layers),
                "model_id": result.model_id,
            }
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            progress.advance(task)
    print(f"scored {len(todo)} answers in {time.perf_counter() - start:.0f} s -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
