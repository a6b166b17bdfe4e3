"""A tool-using LangChain agent whose final answers are guarded by SemGradMiddleware.

The agent (LangChain 1.x ``create_agent``) looks facts up with a tool, then answers with the
embedded SmolLM2-135M-Instruct through ``ChatSemGrad``, which scores each answer as it
generates it. ``SemGradMiddleware`` skips the tool-call turns, scores the final answers, and
applies a policy: accept, retry (resample), abstain, or pause the graph for a person
(LangGraph ``interrupt()``, resumed with ``Command(resume=...)``, no re-scoring).

A 135M model cannot emit reliable tool calls (and SmolLM2's chat template renders no tools, so
``ChatSemGrad.bind_tools`` refuses it), so the tool-call step is a small rule (``ToolRouterChat``:
every question is looked up first); the answers are the model's own. With a model that can call
tools (Qwen2.5, Llama 3.1, Mistral Instruct, ...), pass ``ChatSemGrad`` itself to ``create_agent``.

Run: ``python cookbook/langchain_agent_guard.py`` (needs ``semgrad-guard fetch-default-model``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatResult
from langchain_core.tools import tool
from langchain_semgrad import ChatSemGrad, SemGradMiddleware, read_payload
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from pydantic import ConfigDict
from rich.console import Console
from rich.table import Table

from semgrad_guard.guard.calibration import Calibrator
from semgrad_guard.guard.policy import GuardPolicy
from semgrad_guard.review.queue import SQLiteReviewQueue

DOCS = Path(__file__).parent / "data" / "orbitra_docs.jsonl"

# Bands over calibrated confidence (the shipped calibrator): cookbook/policies/with_retry.yaml.
POLICY = GuardPolicy.from_yaml(Path(__file__).parent / "policies" / "with_retry.yaml").model_copy(
    update={"abstain_message": "I don't know that; please ask at the information desk."}
)

QUESTIONS = [
    "Who founded the Orbitra Science Museum?",
    "How much does an adult ticket cost?",
    "Who is the museum's current director?",
]


def load_docs() -> list[dict[str, str]]:
    return [json.loads(line) for line in DOCS.read_text().splitlines() if line.strip()]


@tool
def museum_info(topic: str) -> str:
    """Look up facts about the Orbitra Science Museum (hours, tickets, history, ...)."""
    words = {w.strip("?.,'").lower() for w in topic.split() if len(w) > 3}
    ranked = sorted(load_docs(), key=lambda d: -len(words & set(d["text"].lower().replace(".", " ").split())))
    return "\n".join(d["text"] for d in ranked[:2])


class ToolRouterChat(BaseChatModel):
    """First turn: call ``museum_info`` with the question. After the tool: ChatSemGrad answers from its result."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    answerer: ChatSemGrad

    @property
    def _llm_type(self) -> str:
        return "tool-router"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ToolRouterChat:
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        question = next(m for m in reversed(messages) if isinstance(m, HumanMessage))
        if not isinstance(messages[-1], ToolMessage):
            call = {"name": "museum_info", "args": {"topic": question.text}, "id": f"call_{len(messages)}"}
            return ChatResult(generations=[self._gen(AIMessage(content="", tool_calls=[call]))])
        context = messages[-1].text
        prompt = [SystemMessage(f"Answer the question using only this information:\n{context}"), question]
        return self.answerer._generate(prompt, stop=stop, **kwargs)

    @staticmethod
    def _gen(message: AIMessage) -> Any:
        from langchain_core.outputs import ChatGeneration

        return ChatGeneration(message=message)


def run(
    questions: Sequence[str] = QUESTIONS,
    *,
    max_tokens: int = 40,
    review_db: str | None = None,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    console = console or Console()
    answerer = ChatSemGrad(model="default", max_tokens=max_tokens)
    scorer = answerer.scorer
    db = review_db or str(Path(tempfile.mkdtemp(prefix="semgrad-agent-")) / "review.db")
    queue = SQLiteReviewQueue(db)
    calibrator = Calibrator.default_for(scorer.model_id)
    middleware = SemGradMiddleware(scorer, POLICY, calibrator=calibrator, review_queue=queue)
    agent = create_agent(
        ToolRouterChat(answerer=answerer),
        tools=[museum_info],
        middleware=[middleware],
        checkpointer=InMemorySaver(),
    )

    rows: list[dict[str, Any]] = []
    for i, question in enumerate(questions):
        config = {"configurable": {"thread_id": f"q{i}"}}
        state = agent.invoke({"messages": [HumanMessage(question)]}, config)
        human = None
        if "__interrupt__" in state:
            # The graph is paused on a review; a person decides (here: edits in the desk's answer).
            request = state["__interrupt__"][0].value
            console.print(
                f"[yellow]paused for review[/] #{request['review_id']}: {request['answer']!r} (rule {request['rule']})"
            )
            human = {
                "action": "edit",
                "answer": "I'll ask the museum staff and get back to you.",
                "reviewer": "desk",
            }
            state = agent.invoke(Command(resume=human), config)
        final = state["messages"][-1]
        payload = read_payload(final) or {}
        tools_used = sum(isinstance(m, ToolMessage) for m in state["messages"])
        rows.append(
            {
                "question": question,
                "answer": final.text,
                "model_answer": payload.get("answer"),
                "action": payload.get("action"),
                "rule": payload.get("rule"),
                "attempts": payload.get("attempts"),
                "scores": payload.get("scores"),
                "confidence": payload.get("confidence"),
                "review_status": payload.get("review_status"),
                "tool_calls": tools_used,
                "human": human,
            }
        )

    table = Table(title="Agent answers guarded by SemGradMiddleware (SmolLM2-135M-Instruct)")
    for col in ("question", "tool calls", "model answer", "confidence", "semgrad", "action", "final answer"):
        table.add_column(col, overflow="fold")
    for r in rows:
        s = r["scores"] or {}
        action = r["action"] + (f" ({r['review_status']})" if r["review_status"] else "")
        if r["attempts"] and r["attempts"] > 1:
            action = f"retry x{r['attempts'] - 1} -> {action}"
        table.add_row(
            r["question"],
            str(r["tool_calls"]),
            r["model_answer"] or "",
            f"{r['confidence']:.2f}" if r["confidence"] is not None else "n/a",
            f"{s.get('semgrad', float('nan')):.2e}",
            action,
            r["answer"],
        )
    console.print(table)
    console.print(f"review queue: {db} ({len(queue)} item(s))")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--review-db", default=None, help="SQLite review queue (default: a temporary file)")
    parser.add_argument("--summary", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    logging.getLogger("semgrad_guard").setLevel(logging.ERROR)
    rows = run(max_tokens=args.max_tokens, review_db=args.review_db)
    if args.summary:
        Path(args.summary).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
