"""Review queue throughput: enqueue and decide, SQLite vs PostgreSQL, at 1, 4 and 16 concurrent writers.

Each writer is its own process with its own queue object (as guards on several replicas are). All
start together; each enqueues ``--items`` review items (a two-message chat, a 300-character answer,
scores and metadata: what the guard queues), then approves its own items one by one. Throughput is
items committed per second of wall time, over all writers; latency is per call. Durable settings on
both sides: SQLite in WAL mode with ``synchronous=FULL``; PostgreSQL 127.0.0.1 (a throwaway cluster
started here, ``fsync`` and ``synchronous_commit`` on). Writes ``benchmarks/results/review_queue.md``.

    python benchmarks/bench_review_queue.py [--writers 1,4,16] [--items 100]
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "review_queue.md"


def _writer(spec: str, tag: int, items: int, start: Any, middle: Any, results: Any) -> None:
    from semgrad_guard import ScoreResult, open_review_queue

    result = ScoreResult(
        semgrad=1e-3,
        hybridgrad=2e-3,
        exgrad=3e-3,
        nll=4.0,
        mean_nll=0.5,
        mean_entropy=1.2,
        answer_tokens=60,
        anchor_offset=-4,
        layers=[15, 16],
        model_id="m",
    )
    chat = [{"role": "system", "content": "Answer from the documents."}, {"role": "user", "content": "Q?"}]
    answer = "x" * 300
    q = open_review_queue(spec)
    enq: list[float] = []
    dec: list[float] = []
    ids: list[int] = []
    start.wait()
    for k in range(items):
        t = time.perf_counter()
        ids.append(
            q.enqueue(chat, answer, result=result, confidence=0.4, rule="unsure", metadata={"w": tag, "k": k})
        )
        enq.append(time.perf_counter() - t)
    middle.wait()
    for i in ids:
        t = time.perf_counter()
        q.approve(i, reviewer=f"r{tag}")
        dec.append(time.perf_counter() - t)
    q.close()
    results.put((enq, dec))


def run_level(spec: str, writers: int, items: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    start, middle = ctx.Barrier(writers + 1), ctx.Barrier(writers + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(spec, w, items, start, middle, results)) for w in range(writers)
    ]
    for p in procs:
        p.start()
    start.wait()  # every writer has opened its queue
    t0 = time.perf_counter()
    middle.wait()
    t1 = time.perf_counter()
    got = [results.get(timeout=600) for _ in procs]
    t2 = time.perf_counter()
    for p in procs:
        p.join(60)
        if p.exitcode != 0:
            raise RuntimeError(f"a writer failed (exit {p.exitcode})")
    enq = [x for e, _ in got for x in e]
    dec = [x for _, d in got for x in d]
    total = writers * items
    return {
        "enqueue_per_s": total / (t1 - t0),
        "decide_per_s": total / (t2 - t1),
        "enqueue_p50_ms": statistics.median(enq) * 1e3,
        "enqueue_p95_ms": statistics.quantiles(enq, n=20)[18] * 1e3,
        "decide_p50_ms": statistics.median(dec) * 1e3,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writers", default="1,4,16", help="concurrency levels (default 1,4,16)")
    ap.add_argument(
        "--items", type=int, default=100, help="items each writer enqueues, then decides (default 100)"
    )
    ap.add_argument("--output", type=Path, default=OUT)
    args = ap.parse_args()
    levels = [int(x) for x in args.writers.split(",")]
    from semgrad_guard.testing.postgres import TemporaryPostgres

    load_before = os.getloadavg()
    rows: list[tuple[str, int, dict[str, float]]] = []
    with TemporaryPostgres(fsync=True) as pg, tempfile.TemporaryDirectory() as tmp:
        import psycopg

        with psycopg.connect(pg.url()) as conn:
            pg_version = conn.execute("SHOW server_version").fetchone()[0]
        for n in levels:
            for backend in ("sqlite", "postgres"):
                spec = str(Path(tmp) / f"q{n}.db") if backend == "sqlite" else pg.create_database(f"q{n}")
                r = run_level(spec, n, args.items)
                rows.append((backend, n, r))
                print(backend, n, {k: round(v, 1) for k, v in r.items()}, flush=True)
    load_after = os.getloadavg()

    cpu = platform.processor() or platform.machine()

    def para(*parts: str) -> str:  # prose wrapped to fit 80 columns
        return textwrap.fill(" ".join(parts), width=78)

    lines = [
        "# Review queue throughput: SQLite vs PostgreSQL",
        "",
        para(
            f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by",
            f"`benchmarks/bench_review_queue.py --writers {args.writers} --items {args.items}`.",
            f"Machine: {os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()},",
            f"Python {platform.python_version()}; load average {load_before[0]:.1f} before,",
            f"{load_after[0]:.1f} after (a shared box: other jobs ran alongside; read the ratios",
            f"more than the absolutes). SQLite {sqlite3.sqlite_version} (WAL, synchronous=FULL) on",
            f"local disk; PostgreSQL {pg_version.split()[0]} on 127.0.0.1 of the same machine (fsync",
            "on, synchronous_commit on): no network hop, which a real multi-node setup adds.",
        ),
        "",
        para(
            "Each writer is a process with its own queue; all start together, each enqueues its",
            "items, then approves them one by one. Throughput: items per second over all writers.",
        ),
        "",
        "| backend  | writers | enqueue/s | p50 ms | p95 ms | decide/s | p50 ms |",
        "|----------|--------:|----------:|-------:|-------:|---------:|-------:|",
    ]
    for backend, n, r in rows:
        lines.append(
            f"| {backend:<8} | {n:>7} | {r['enqueue_per_s']:>9.0f} | {r['enqueue_p50_ms']:>6.1f} | "
            f"{r['enqueue_p95_ms']:>6.1f} | {r['decide_per_s']:>8.0f} | {r['decide_p50_ms']:>6.1f} |"
        )
    lines += [
        "",
        para(
            "A decision is two statements and a read-back (compare-and-set, audit entry, the item",
            "returned); on PostgreSQL it also sends the NOTIFY that wakes waiters on every machine.",
            "With 16 writers on 2 cores the writers themselves oversubscribe the CPUs (the load",
            "average above includes them). PostgreSQL serialises the commits of transactions that",
            "NOTIFY, so decisions scale less with writers than enqueues do.",
        ),
        "",
    ]
    args.output.write_text("\n".join(lines))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
