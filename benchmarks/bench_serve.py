"""Load test of the scoring service: throughput and latency of /v1/score at several concurrency levels.

Drives, one after the other in one run, with the embedded model and RAG-sized requests (the RAG
development set's prompts, ~170 tokens: three retrieved documents and a question; the model's own
answers of 20 tokens or more from ``benchmarks/results/devsets/rag.jsonl``):

- ``in-process``: direct ``scorer.score`` calls, one after the other (the baseline), and one
  ``score_batch`` of 8 for reference;
- ``single``: ``semgrad-guard serve`` (one process, micro-batching, ``--threads``) as a subprocess;
- ``ray-1``, ``ray-2``: ``semgrad-guard serve --ray --replicas 1|2`` (one torch thread per replica).

Each level sends ``max(--min-requests, 2 x concurrency)`` requests after ``concurrency`` warm-up
requests, from ``concurrency`` asyncio workers (httpx) in this process. Reports requests/s, p50/p95/
p99 latency and errors; writes ``benchmarks/results/serve_cpu.md`` and ``.json`` with the machine, the
date and the load average before and after.

    python benchmarks/bench_serve.py [--levels 1,4,8] [--threads 1] [--only single,ray-1,ray-2]
    python benchmarks/bench_serve.py --faults [...]   (load held, overload, SIGKILLs: bench_serve_faults.py)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from semgrad_guard.serve import ServeProcess

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "devsets"))
from collect import rag_messages  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "serve_cpu"


def workload(min_answer_tokens: int = 20) -> list[tuple[list[dict[str, str]], str]]:
    dev = {
        r["id"]: r
        for r in map(json.loads, (ROOT / "benchmarks/devsets/rag_dev.jsonl").read_text().splitlines())
    }
    rows = [json.loads(x) for x in (ROOT / "benchmarks/results/devsets/rag.jsonl").read_text().splitlines()]
    return [
        (rag_messages(dev[r["id"]]), r["answer"]) for r in rows if r["answer_tokens"] >= min_answer_tokens
    ]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(latencies: list[float], errors: int, wall: float, n: int) -> dict[str, Any]:
    return {
        "requests": n,
        "errors": errors,
        "wall_s": round(wall, 3),
        "rps": round((n - errors) / wall, 3),
        "p50_ms": round(1000 * pct(latencies, 0.5), 1) if latencies else None,
        "p95_ms": round(1000 * pct(latencies, 0.95), 1) if latencies else None,
        "p99_ms": round(1000 * pct(latencies, 0.99), 1) if latencies else None,
    }


async def drive(url: str, pairs: list, concurrency: int, n: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def one(i: int) -> tuple[float, bool]:
            messages, answer = pairs[i % len(pairs)]
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/score", json={"messages": messages, "answer": answer})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            return time.perf_counter() - t0, ok

        async def worker(queue: asyncio.Queue[int], out: list[tuple[float, bool]]) -> None:
            while not queue.empty():
                out.append(await one(queue.get_nowait()))

        async def run(count: int, offset: int) -> tuple[list[tuple[float, bool]], float]:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(count):
                queue.put_nowait(offset + i)
            out: list[tuple[float, bool]] = []
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(queue, out) for _ in range(concurrency)))
            return out, time.perf_counter() - t0

        await run(concurrency, 1000)  # warm-up: every connection and (Ray) every replica once
        out, wall = await run(n, 0)
    return summary([t for t, ok in out if ok], sum(not ok for _, ok in out), wall, n)


def in_process(pairs: list, n: int, threads: int) -> dict[str, Any]:
    import torch

    from semgrad_guard.scoring.hf_scorer import SemGradScorer

    torch.set_num_threads(threads)
    scorer = SemGradScorer.from_pretrained("default")
    scorer.score(*pairs[0])  # warm-up
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        scorer.score(*pairs[i % len(pairs)])
        lat.append(time.perf_counter() - t)
    seq = summary(lat, 0, time.perf_counter() - t0, n)
    t = time.perf_counter()
    scorer.score_batch(pairs[:8])
    batch8 = time.perf_counter() - t
    tok = scorer.tokenizer
    prompt_tokens = [len(scorer.prompt_ids(m)) for m, _ in pairs]
    answer_tokens = [len(tok(a, add_special_tokens=False)["input_ids"]) for _, a in pairs]
    del scorer
    return {
        "matmul_flops": matmul_flops(threads),
        "sequential": seq,
        "score_batch_8": {"wall_s": round(batch8, 3), "rps": round(8 / batch8, 3)},
        "prompt_tokens_mean": round(statistics.mean(prompt_tokens), 1),
        "answer_tokens_mean": round(statistics.mean(answer_tokens), 1),
    }


def matmul_flops(threads: int, n: int = 1024, repeats: int = 10) -> float:
    """Measured float32 matmul rate of this CPU at ``threads`` threads (FLOP/s): the calculation's yardstick."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t)


# The calculation's assumptions (not measured here: no GPU was lent to this run).
GPU_PEAK_FLOPS = 989e12  # H100/H200 SXM dense bf16 tensor-core peak, from the vendor's data sheet
GPU_EFFICIENCY = 0.05  # fraction of peak a 135M model reaches on ~200-token requests in batches of ~8
TARGET_UTILISATION = 0.7  # keep replicas 30% idle so queues (and p99) stay short


def calculation(report: dict[str, Any], rates: tuple[float, ...] = (10, 100, 1000)) -> list[str]:
    inproc = report.get("in_process_after") or report["in_process"]
    cpu_s = 1.0 / inproc["sequential"]["rps"]  # measured: one core-thread's seconds per request
    work = cpu_s * inproc["matmul_flops"]  # FLOP-equivalents per request, at this CPU's matmul rate
    gpu_s = work / (GPU_PEAK_FLOPS * GPU_EFFICIENCY)
    ray1 = report["configs"].get("ray-1", {})
    replica_rps = max((row["rps"] for row in ray1.values()), default=1.0 / cpu_s)
    lines = [
        "## Replicas for a request rate: a paper calculation, not a measurement",
        "",
        f"Measured here: one request costs {cpu_s:.2f} s of one CPU thread (in-process, sequential), and one",
        f"thread multiplies float32 matrices at {inproc['matmul_flops'] / 1e9:.1f} GFLOP/s, so a request is about",
        f"{work / 1e9:.1f} GFLOP-equivalents of work. A one-thread Ray replica served at most {replica_rps:.2f} req/s.",
        "",
        f"Assumed, not measured: a GPU replica reaches {GPU_EFFICIENCY:.0%} of an H100/H200's {GPU_PEAK_FLOPS / 1e12:.0f} "
        f"TFLOP/s bf16 peak on these small requests, so one request takes about {1000 * gpu_s:.2f} ms of GPU time;",
        f"replicas are sized for {TARGET_UTILISATION:.0%} utilisation. replicas = ceil(rate x cost / utilisation).",
        "",
        "| requests / s | CPU replicas (1 thread each, measured cost) | GPU replicas (assumed cost) |",
        "|---|---|---|",
    ]
    for rate in rates:
        cpu = math.ceil(rate / (replica_rps * TARGET_UTILISATION))
        gpu = math.ceil(rate * gpu_s / TARGET_UTILISATION)
        lines.append(f"| {rate:g} | {cpu} | {gpu} |")
    lines += [
        "",
        "A GPU replica of the 135M model needs well under 1 GB of memory, so several replicas can share",
        "one GPU (`num_gpus=0.25` each); with the assumed cost one H200 holds the GPU replicas of every",
        "rate above. The GPU column is only as good as the 5% assumption: measure it on the GPU",
        "(`benchmarks/bench_serve.py` runs there unchanged with `--num-gpus`) before buying anything.",
    ]
    return lines


def render(report: dict[str, Any]) -> str:
    inproc = report["in_process"]
    lines = [
        "# The scoring service under load, on CPU (embedded SmolLM2-135M-Instruct)",
        "",
        f"`benchmarks/bench_serve.py`, {report['date']}. Machine: {report['machine']}; torch threads per "
        f"process or replica: {report['threads_per_process']}. Load average (1, 5, 15 min) before the run "
        f"{report['load_average_before']}, after it {report.get('load_average_after') or 'not kept'}"
        + (
            f", at the second in-process measurement {report['load_average_again']}"
            if "load_average_again" in report
            else ""
        )
        + ": other jobs share the cores.",
        "",
        f"Requests: `POST /v1/score`, {report['pairs']} RAG pairs from the development set (three retrieved "
        f"documents and a question, {inproc['prompt_tokens_mean']} prompt tokens on average; the model's own "
        f"answers, {inproc['answer_tokens_mean']} tokens on average), sent by `c` concurrent clients in the "
        "benchmark's process after `c` warm-up requests. Servers: `single` is `semgrad-guard serve` "
        "(one process, micro-batching up to 8, 5 ms wait); `ray-N` is `semgrad-guard serve --ray --replicas N` "
        "(Ray Serve 2.60, `@serve.batch` up to 8, 5 ms wait, one torch thread and one CPU per replica).",
        "",
        "| server | concurrency | requests | errors | req/s | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    seq = inproc["sequential"]
    lines.append(
        f"| in-process `score`, sequential | 1 | {seq['requests']} | 0 | {seq['rps']} | {seq['p50_ms']} | "
        f"{seq['p95_ms']} | {seq['p99_ms']} |"
    )
    if "in_process_after" in report:
        seq = report["in_process_after"]["sequential"]
        lines.append(
            f"| in-process `score`, sequential (again, after the servers) | 1 | {seq['requests']} | 0 | "
            f"{seq['rps']} | {seq['p50_ms']} | {seq['p95_ms']} | {seq['p99_ms']} |"
        )
    b8 = inproc["score_batch_8"]
    lines.append(f"| in-process `score_batch` of 8 | - | 8 | 0 | {b8['rps']} | - | - | - |")
    for name, rows in report["configs"].items():
        for c, row in rows.items():
            lines.append(
                f"| {name} | {c} | {row['requests']} | {row['errors']} | {row['rps']} | {row['p50_ms']} | "
                f"{row['p95_ms']} | {row['p99_ms']} |"
            )
    if "matmul_flops" in (report.get("in_process_after") or inproc):
        lines += ["", *calculation(report)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--faults" in argv:  # the load-and-fault run: benchmarks/bench_serve_faults.py
        from bench_serve_faults import main as faults_main

        return faults_main([a for a in argv if a != "--faults"])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,4,8", help="concurrency levels (comma-separated)")
    parser.add_argument("--min-requests", type=int, default=12, help="fewest measured requests per level")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process / replica")
    parser.add_argument("--only", default="in-process,single,ray-1,ray-2")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--again",
        action="store_true",
        help="measure in-process again into the existing JSON (in_process_after) and rewrite the table",
    )
    args = parser.parse_args(argv)
    if args.again:
        report = json.loads(args.out.with_suffix(".json").read_text())
        report["in_process_after"] = in_process(workload(), max(args.min_requests, 8), args.threads)
        report["load_average_again"] = [round(x, 2) for x in os.getloadavg()]
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(render(report))
        print(render(report))
        return 0
    levels = [int(x) for x in args.levels.split(",")]
    only = args.only.split(",")
    if "in-process" not in only:  # the report's baseline and the replica calculation are made from it
        parser.error("--only must include in-process (the baseline every row is read against)")
    pairs = workload()
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()
    report: dict[str, Any] = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs), "
        f"{platform.python_implementation()} {platform.python_version()}",
        "load_average_before": [round(x, 2) for x in load_before],
        "threads_per_process": args.threads,
        "pairs": len(pairs),
        "levels": levels,
        "configs": {},
    }
    if "in-process" in only:
        report["in_process"] = in_process(pairs, max(args.min_requests, 8), args.threads)
        print("in-process", json.dumps(report["in_process"]), flush=True)
    servers = {"single": [], "ray-1": ["--ray", "--replicas", "1"], "ray-2": ["--ray", "--replicas", "2"]}
    for name, extra in servers.items():
        if name not in only:
            continue
        # SIGTERM at the end: uvicorn stops; --ray shuts Ray Serve and the local Ray down
        with ServeProcess(*extra, threads=args.threads) as server:
            rows = {}
            for c in levels:
                rows[str(c)] = asyncio.run(drive(server.url, pairs, c, max(args.min_requests, 2 * c)))
                print(name, c, json.dumps(rows[str(c)]), flush=True)
            report["configs"][name] = rows
        time.sleep(3)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
