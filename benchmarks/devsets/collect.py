"""Answer the development sets with the embedded model and record every score the guard could use.

For each question: a greedy answer, its correctness label, and from one teacher-forced pass with the
anchor at offset -8 and gradients from hidden-state index 0 up, the SemGrad of every candidate anchor
(offsets -8..-1) at every layer (``score_ids(window=True)``), plus exgrad in both modes (``logits``
and the research code's ``weight``), nll, mean_nll and mean_entropy. Everything a profile search,
a calibrator or the guard benchmark needs is then computed offline from these files, without the model.

Data sets (development only; see benchmarks/devsets/README.md):

- ``sciq``: ``../shared/data/sciq/test.jsonl``, questions 0..N-1; correct = a reference occurs as a
  whole-word phrase in the answer (the eval harness's ``contains`` rule).
- ``truthfulqa``: ``../shared/data/truthfulqa/test.jsonl``, questions 0..N-1; correct = MiniLM cosine
  with the best reference >= 0.7 (the harness's ``embedding`` rule: references are whole sentences).
- ``rag``: ``benchmarks/devsets/rag_dev.jsonl`` (fictional facts, 3 retrieved documents); correct =
  the fact for answerable questions (``contains``), an explicit "I don't know" for unanswerable ones.

Each row also holds what the single-pass attention baselines need (:mod:`semgrad_guard.eval.single_pass`),
from one more teacher-forced pass with eager attention: every answer token's log-probability, per layer the
previous-token attention of RAUQ's head (the head attending most to the previous token over this answer),
and per layer the head-mean log-diagonal of the attention map (LLM-Check's attention score), over the
whole sequence and over the answer alone. Answers come from the library's own
:meth:`~semgrad_guard.SemGradScorer.generate` (greedy), which also scores them with the model's profile:
``generate_s`` is generation alone, ``score_s`` that profile score, as the product pays them.

Resumable: rows already in the output are skipped (and rows of an earlier run without the attention
fields get them, from their recorded answer ids). Writes ``benchmarks/results/devsets/<name>.jsonl``.

Usage: python benchmarks/devsets/collect.py rag sciq truthfulqa [--limit 200] [--threads 1] [--model NAME]
       [--pool]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# The shared data sits beside the checkout (or beside the folder of worktrees).
SHARED = next(
    (p / "shared" / "data" for p in (ROOT.parent, ROOT.parent.parent) if (p / "shared" / "data").is_dir()),
    ROOT.parent / "shared" / "data",
)
OUT_DIR = ROOT / "benchmarks" / "results" / "devsets"
WINDOW = 8

QA_SYSTEM = "Answer the question with a short phrase, without explanation."
RAG_SYSTEM = (
    "Answer the question using only the documents below, in a few words. If the documents do not "
    "contain the answer, reply exactly: I don't know.\n\nDocuments:\n{documents}"
)
REFUSAL = re.compile(
    r"\b(i don'?t know|i do not know|not (mentioned|stated|specified|provided|given|included|available|in the documents?)"
    r"|no information|(does|do) not (say|mention|contain|specify|provide)|cannot (answer|determine|find)|unknown)\b",
    re.IGNORECASE,
)
MAX_NEW_TOKENS = {"sciq": 16, "truthfulqa": 24, "rag": 24}
ATTENTION_FIELDS = 2
"""Version of the attention fields (2: RAUQ's attentions aligned as LM-Polygraph reads them)."""


def is_refusal(answer: str) -> bool:
    """An answer that says the documents do not hold the answer."""
    return bool(REFUSAL.search(answer))


def rag_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    docs = "\n".join(f"[{i + 1}] {d}" for i, d in enumerate(row["documents"]))
    return [
        {"role": "system", "content": RAG_SYSTEM.format(documents=docs)},
        {"role": "user", "content": row["question"]},
    ]


def qa_messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": QA_SYSTEM}, {"role": "user", "content": question}]


DEV_QUESTIONS = 200
"""SciQ / TruthfulQA questions 0..199 are the development sets; 200 up are the held-out pool."""


def load(name: str, limit: int | None, pool: bool = False) -> list[dict[str, Any]]:
    """Rows with id, question, references, messages (and answerable for rag).

    ``pool``: the held-out pool instead of the development set: SciQ / TruthfulQA questions from
    ``DEV_QUESTIONS`` up to ``limit``, RAG questions of ``rag_pool.jsonl`` (other invented entities).
    """
    if name == "rag":
        source = ROOT / "benchmarks/devsets" / ("rag_pool.jsonl" if pool else "rag_dev.jsonl")
        rows = [json.loads(x) for x in source.read_text().splitlines() if x]
        out = [{**r, "messages": rag_messages(r)} for r in rows]
    else:
        path = SHARED / name / "test.jsonl"
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        out = [
            {
                "id": f"{name}-{i:04d}",
                "question": r["query"],
                "references": list(r["truthful answer"]),
                "messages": qa_messages(r["query"]),
            }
            for i, r in enumerate(rows)
        ]
        if pool:
            out = out[:limit][DEV_QUESTIONS:] if limit else out[DEV_QUESTIONS:]
            return out
    return out[:limit] if limit else out


def label(name: str, row: dict[str, Any], answer: str) -> tuple[bool, dict[str, float]]:
    from semgrad_guard.eval.correctness import contains, rule_values

    if name == "rag":
        if not row["answerable"]:
            return is_refusal(answer), {"refusal": float(is_refusal(answer))}
        ok = contains(answer, row["references"]) and not is_refusal(answer)
        return ok, {"contains": float(contains(answer, row["references"]))}
    values = rule_values(answer, row["references"])
    if name == "sciq":
        return values["contains"] >= 0.5, values
    return values["embedding"] >= 0.7, values


class _Timer:
    """Wraps a function and adds up the seconds spent in it since the last :meth:`take`."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0

    def take(self) -> float:
        out, self.seconds = self.seconds, 0.0
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", choices=["sciq", "truthfulqa", "rag"])
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--exgrad-weight",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also record exgrad in the research code's weight mode (one more backward); default: "
        "only for the default model, whose profile search compared both modes",
    )
    parser.add_argument(
        "--model",
        default="default",
        help="a registry name (semgrad-guard models); rows of a model other than the default go to "
        "benchmarks/results/devsets/<model>/",
    )
    parser.add_argument(
        "--pool",
        action="store_true",
        help="answer the held-out pool (SciQ / TruthfulQA questions 200..limit-1, rag_pool.jsonl) into "
        "<devsets>/pool/: traffic for bench_feedback, never used to fit a shipped file",
    )
    args = parser.parse_args(argv)
    out_dir = OUT_DIR if args.model == "default" else OUT_DIR / args.model
    if args.pool:
        out_dir = out_dir / "pool"
    if args.exgrad_weight is None:
        args.exgrad_weight = args.model == "default"

    import torch

    from semgrad_guard import SemGradScorer
    from semgrad_guard.eval.single_pass import attention_features
    from semgrad_guard.scoring import hf_scorer
    from semgrad_guard.scoring.fastpath import ScoringInput, exgrad_weight, score_ids

    timer = _Timer(hf_scorer.score_ids)
    hf_scorer.score_ids = timer  # generate()'s own profile score, timed apart from generation

    if args.threads:
        torch.set_num_threads(args.threads)
    scorer = SemGradScorer.from_pretrained(args.model)
    layers = list(range(scorer.adapter.num_layers))
    out_dir.mkdir(parents=True, exist_ok=True)
    # Round-robin over the data sets, so that a run stopped early still has some of each.
    todos: dict[str, list[dict[str, Any]]] = {}
    for name in args.datasets:
        rows = load(name, args.limit, args.pool)
        everything = {r["id"]: r for r in load(name, None, args.pool)}
        out = out_dir / f"{name}.jsonl"
        done = set()
        if out.exists():
            good = []
            for line in out.read_text().splitlines():
                try:
                    old = json.loads(line)
                    done.add(old["id"])
                except (ValueError, KeyError):
                    break
                if old.get("attention_fields") != ATTENTION_FIELDS:  # an earlier run's row: (re)add them
                    x = scorer.prompt_ids(everything[old["id"]]["messages"])
                    old.update(attention_features(scorer.model, x, old["answer_ids"]))
                    old["attention_fields"] = ATTENTION_FIELDS
                    line = json.dumps(old)
                good.append(line)
            out.write_text("".join(g + "\n" for g in good))
        todos[name] = [r for r in rows if r["id"] not in done]
    order = [
        (name, todos[name][i])
        for i in range(max(len(t) for t in todos.values()))
        for name in args.datasets
        if i < len(todos[name])
    ]
    start = time.perf_counter()
    handles = {name: (out_dir / f"{name}.jsonl").open("a") for name in args.datasets}
    try:
        for n, (name, row) in enumerate(order, 1):
            fh = handles[name]
            x = scorer.prompt_ids(row["messages"])
            t0 = time.perf_counter()
            answer, result = scorer.generate(row["messages"], max_new_tokens=MAX_NEW_TOKENS[name])
            t1 = time.perf_counter()
            score_s = timer.take()
            y = scorer.answer_ids(row["messages"], answer, prompt_ids=x)
            example = ScoringInput(x, y)
            raw = score_ids(scorer.adapter, [example], anchor_offset=-WINDOW, layers=layers, window=True)[0]
            ex_w = exgrad_weight(scorer.adapter, example) if args.exgrad_weight else None
            t2 = time.perf_counter()  # the window pass costs more than a profile's one score
            attn = attention_features(scorer.model, x, y)
            t3 = time.perf_counter()
            correct, values = label(name, row, answer)
            record = {
                "id": row["id"],
                "dataset": name,
                "question": row["question"],
                "answer": answer,
                "answer_ids": y,
                "stopped": "truncated" not in result.flags,
                "prompt_tokens": len(x),
                "answer_tokens": len(y),
                "correct": bool(correct),
                "labels": values,
                **({"answerable": row["answerable"]} if name == "rag" else {}),
                "nll": raw.nll,
                "mean_nll": raw.mean_nll,
                "mean_entropy": raw.mean_entropy,
                "exgrad_logits": raw.exgrad,
                **({"exgrad_weight": ex_w} if ex_w is not None else {}),
                # window[j][l]: semgrad at offset -WINDOW + j, hidden-state index l
                "window": [[float(f"{v:.6g}") for v in r] for r in raw.window_semgrad],
                **attn,
                "attention_fields": ATTENTION_FIELDS,
                "flags": result.flags,
                "generate_s": round(t1 - t0 - score_s, 3),
                "score_s": round(score_s, 3),
                "window_score_s": round(t2 - t1, 3),
                "attention_s": round(t3 - t2, 3),
            }
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            if n % 10 == 0 or n == len(order):
                rate = n / (time.perf_counter() - start)
                print(f"{n}/{len(order)} answers, {rate:.2f}/s", flush=True)
    finally:
        for fh in handles.values():
            fh.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
