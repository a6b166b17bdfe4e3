"""Load and faults of the scoring service: load held, overload answered, SIGKILLs survived, review items kept.

Runs ``semgrad-guard serve`` (embedded model, one torch thread) as a child process, three times over:

- **load**: ``POST /v1/score`` of short SciQ pairs (the model's own answers from
  ``benchmarks/results/devsets/sciq.jsonl``) at each concurrency level; requests, errors, p50/p95/p99
  latency and the server's resident memory before and after;
- **overload**: a burst far over ``--max-queue 4``: how many got the JSON 503 with ``Retry-After``,
  how many a 200, and whether any got anything else (a plain-text error, a dropped connection);
- **faults**: a policy that sends every answer to review (SQLite queue, one file for the whole run);
  ``--kills`` rounds of ``--burst`` concurrent ``/v1/chat/completions``, each round ended by a SIGKILL
  of the server at a random moment after its ``--acks``-th acknowledged item, then the server started again
  on the same file. Every request carries a unique marker; at the end the queue is read back:
  acknowledged items (a 200 with ``x-semgrad-review-id``) missing from it are **lost**, markers
  stored more than once are **duplicated**, ids handed out twice are counted, and SQLite's
  ``integrity_check`` must say ``ok``. A last server on the file must still enqueue.

Writes ``benchmarks/results/serve_faults.md`` and ``.json`` with the machine and its load average.

    python benchmarks/bench_serve_faults.py [--levels 1,8,32] [--kills 8] [--burst 8] [--threads 1]
    python benchmarks/bench_serve.py --faults ...   (the same)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import os
import platform
import random
import sqlite3
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx

from semgrad_guard.serve import ServeProcess

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "serve_faults"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import summary  # noqa: E402


def short_pairs() -> list[tuple[str, str]]:
    rows = map(json.loads, (ROOT / "benchmarks/results/devsets/sciq.jsonl").read_text().splitlines())
    return [(r["question"], r["answer"]) for r in rows]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


# ------------------------------------------------------------------------------------------ load
async def drive(url: str, pairs: list, concurrency: int, n: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    out: list[tuple[float, bool]] = []
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(n):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                q, a = pairs[queue.get_nowait() % len(pairs)]
                t0 = time.perf_counter()
                try:
                    ok = (
                        await client.post("/v1/score", json={"messages": q, "answer": a})
                    ).status_code == 200
                except httpx.HTTPError:
                    ok = False
                out.append((time.perf_counter() - t0, ok))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return summary([t for t, ok in out if ok], sum(not ok for _, ok in out), wall, n)


async def overload(url: str, pairs: list, n: int) -> dict[str, Any]:
    """``n`` requests at once against a small queue: each must be a 200 or the JSON 503 with Retry-After."""
    counts: collections.Counter[str] = collections.Counter()
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def one(i: int) -> None:
            q, a = pairs[i % len(pairs)]
            try:
                r = await client.post("/v1/score", json={"messages": q, "answer": a})
            except httpx.HTTPError as e:
                counts[f"transport error ({type(e).__name__})"] += 1
                return
            if r.status_code == 200:
                counts["200"] += 1
            elif (
                r.status_code == 503
                and r.headers.get("retry-after")
                and r.headers.get("content-type", "").startswith("application/json")
                and r.json().get("type") == "ServiceUnavailableError"
            ):
                counts["503 JSON + Retry-After"] += 1
            else:
                counts[f"{r.status_code} other"] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
    return {"requests": n, "wall_s": round(wall, 2), "answers": dict(counts)}


# ------------------------------------------------------------------------------------------ faults
POLICY = {"rules": [{"name": "everything", "action": "review"}]}


async def burst_until_killed(
    server: ServeProcess,
    round_no: int,
    concurrency: int,
    acks: int,
    rng: random.Random,
    log: dict[str, Any],
) -> None:
    """Chat completions from ``concurrency`` clients until the server is SIGKILLed, at a random moment
    after its ``acks``-th acknowledged item of the round."""
    acked = asyncio.Event()
    round_acks = [0]
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:

        async def worker(w: int) -> None:
            k = 0
            while not stop.is_set():
                marker = f"r{round_no}-w{w}-{k}"
                k += 1
                body = {
                    "model": "default",
                    "messages": [
                        {"role": "user", "content": f"[{marker}] What is the boiling point of water?"}
                    ],
                    "max_tokens": 4,
                }
                log["sent"] += 1
                try:
                    r = await client.post("/v1/chat/completions", json=body)
                except httpx.HTTPError:
                    log["failed"].append(marker)  # in flight at the kill: this client's round is over
                    return
                review_id = r.headers.get("x-semgrad-review-id")
                if r.status_code == 200 and review_id is not None:
                    log["acked"].append((marker, int(review_id)))
                    round_acks[0] += 1
                    if round_acks[0] >= acks:
                        acked.set()
                else:
                    log["other"].append((marker, r.status_code))

        async def killer() -> None:
            await acked.wait()
            await asyncio.sleep(rng.uniform(0.0, 1.5))  # somewhere inside the burst
            server.kill()
            await asyncio.sleep(0.5)  # let the clients see it
            stop.set()

        await asyncio.gather(killer(), *(worker(w) for w in range(concurrency)))


def faults(kills: int, burst: int, acks: int, threads: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    log: dict[str, Any] = {"sent": 0, "acked": [], "failed": [], "other": []}
    restarts: list[float] = []
    with tempfile.TemporaryDirectory(prefix="semgrad-faults-") as tmp:
        db = Path(tmp) / "review.db"
        policy = Path(tmp) / "policy.json"
        policy.write_text(json.dumps({**POLICY, "review": {"path": str(db)}}))
        for round_no in range(kills):
            t0 = time.perf_counter()
            server = ServeProcess("--policy", str(policy), threads=threads).start()
            restarts.append(time.perf_counter() - t0)
            try:
                asyncio.run(burst_until_killed(server, round_no, burst, acks, rng, log))
            finally:
                server.close()
            print(f"kill {round_no + 1}/{kills}: {len(log['acked'])} acknowledged so far", flush=True)
        # After every kill: the same file still takes items.
        with ServeProcess("--policy", str(policy), threads=threads) as server:
            body = {
                "model": "default",
                "messages": [{"role": "user", "content": "[final] Hi"}],
                "max_tokens": 4,
            }
            final = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
            final_ok = final.status_code == 200 and final.headers.get("x-semgrad-review-id") is not None
        with sqlite3.connect(db) as conn:
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
            rows = conn.execute("SELECT id, messages FROM items").fetchall()
    stored: collections.Counter[str] = collections.Counter()
    id_of: dict[str, int] = {}
    for item_id, messages in rows:
        text = json.loads(messages)[-1]["content"]
        marker = text[1 : text.index("]")] if text.startswith("[") else text
        stored[marker] += 1
        id_of[marker] = item_id
    acked = log["acked"]
    acked_ids = [i for _, i in acked]
    lost = [m for m, i in acked if stored[m] == 0 or id_of.get(m) != i]
    failed_but_stored = [m for m in log["failed"] if stored[m]]
    return {
        "kills": kills,
        "burst_concurrency": burst,
        "acks_before_each_kill": acks,
        "requests_sent": log["sent"],
        "acknowledged": len(acked),
        "acknowledged_lost": len(lost),
        "stored_more_than_once": sum(1 for m, c in stored.items() if c > 1),
        "ids_given_twice": len(acked_ids) - len(set(acked_ids)),
        "failed_at_a_kill": len(log["failed"]),
        "failed_but_stored": len(failed_but_stored),
        "other_answers": collections.Counter(str(s) for _, s in log["other"]),
        "items_in_queue": len(rows),
        "integrity_check": integrity,
        "enqueues_after_the_kills": final_ok,
        "restart_s": {"min": round(min(restarts), 1), "max": round(max(restarts), 1)},
    }


# ------------------------------------------------------------------------------------------ report
def render(report: dict[str, Any]) -> str:
    f = report["faults"]
    lines = [
        "# The service under load and faults, on CPU (embedded SmolLM2-135M-Instruct)",
        "",
        f"`benchmarks/bench_serve_faults.py`, {report['date']}. Machine: {report['machine']}; torch "
        f"threads per server: {report['threads']}. Load average (1, 5, 15 min) before "
        f"{report['load_average_before']}, after {report['load_average_after']}: other jobs share the "
        "cores, so latencies are this machine's at that load, not the service's best.",
        "",
        "## Load held: `POST /v1/score`, one server",
        "",
        f"{report['pairs']} short SciQ pairs (~35 prompt and ~16 answer tokens: the model's own answers), "
        "`c` concurrent clients.",
        "",
        "| concurrency | requests | errors | req/s | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for c, row in report["load"].items():
        lines.append(
            f"| {c} | {row['requests']} | {row['errors']} | {row['rps']} | {row['p50_ms']} | "
            f"{row['p95_ms']} | {row['p99_ms']} |"
        )
    mem = report["memory_mb"]
    o = report["overload"]
    answers = ", ".join(f"{k}: {v}" for k, v in sorted(o["answers"].items()))
    lines += [
        "",
        f"Server memory (RSS): {mem['before']:,.0f} MB after the first request, {mem['after']:,.0f} MB "
        "after the last.",
        "",
        f"## Overload: {o['requests']} requests at once, `--max-queue 4`",
        "",
        f"Answers: {answers} (in {o['wall_s']} s). Anything but a 200 or the JSON 503 with `Retry-After` "
        "would be listed here as `other` or `transport error`.",
        "",
        f"## Faults: {f['kills']} SIGKILLs during review-enqueue bursts",
        "",
        f"`/v1/chat/completions` from {f['burst_concurrency']} clients, a policy that sends every answer to "
        "review, one SQLite queue for the whole run; each round SIGKILLs the server at a random moment "
        f"(0-1.5 s) after its {f['acks_before_each_kill']}th acknowledged item of the round, then starts it "
        "again on the same file "
        f"({f['restart_s']['min']}-{f['restart_s']['max']} s to ready).",
        "",
        "| what | count |",
        "|---|---|",
        f"| requests sent | {f['requests_sent']} |",
        f"| acknowledged (200 with a review id) | {f['acknowledged']} |",
        f"| **acknowledged items lost** | **{f['acknowledged_lost']}** |",
        f"| **items stored more than once** | **{f['stored_more_than_once']}** |",
        f"| review ids handed out twice | {f['ids_given_twice']} |",
        f"| requests in flight at a kill (failed) | {f['failed_at_a_kill']} |",
        f"| of those, stored anyway (committed, not acknowledged) | {f['failed_but_stored']} |",
        f"| items in the queue at the end | {f['items_in_queue']} |",
        f"| SQLite integrity_check | {f['integrity_check']} |",
        f"| a server on the file enqueues after the kills | {'yes' if f['enqueues_after_the_kills'] else 'NO'} |",
    ]
    if f["other_answers"]:
        lines.append(f"| other answers (status: count) | {dict(f['other_answers'])} |")
    lines += [
        "",
        "A request failed by a kill may still have been committed (the server died between the commit and "
        "the answer): the client saw an error, the item waits in the queue. That is at-least-once storage;"
        " a client that retries such a request gets a second item for it.",
    ]
    # Prose at 80 columns (tables and headings as they are).
    out = [line if line.startswith(("|", "#")) or not line else textwrap.fill(line, 80) for line in lines]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,8,32", help="concurrency levels of the load part")
    parser.add_argument("--min-requests", type=int, default=16, help="fewest requests per level")
    parser.add_argument("--overload", type=int, default=64, help="requests in the overload burst")
    parser.add_argument("--kills", type=int, default=8, help="SIGKILLs of the server")
    parser.add_argument("--burst", type=int, default=8, help="concurrent clients per fault round")
    parser.add_argument("--acks", type=int, default=4, help="acknowledged items per round before its kill")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per server")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--render-only", action="store_true", help="rewrite the table from the JSON")
    args = parser.parse_args(argv)
    if args.render_only:
        args.out.with_suffix(".md").write_text(render(json.loads(args.out.with_suffix(".json").read_text())))
        return 0
    pairs = short_pairs()
    load_before = os.getloadavg()
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs), "
        f"{platform.python_implementation()} {platform.python_version()}",
        "load_average_before": [round(x, 2) for x in load_before],
        "threads": args.threads,
        "pairs": len(pairs),
        "load": {},
    }
    with ServeProcess(threads=args.threads) as server:
        pid = server.pid
        asyncio.run(drive(server.url, pairs, 1, 1))  # warm-up
        before = rss_mb(pid)
        for c in (int(x) for x in args.levels.split(",")):
            report["load"][str(c)] = asyncio.run(drive(server.url, pairs, c, max(args.min_requests, 2 * c)))
            print("load", c, json.dumps(report["load"][str(c)]), flush=True)
        report["memory_mb"] = {"before": round(before, 1), "after": round(rss_mb(pid), 1)}
    with ServeProcess("--max-queue", "4", threads=args.threads) as server:
        report["overload"] = asyncio.run(overload(server.url, pairs, args.overload))
        print("overload", json.dumps(report["overload"]), flush=True)
    report["faults"] = faults(args.kills, args.burst, args.acks, args.threads, args.seed)
    print("faults", json.dumps(report["faults"]), flush=True)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(report))
    print(render(report))
    return 0 if report["faults"]["acknowledged_lost"] == 0 == report["faults"]["stored_more_than_once"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
