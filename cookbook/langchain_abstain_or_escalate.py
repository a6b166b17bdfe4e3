"""Abstain or escalate: the human-review flow end to end with LangChain and a durable review queue.

1. A guarded ``ChatSemGrad`` (embedded SmolLM2-135M-Instruct) answers three questions under a
   policy: confident answers pass, shaky ones go to a person, hopeless ones abstain.
2. An escalated answer waits in the SQLite review queue; a reviewer decides with the review CLI
   (``semgrad-guard review edit ID --db ... --answer ...``, run in-process here).
3. The same question again: the queue holds a decision on that chat and answer, so it decides the
   repeat as the desk did and the guard returns the desk's answer at once (no one is asked twice).
4. Async, waiting: a lead re-opens the desk's decision; with ``review.wait`` set, the question
   comes in again and ``ainvoke`` awaits the decision while a reviewer (another coroutine here; a
   person with the CLI in production) rejects it; the guarded call returns the abstention message.

Run: ``python cookbook/langchain_abstain_or_escalate.py`` (needs ``semgrad-guard fetch-default-model``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_semgrad import ChatSemGrad, guard_runnable
from rich.console import Console
from rich.table import Table

from semgrad_guard.guard.calibration import Calibrator
from semgrad_guard.guard.outcomes import GuardResult
from semgrad_guard.guard.policy import GuardPolicy
from semgrad_guard.review.queue import SQLiteReviewQueue

GUIDE = Path(__file__).parent / "data" / "orbitra_docs.jsonl"
SYSTEM = (
    "You are the Orbitra Science Museum's assistant. Answer in one short sentence, using this guide:\n"
    + "\n".join(json.loads(line)["text"] for line in GUIDE.read_text().splitlines() if line.strip())
)

# Bands over calibrated confidence (the shipped calibrator): cookbook/policies/abstain_or_escalate.yaml,
# with this example's own abstention message.
POLICY = GuardPolicy.from_yaml(Path(__file__).parent / "policies" / "abstain_or_escalate.yaml").model_copy(
    update={"abstain_message": "I'm not sure; let me connect you with a member of staff."}
)

QUESTIONS = [
    "Who founded the Orbitra Science Museum?",
    "Who is the museum's current director?",
    "What is the wifi password?",
]


def messages(question: str) -> list[tuple[str, str]]:
    return [("system", SYSTEM), ("human", question)]


def run(
    *, max_tokens: int = 40, review_db: str | None = None, console: Console | None = None
) -> dict[str, Any]:
    console = console or Console()
    chat = ChatSemGrad(model="default", max_tokens=max_tokens)
    db = review_db or str(Path(tempfile.mkdtemp(prefix="semgrad-review-")) / "review.db")
    queue = SQLiteReviewQueue(db)
    policy = POLICY
    calibrator = Calibrator.default_for(chat.scorer.model_id)
    guarded = guard_runnable(
        chat, chat.scorer, policy, calibrator=calibrator, review_queue=queue, output="guard_result"
    )

    # 1. Route three answers.
    results: list[GuardResult] = [guarded.invoke(messages(q)) for q in QUESTIONS]
    table = Table(title="Step 1: routing (policy over calibrated confidence)", show_lines=True)
    for col in ("question", "model answer", "confidence", "action", "returned", "review id"):
        table.add_column(col, overflow="fold")
    for q, r in zip(QUESTIONS, results, strict=True):
        best = r.best_attempt
        table.add_row(
            q,
            (best.answer if best else "") or "",
            f"{r.confidence:.2f}" if r.confidence is not None else "n/a",
            r.action.value,
            r.answer,
            str(r.review_id or ""),
        )
    console.print(table)

    # 2. A person decides on each pending item with the review CLI (run in-process here; the same
    #    command works from a shell, on the same SQLite file).
    from semgrad_guard.cli import main as semgrad_guard_cli

    decided = []
    for item in queue.list("pending"):
        console.print(f"[bold]review #{item.id}[/] q={item.question!r} a={item.answer!r} rule={item.rule}")
        argv = [
            "review",
            "edit",
            str(item.id),
            "--db",
            db,
            "--reviewer",
            "desk",
            "--note",
            "checked by the desk",
            "--answer",
            "Please ask at the information desk; staff will confirm.",
        ]
        console.print("  $ semgrad-guard " + " ".join(shlex.quote(a) for a in argv))
        if semgrad_guard_cli(argv) != 0:
            raise RuntimeError(f"semgrad-guard review edit {item.id} failed")
        final = queue.get(item.id)
        decided.append(final)
        console.print(f"  -> {final.status.value} by {final.reviewer}: {final.final_answer!r}")

    # 3. The same question again: decided as the desk decided it, at once.
    escalated = [(q, r) for q, r in zip(QUESTIONS, results, strict=True) if r.action.value == "review"]
    again = guarded.invoke(messages(escalated[0][0])) if escalated else None
    if again is not None:
        repeat_of = queue.get(again.review_id).repeat_of if again.review_id else None
        console.print(
            f"Step 3: asked again: review #{again.review_id} is a repeat of #{repeat_of}, "
            f"status={again.review_status}, returned {again.answer!r} without waiting"
        )

    # 4. Async: a lead re-opens the desk's decision; the guarded call waits while a reviewer works.
    waiting_policy = policy.model_copy(
        update={"review": policy.review.model_copy(update={"wait": 60.0, "poll_interval": 0.1})}
    )
    waiting = guard_runnable(
        chat, chat.scorer, waiting_policy, calibrator=calibrator, review_queue=queue, output="guard_result"
    )

    async def reviewer() -> None:
        seen = max((it.id for it in queue.list()), default=0)
        for _ in range(6000):  # a person at a review screen, polling the same SQLite file
            pending = await asyncio.to_thread(queue.list, "pending")
            if pending and pending[0].id > seen:  # the new arrival: deciding it decides its copies
                await asyncio.to_thread(
                    queue.reject, pending[0].id, reviewer="night-shift", note="cannot confirm"
                )
                return
            await asyncio.sleep(0.1)

    async def ask_and_wait(question: str) -> GuardResult:
        answer, _ = await asyncio.gather(waiting.ainvoke(messages(question)), reviewer())
        return answer

    waited = None
    if escalated:
        first = escalated[0][1].review_id
        assert first is not None
        queue.reopen(first, reviewer="lead", note="the desk's answer needs a second look")
        waited = asyncio.run(ask_and_wait(escalated[0][0]))
        console.print(
            f"Step 4: #{first} re-opened; waited for review #{waited.review_id}: "
            f"status={waited.review_status}, returned {waited.answer!r}"
        )
    console.print(f"review queue: {db} ({len(queue)} item(s)); counts {queue.counts()}")
    return {"results": results, "decided": decided, "again": again, "waited": waited, "db": db}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--review-db", default=None, help="SQLite review queue (default: a temporary file)")
    args = parser.parse_args(argv)
    logging.getLogger("semgrad_guard").setLevel(logging.ERROR)
    run(max_tokens=args.max_tokens, review_db=args.review_db)
    return 0


if __name__ == "__main__":
    sys.exit(main())
