"""Span scores on the embedded model: what they cost, and whether they find the unsupported sentence.

Three steps (each writes under benchmarks/results/):

  cost     scoring an answer with its sentences' scores (``score(..., spans="sentences")``) against
           scoring it whole, on RAG prompts, answers of 1..8 sentences; medians over --repeats
           interleaved rounds, in CPU seconds of the scoring thread (torch at one thread: the machine
           is shared, and wall time would time the neighbours). Also scoring each sentence on its own
           pass (what span scores replace).
  collect  the span-labelled development set: for each question of benchmarks/devsets/rag_dev.jsonl,
           an answer built from the facts of the asked entity's retrieved document, in random order,
           some of them altered to contradict it (a number changed, or the value of another entity of
           the same kind), scored by teacher forcing with the RAG prompt; each sentence labelled
           supported or not. Writes results/devsets/spans_rag.jsonl (one row per sentence).
  report   sentence-level AUROC (unsupported sentences as positives) of each span score, on the half
           of the entities not used for fitting; the span calibrator fitted on the other half
           (written to semgrad_guard/calibrators/spans/ with --ship); results/spans.md, spans.json and
           spans_auroc.png.

    python benchmarks/bench_spans.py cost --threads 1
    python benchmarks/bench_spans.py collect --threads 1
    python benchmarks/bench_spans.py report --ship
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "devsets"))
RESULTS = ROOT / "benchmarks" / "results"
ROWS = RESULTS / "devsets" / "spans_rag.jsonl"
SHIPPED = ROOT / "semgrad_guard" / "calibrators" / "spans" / "smollm2-135m-instruct.json"
# CPU seconds of this thread: on a shared machine, wall time measures the other users' load.
CLOCK = time.thread_time
SCORES = ("semgrad", "exgrad", "hybridgrad", "nll", "mean_nll", "mean_entropy")


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, torch {__import__('torch').__version__}, "
        f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min)"
    )


def rag_rows() -> list[dict[str, Any]]:
    from collect import rag_messages

    rows = [json.loads(x) for x in (ROOT / "benchmarks/devsets/rag_dev.jsonl").read_text().splitlines() if x]
    return [{**r, "messages": rag_messages(r)} for r in rows]


# -- the constructed answers ---------------------------------------------------------------------------
def entity_doc(row: dict[str, Any]) -> tuple[str, list[str]] | None:
    """The asked entity's document (its name, its fact sentences), if it was retrieved."""
    for doc in row["documents"]:
        name, _, body = doc.partition(": ")
        if name in row["question"]:
            return name, entity_doc_all(doc)
    return None


def _prefix(sentence: str) -> str:
    return " ".join(sentence.split()[:3])


def contradict(sentence: str, corpus: list[str], rng: random.Random) -> str | None:
    """The sentence with its fact changed: a number moved, else another entity's value of the attribute."""
    numbers = re.findall(r"\d+", sentence)
    if numbers:
        n = numbers[0]
        value = int(n)
        for _ in range(20):
            # A year moves by years, a count by a share of itself.
            step = (
                rng.randint(3, 60)
                if 1000 <= value <= 2100
                else rng.randint(max(1, value // 10), max(2, value // 3))
            )
            other = value + rng.choice([-1, 1]) * step
            if other > 0 and str(other) != n and len(str(other)) == len(n):
                return sentence.replace(n, str(other), 1)
        return None
    same = [s for s in corpus if _prefix(s) == _prefix(sentence) and s != sentence]
    return rng.choice(same) if same else None


def constructed(rows: list[dict[str, Any]], seed: int = 0, variants: int = 2) -> list[dict[str, Any]]:
    """``variants`` answers per question whose entity's document was retrieved: its facts in random
    order, one or two of them contradicted."""
    rng = random.Random(seed)
    corpus = sorted({s for r in rows for d in r["documents"] for s in entity_doc_all(d)})
    out = []
    for row in [r for r in rows for _ in range(variants)]:
        found = entity_doc(row)
        if found is None:
            continue
        name, facts = found
        facts = facts[:]
        rng.shuffle(facts)
        k = rng.choice([1, 1, 2]) if len(facts) > 2 else 1
        wrong = set(rng.sample(range(len(facts)), k))
        sentences, labels = [], []
        for i, fact in enumerate(facts):
            text = contradict(fact, corpus, rng) if i in wrong else fact
            if text is None:
                text, ok = fact, True
            else:
                ok = i not in wrong
            if i == 0:  # the answer names its subject once
                text = (
                    re.sub(r"^It\b", name, text)
                    if text.startswith("It ")
                    else re.sub(r"^Its\b", name + "'s", text)
                )
            sentences.append(text)
            labels.append(ok)
        out.append(
            {
                "id": f"{row['id']}/{sum(o['entity'] == name for o in out)}",
                "entity": name,
                "messages": [*row["messages"][:-1], {"role": "user", "content": f"Tell me about {name}."}],
                "answer": " ".join(sentences),
                "sentences": sentences,
                "supported": labels,
            }
        )
    return out


def entity_doc_all(doc: str) -> list[str]:
    _, _, body = doc.partition(": ")
    return [s.strip().rstrip(".") + "." for s in body.split(". ") if s.strip(" .")]


# -- steps -------------------------------------------------------------------------------------------------
def cmd_cost(args: argparse.Namespace) -> None:
    import torch

    from semgrad_guard import SemGradScorer

    torch.set_num_threads(args.threads)
    scorer = SemGradScorer.from_pretrained("default")
    rows = rag_rows()
    facts = [s for r in rows for d in r["documents"] for s in entity_doc_all(d)]
    table = []
    for n in args.sentences:
        cases = []
        for i in range(args.cases):
            row = rows[i]
            answer = " ".join(facts[(7 * i + j) % len(facts)] for j in range(n))
            cases.append((row["messages"], answer))
        whole, spans, separate = [], [], []
        for _ in range(args.repeats):
            for messages, answer in cases:
                t = CLOCK()
                scorer.score(messages, answer)
                whole.append(CLOCK() - t)
                t = CLOCK()
                r = scorer.score(messages, answer, spans="sentences")
                spans.append(CLOCK() - t)
                assert r.spans is not None and len(r.spans) == n, (answer, r.spans)
                if args.separate:
                    # Each sentence on its own pass: the answer so far as context, the sentence scored.
                    t = CLOCK()
                    for s in r.spans:
                        scorer.score_token_ids(
                            [scorer_input(scorer, messages, answer)],
                            spans=[[(s.token_start, s.token_end)]],
                        )
                    separate.append(CLOCK() - t)
        tokens = statistics.median(scorer.score(m, a).answer_tokens for m, a in cases)
        prompt = statistics.median(scorer.score(m, a).prompt_tokens for m, a in cases)
        row = {
            "sentences": n,
            "answer_tokens": tokens,
            "prompt_tokens": prompt,
            "whole_s": statistics.median(whole),
            "spans_s": statistics.median(spans),
            "ratio": statistics.median(spans) / statistics.median(whole),
        }
        if separate:
            row["separate_s"] = statistics.median(separate)
        table.append(row)
        print(json.dumps(row), flush=True)
    out = {
        "machine": machine(),
        "threads": args.threads,
        "repeats": args.repeats,
        "cases": args.cases,
        "batched_backward": scorer.adapter.batched_grads,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "rows": table,
    }
    (RESULTS / "spans_cost.json").write_text(json.dumps(out, indent=1) + "\n")


def scorer_input(scorer: Any, messages: Any, answer: str) -> Any:
    from semgrad_guard.scoring.fastpath import ScoringInput

    return ScoringInput(scorer.prompt_ids(messages), scorer.answer_ids(messages, answer))


def cmd_collect(args: argparse.Namespace) -> None:
    import torch

    from semgrad_guard import SemGradScorer

    torch.set_num_threads(args.threads)
    scorer = SemGradScorer.from_pretrained("default")
    answers = constructed(rag_rows(), seed=args.seed)[: args.limit]
    ROWS.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with ROWS.open("w") as f:
        for a in answers:
            r = scorer.score(a["messages"], a["answer"], spans="sentences")
            assert r.spans is not None
            texts = [s.text for s in r.spans]
            if texts != a["sentences"]:
                raise SystemExit(
                    f"{a['id']}: the splitter gave {texts}, the answer was built of {a['sentences']}"
                )
            for i, (s, ok) in enumerate(zip(r.spans, a["supported"], strict=True)):
                row = {
                    "id": a["id"],
                    "entity": a["entity"],
                    "sentence": i,
                    "of": len(r.spans),
                    "text": s.text,
                    "supported": ok,
                    "tokens": s.tokens,
                    **s.scores(),
                    "answer": {k: getattr(r, k) for k in SCORES},
                    "model_id": r.model_id,
                    "anchor_offset": r.anchor_offset,
                    "layers": r.layers,
                }
                f.write(json.dumps(row) + "\n")
    meta = {
        "answers": len(answers),
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(),
        "threads": args.threads,
        "seed": args.seed,
    }
    (RESULTS / "devsets" / "spans_rag.meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta))


def _half(entity: str) -> int:
    return int(hashlib.sha256(entity.encode()).hexdigest(), 16) % 2


def cmd_report(args: argparse.Namespace) -> None:
    import numpy as np

    from semgrad_guard import Calibrator, ScoreResult
    from semgrad_guard.eval.metrics import auroc

    rows = [json.loads(x) for x in ROWS.read_text().splitlines() if x]
    fit = [r for r in rows if _half(r["entity"]) == 0]
    held = [r for r in rows if _half(r["entity"]) == 1]

    def as_result(r: dict[str, Any]) -> ScoreResult:
        return ScoreResult(
            **{k: r[k] for k in SCORES},
            answer_tokens=r["tokens"],
            anchor_offset=r["anchor_offset"],
            layers=r["layers"],
            model_id=r["model_id"],
        )

    def aurocs(part: list[dict[str, Any]]) -> dict[str, float]:
        wrong = [not r["supported"] for r in part]
        out = {k: auroc([r[k] for r in part], wrong) for k in SCORES}
        out["answer mean_entropy"] = auroc([r["answer"]["mean_entropy"] for r in part], wrong)
        return out

    cal = Calibrator.fit(
        [as_result(r) for r in fit],
        [r["supported"] for r in fit],
        data=f"benchmarks/results/devsets/spans_rag.jsonl, entities of half 0 ({len(fit)} sentences)",
    )
    conf = cal.predict([as_result(r) for r in held])
    held_auroc = aurocs(held)
    held_auroc["span calibrator"] = auroc(list(-conf), [not r["supported"] for r in held])
    out = {
        "fit": {"sentences": len(fit), "unsupported": sum(not r["supported"] for r in fit)},
        "held_out": {"sentences": len(held), "unsupported": sum(not r["supported"] for r in held)},
        "auroc_held_out": held_auroc,
        "auroc_fit_half": aurocs(fit),
        "calibrator": {"method": cal.method, "features": cal.features},
        "confidence_held_out": {
            "supported_median": float(
                np.median([c for c, r in zip(conf, held, strict=True) if r["supported"]])
            ),
            "unsupported_median": float(
                np.median([c for c, r in zip(conf, held, strict=True) if not r["supported"]])
            ),
        },
        "collect": json.loads((RESULTS / "devsets" / "spans_rag.meta.json").read_text()),
        "report_machine": machine(),
    }
    cost_file = RESULTS / "spans_cost.json"
    cost = json.loads(cost_file.read_text()) if cost_file.exists() else None
    (RESULTS / "spans.json").write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / "spans.md").write_text(render(out, cost))
    plot(held_auroc)
    if args.ship:
        SHIPPED.parent.mkdir(parents=True, exist_ok=True)
        cal.save(SHIPPED)
    print(json.dumps(out["auroc_held_out"], indent=1))


def render(out: dict[str, Any], cost: dict[str, Any] | None) -> str:
    lines = [
        "# Span scores: cost and sentence-level detection (embedded model, CPU)",
        "",
        "Made by `benchmarks/bench_spans.py` (`cost`, `collect`, `report`); definitions in docs/spans.md.",
        "",
    ]
    if cost is not None:
        lines += [
            "## Cost against whole-answer scoring",
            "",
            f"RAG prompts (3 retrieved documents), answers of n fact sentences; medians of {cost['cases']} "
            f"answers x {cost['repeats']} interleaved rounds, CPU ms of the scoring thread at {cost['threads']} "
            f"torch thread(s). Batched backward: "
            f"{cost['batched_backward']}. Machine: {cost['machine']} ({cost['date']}).",
            "",
            "| sentences | answer tok | prompt tok | whole ms | spans ms | ratio | alone ms |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in cost["rows"]:
            sep = f"{1000 * r['separate_s']:.0f}" if "separate_s" in r else "-"
            lines.append(
                f"| {r['sentences']} | {r['answer_tokens']:.0f} | {r['prompt_tokens']:.0f} | "
                f"{1000 * r['whole_s']:.0f} | {1000 * r['spans_s']:.0f} | {r['ratio']:.2f}x | {sep} |"
            )
        lines += [
            "",
            '"alone": one pass per sentence (the span\'s loss on its own backward), what the batched',
            "backward replaces.",
            "",
        ]
    h, f = out["held_out"], out["fit"]
    a = out["auroc_held_out"]
    lines += [
        "## Which sentence is unsupported",
        "",
        "Constructed answers (the asked entity's facts from its retrieved document, one or two altered",
        f"to contradict it), scored by teacher forcing: {out['collect']['answers']} answers. Entities are",
        "split in two halves by a hash of their name: the span calibrator is fitted on half 0",
        f"({f['sentences']} sentences, {f['unsupported']} unsupported) and every number below is on half 1",
        f"({h['sentences']} sentences, {h['unsupported']} unsupported), which it never saw.",
        "",
        "AUROC for an unsupported sentence (higher score = less supported; 0.5 = chance):",
        "",
        "| span score | AUROC (held-out half) |",
        "|---|---:|",
    ]
    for k in (*SCORES, "answer mean_entropy", "span calibrator"):
        lines.append(f"| {k} | {a[k]:.3f} |")
    c = out["calibrator"]
    conf = out["confidence_held_out"]
    lines += [
        "",
        '"answer mean_entropy" gives every sentence its whole answer\'s score: what a whole-answer',
        f"guard knows about a sentence. The span calibrator ({c['method']}, chosen with its features by",
        "cross-validation on half 0) gives held-out supported sentences a median confidence of",
        f"{conf['supported_median']:.2f} and unsupported ones {conf['unsupported_median']:.2f}. Features:",
        f"{', '.join(c['features'])}.",
        "",
        f"Collection: {out['collect']['seconds']} s, {out['collect']['machine']}.",
        "",
        "Not measured: the model's own multi-sentence answers (the embedded model's RAG answers are a",
        "few words; labelling its longer free answers sentence by sentence needs a judge not built here).",
        "",
        "![AUROC per span score](spans_auroc.png)",
        "",
    ]
    return "\n".join(lines)


def plot(aurocs: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(aurocs)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.barh(names, [aurocs[n] for n in names], color=["#4a7" if "grad" in n else "#888" for n in names])
    ax.axvline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xlim(0.3, 1.0)
    ax.set_xlabel("AUROC, unsupported sentence (held-out entities)")
    fig.tight_layout()
    fig.savefig(RESULTS / "spans_auroc.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cost")
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--repeats", type=int, default=5)
    c.add_argument("--cases", type=int, default=6)
    c.add_argument("--sentences", type=int, nargs="+", default=[1, 3, 5, 8])
    c.add_argument("--separate", action="store_true", help="also time one pass per sentence")
    k = sub.add_parser("collect")
    k.add_argument("--threads", type=int, default=1)
    k.add_argument("--limit", type=int, default=200)
    k.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("report")
    r.add_argument("--ship", action="store_true", help="write the span calibrator into the package")
    args = parser.parse_args()
    {"cost": cmd_cost, "collect": cmd_collect, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
