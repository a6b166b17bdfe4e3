"""Batch throughput of scoring: answers per second from ``score_batch`` at several batch sizes.

What a scoring service needs to choose its batch size by (issue 13, item 5): for prompts of about 100
and 1,000 tokens with ~40-token answers, the embedded model scores N answers one at a time and with
``score_batch`` at batch sizes 4 and 16 (``max_batch_size``), interleaved over ``--repeats`` rounds
in one process; answers per second are medians. Inputs are SciQ questions padded with retrieved-
looking context to the target length (the same for every batch size), answers are fixed texts.

    python benchmarks/bench_batch.py [--repeats 3] [--n 16]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "batch_throughput_cpu.md"
FILLER = (
    "The museum opens at nine and closes at five. Tickets cost twelve euros for adults and eight for "
    "students. The planetarium shows a film about the Moon twice a day. "
)
ANSWER = (
    "The answer, according to the documents provided above, is that the museum was founded in 1972 by "
    "an astronomer who wanted to share the night sky with the city."
)


def pairs(scorer, n: int, prompt_tokens: int) -> list:
    out = []
    for i in range(n):
        context = ""
        question = f"Question {i}: when was the museum founded, and by whom?"
        while (
            len(
                scorer.prompt_ids(
                    [{"role": "system", "content": context}, {"role": "user", "content": question}]
                )
            )
            < prompt_tokens
        ):
            context += FILLER
        out.append(([{"role": "system", "content": context}, {"role": "user", "content": question}], ANSWER))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=16, help="answers per measurement")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from semgrad_guard import SemGradScorer

    scorer = SemGradScorer.from_pretrained("default")
    sizes = (1, 4, 16)
    rows = []
    for prompt_tokens in (100, 1000):
        data = pairs(scorer, args.n, prompt_tokens)
        scorer.score_batch(data[:2])  # warm-up
        times: dict[int, list[float]] = {b: [] for b in sizes}
        for _ in range(args.repeats):
            for b in sizes:
                scorer.max_batch_size = b
                t = time.perf_counter()
                scorer.score_batch(data)
                times[b].append(time.perf_counter() - t)
        base = statistics.median(times[1])
        for b in sizes:
            med = statistics.median(times[b])
            rows.append((prompt_tokens, b, args.n / med, base / med))
        print(rows[-3:], flush=True)
    lines = [
        "# Batch throughput of scoring on CPU (embedded SmolLM2-135M-Instruct)",
        "",
        f"`benchmarks/bench_batch.py`: {args.n} answers of {len(scorer.tokenizer(ANSWER)['input_ids'])} tokens scored "
        f"with `score_batch` at `max_batch_size` 1, 4 and 16, {args.repeats} interleaved rounds, medians. "
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}; "
        f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='minutes')}.",
        "",
        "| prompt tokens | batch size | answers / s | speed-up vs one at a time |",
        "|---|---|---|---|",
        *[f"| ~{p} | {b} | {rate:.2f} | {speed:.2f}x |" for p, b, rate, speed in rows],
        "",
        "Batches align anchors by left-padding the prefixes (`fastpath.score_ids`): the no-gradient prefix "
        "pass and the gradient pass over the suffix each run once per batch.",
        "",
    ]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
