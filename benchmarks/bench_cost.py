"""Cost per answer of each uncertainty method relative to generating the answer once, in one run.

For each SciQ question (the same seeded random order as `semgrad-guard eval`), interleaved:
  generate              greedy generation of the answer alone (`model.generate`), the unit of cost
  generate+semgrad      `scorer.generate`: answer + all six single-pass scores (KV-cache fast path)
  score(text)           `scorer.score` on the answer text (teacher-forced, suffix fast path)
  reference             full-sequence forward with all hidden states + autograd (tests/reference_semgrad.py)
  sample K              K sampled answers in one batched `model.generate(num_return_sequences=K)`
  cluster               MiniLM embedding + clustering + lexical similarity of the K samples
The sampling baselines cost `generate + sample K + cluster` per answer (they still need the answer).
Writes a Markdown table (and JSON next to it).

    python benchmarks/bench_cost.py --questions 8 --out benchmarks/results/cost_sampling.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
SCIQ = ROOT.parent / "shared" / "data" / "sciq" / "test.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 is fastest on a busy machine)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cost_sampling.md")
    parser.add_argument("--note", default="", help="a line about the machine's state, put in the report")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from reference_semgrad import reference_scores

    from semgrad_guard import SemGradScorer
    from semgrad_guard.eval.baselines import HFSampler, sampling_scores
    from semgrad_guard.eval.correctness import default_embedder
    from semgrad_guard.eval.data import PromptTemplate, load_questions
    from semgrad_guard.eval.runner import random_order

    scorer = SemGradScorer.from_pretrained("default")
    sampler = HFSampler(scorer)
    default_embedder()
    template = PromptTemplate()
    questions = random_order(load_questions(SCIQ), 0)[: args.questions]
    eos = list(scorer.eos_token_ids)

    def gen_only(messages: list[dict[str, str]]) -> int:
        x = scorer.prompt_ids(messages)
        ids = torch.tensor([x])
        with torch.no_grad():
            out = scorer.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=args.max_new_tokens,
                eos_token_id=eos,
                pad_token_id=eos[0],
                temperature=None,
                top_p=None,
                top_k=None,
            )
        return int(out.shape[1] - len(x))

    # warm-up: first calls pay one-off costs
    warm = template.messages("What is water made of?")
    gen_only(warm)
    scorer.generate(warm, max_new_tokens=4)
    sampler.sample(warm, 2, max_new_tokens=4)

    times: dict[str, list[float]] = {
        k: [] for k in ("generate", "generate+semgrad", "score(text)", "reference", "sample", "cluster")
    }
    tokens: dict[str, list[int]] = {"answer": [], "sample": [], "sample_calls": []}
    for q in questions:
        m = template.messages(q.question)
        t0 = time.perf_counter()
        tokens["answer"].append(gen_only(m))
        times["generate"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        answer, _ = scorer.generate(m, max_new_tokens=args.max_new_tokens)
        times["generate+semgrad"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        scorer.score(m, answer)
        times["score(text)"].append(time.perf_counter() - t0)
        x = scorer.prompt_ids(m)
        y = scorer.answer_ids(m, answer, x)
        t0 = time.perf_counter()
        reference_scores(scorer.model, x, y, scorer.profile.anchor_offset, scorer.profile.layers)
        times["reference"].append(time.perf_counter() - t0)
        s = sampler.sample(m, args.samples, max_new_tokens=args.max_new_tokens, seed=0)
        times["sample"].append(s.seconds)
        tokens["sample"].append(s.generated_tokens)
        tokens["sample_calls"].append(s.model_calls)
        t0 = time.perf_counter()
        sampling_scores(s.answers)
        times["cluster"].append(time.perf_counter() - t0)
        print(q.id, {k: round(v[-1], 2) for k, v in times.items()}, flush=True)

    g = statistics.mean(times["generate"])
    mean = {k: statistics.mean(v) for k, v in times.items()}
    ans_tok = statistics.mean(tokens["answer"])
    rows = [
        ("generate the answer (greedy)", mean["generate"], f"{ans_tok:.1f}", f"{ans_tok:.1f}", "0"),
        (
            "semgrad / hybridgrad / exgrad / nll / mean_nll / mean_entropy (generate + score, KV-cache path)",
            mean["generate+semgrad"],
            f"{ans_tok + 1:.1f}",
            f"{ans_tok:.1f}",
            "1",
        ),
        ("  score an existing answer (`scorer.score`, text)", mean["score(text)"], "1", "0", "1"),
        ("  reference implementation (full sequence, all hidden states)", mean["reference"], "1", "0", "1"),
        (
            f"sampling baselines, K={args.samples} (answer + batched sampling + MiniLM clustering)",
            mean["generate"] + mean["sample"] + mean["cluster"],
            f"{ans_tok + statistics.mean(tokens['sample_calls']):.1f}",
            f"{ans_tok + statistics.mean(tokens['sample']):.1f}",
            "0",
        ),
        (
            f"  of which: K={args.samples} samples in one batched call",
            mean["sample"],
            f"{statistics.mean(tokens['sample_calls']):.1f}",
            f"{statistics.mean(tokens['sample']):.1f}",
            "0",
        ),
        ("  of which: clustering + lexical similarity (MiniLM)", mean["cluster"], "-", "0", "0"),
    ]
    lines = [
        "# Cost per answer relative to generating the answer once",
        "",
        f"Embedded model (SmolLM2-135M-Instruct, float32), {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, no GPU, torch threads = {torch.get_num_threads()}; "
        f"{len(questions)} SciQ questions (seeded random order), greedy answers of at most {args.max_new_tokens} "
        f"tokens (mean {ans_tok:.1f}), K={args.samples} samples at temperature 1; all paths interleaved per "
        f"question in one process ({dt.date.today().isoformat()}). Produced by `benchmarks/bench_cost.py`.",
        "",
        "| method | s / answer | × generation | forward passes | generated tokens | backward passes |",
        "|---|---|---|---|---|---|",
    ]
    for name, sec, fwd, gen, bwd in rows:
        lines.append(f"| {name} | {sec:.2f} | {sec / g:.2f} | {fwd} | {gen} | {bwd} |")
    lines += [
        "",
        "Forward passes count model calls: a generation step is one call, and the batched sampling call "
        "counts one call per step for all K sequences together (so its wall time, not its call count, "
        "shows the K-fold work). Scoring an existing answer is one forward + one backward pass over the "
        "suffix after the anchor.",
    ]
    if args.note:
        lines += ["", args.note]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(
        json.dumps({"times": times, "tokens": tokens, "threads": torch.get_num_threads()}, indent=1)
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
