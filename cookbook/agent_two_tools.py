"""A LangChain agent with two tools on a real model that calls them: Qwen2.5-Coder-0.5B-Instruct.

``create_agent`` gets ``ChatSemGrad`` itself (no stand-in router): the model reads the tools from its
chat template, picks one per question and emits the call; the tool runs; the model answers from the
result. ``SemGradMiddleware`` lets the tool-call turns through unscored and gates each final answer
on its calibrated confidence (the calibrator shipped for the model): confident answers are
accepted, the rest replaced by an abstention. Tool-call JSON never reaches the user as an answer.

Small models imitate their last turn: once a tool result follows its own call, the 0.5B model writes
call after call instead of answering. ``AnswerFromToolResults`` appends one user turn ("Using the
tool results above, answer my question...") to the model call that follows tool results, and only to
it (the agent's state is unchanged); the tools stay bound, so a call is still parsed as a call and
tool-call JSON never reaches the user as an answer.

Run: ``python cookbook/agent_two_tools.py`` (fetches the model once: ``semgrad-guard fetch-model
qwen2.5-coder-0.5b``, about 5 minutes; each question then takes seconds to a minute on a CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_semgrad import AnswerFromToolResults, ChatSemGrad, SemGradMiddleware, read_payload, read_score
from rich.console import Console
from rich.table import Table

from semgrad_guard import Calibrator, GuardPolicy, SemGradGuardError

MODEL = "qwen2.5-coder-0.5b"
DOCS = Path(__file__).parent / "data" / "orbitra_docs.jsonl"
SYSTEM = (
    "You are the Orbitra Science Museum's assistant. Use the tools: museum_info for facts about the "
    "museum, multiply for arithmetic. Once a tool has returned, answer in one short sentence."
)
QUESTIONS = [
    ("What is 7 times 12? Use the multiply tool.", "multiply"),
    ("Who founded the Orbitra Science Museum? Use the museum_info tool.", "museum_info"),
]
POLICY = GuardPolicy.from_dict(
    {
        "rules": [
            {"name": "confident", "min": 0.35, "action": "accept"},
            {"name": "unsure", "action": "abstain"},
        ],
        "on_error": "abstain",
        "abstain_message": "I am not sure; please ask at the information desk.",
    }
)


@tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


@tool
def museum_info(topic: str) -> str:
    """Look up one topic about the Orbitra Science Museum, e.g. 'founder', 'tickets', 'opening hours'."""
    docs = [json.loads(line) for line in DOCS.read_text().splitlines() if line.strip()]
    stems = {w.strip("?.,'").lower()[:5] for w in topic.split() if len(w) > 3} - {"orbit", "scien", "museu"}

    def overlap(doc: dict[str, str]) -> int:  # shared word stems, title and id included
        words = f"{doc['id']} {doc['title']} {doc['text']}".lower().replace(".", " ").replace("-", " ")
        return len(stems & {w[:5] for w in words.split()})

    return "\n".join(d["text"] for d in sorted(docs, key=lambda d: -overlap(d))[:2])


def run(questions: Sequence[tuple[str, str]] = QUESTIONS, *, model: str = MODEL) -> list[dict[str, Any]]:
    """Ask each question; return per question the tools called, the final answer, its scores and verdict."""
    chat = ChatSemGrad(model=model, max_tokens=96)
    scorer = chat.scorer
    try:
        calibrator = Calibrator.default_for(scorer.model_id)
        calibrator.check_compatible(scorer.model_id, scorer.profile)
    except SemGradGuardError:
        calibrator = None  # no confidence: the policy's on_error (abstain) applies
    middleware = SemGradMiddleware(scorer, POLICY, calibrator=calibrator)
    agent = create_agent(
        chat, [multiply, museum_info], system_prompt=SYSTEM, middleware=[AnswerFromToolResults(), middleware]
    )
    out = []
    for question, _ in questions:
        state = agent.invoke({"messages": [HumanMessage(question)]}, {"recursion_limit": 8})
        messages = state["messages"]
        final = messages[-1]
        payload = read_payload(final) if isinstance(final, AIMessage) else None
        score = read_score(final) if isinstance(final, AIMessage) else None
        out.append(
            {
                "question": question,
                "tool_calls": [
                    (c["name"], c["args"]) for m in messages if isinstance(m, AIMessage) for c in m.tool_calls
                ],
                "tool_results": [str(m.content) for m in messages if isinstance(m, ToolMessage)],
                "answer": str(final.content),
                "final_is_tool_call": bool(getattr(final, "tool_calls", None)),
                "mean_nll": None if score is None else score.mean_nll,
                "semgrad": None if score is None else score.semgrad,
                "confidence": None if payload is None else payload.get("confidence"),
                "action": None if payload is None else payload.get("action"),
            }
        )
    return out


def render(rows: Sequence[dict[str, Any]], console: Console) -> None:
    table = Table(title=f"Agent with two tools ({MODEL}), final answers gated by SemGradMiddleware")
    for col in ("question", "tool call", "answer", "conf.", "action"):
        table.add_column(col, overflow="fold")
    for r in rows:
        calls = "; ".join(f"{n}({', '.join(f'{k}={v}' for k, v in a.items())})" for n, a in r["tool_calls"])
        conf = "n/a" if r["confidence"] is None else f"{r['confidence']:.2f}"
        table.add_row(r["question"], calls or "-", r["answer"], conf, str(r["action"]))
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL, help="a registry name whose chat template renders tools")
    parser.add_argument("--summary", default=None, help="also write the rows as JSON lines here")
    args = parser.parse_args(argv)
    logging.getLogger("semgrad_guard").setLevel(logging.ERROR)
    rows = run(model=args.model)
    render(rows, Console())
    if args.summary:
        Path(args.summary).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
