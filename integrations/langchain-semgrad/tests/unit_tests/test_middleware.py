"""SemGradMiddleware in a real LangChain 1.x create_agent graph with a scripted tool-calling fake model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_semgrad import REVIEW_INTERRUPT_TYPE, SemGradMiddleware, read_payload
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from semgrad_guard import MockScorer
from semgrad_guard.errors import ConfigurationError
from semgrad_guard.guard.policy import GuardPolicy
from semgrad_guard.review.queue import SQLiteReviewQueue

POLICY = GuardPolicy.from_dict(
    {
        "rules": [
            {"name": "ok", "field": "semgrad", "max": 0.3, "action": "accept"},
            {"name": "again", "field": "semgrad", "max": 0.6, "action": "retry"},
            {"name": "human", "field": "semgrad", "max": 0.9, "action": "review"},
            {"name": "no", "field": "semgrad", "action": "abstain"},
        ],
        "retry": {"max_attempts": 2, "strategy": "reconsider", "on_exhausted": "abstain"},
        "abstain_message": "I cannot answer that reliably.",
    }
)
TABLE = {"Canberra": 0.1, "Sydney": 0.5, "Perth": 0.8, "Atlantis": 0.95}


class ScriptedToolModel(GenericFakeChatModel):
    """A fake chat model that can be bound to tools (create_agent binds them)."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedToolModel:
        return self


@tool
def lookup(query: str) -> str:
    """Look up a fact."""
    return "Canberra is the capital of Australia."


def tool_call() -> AIMessage:
    return AIMessage(
        content="", tool_calls=[{"name": "lookup", "args": {"query": "capital"}, "id": "call_1"}]
    )


def script(*answers: str) -> Iterator[AIMessage]:
    return iter([tool_call(), *(AIMessage(content=a) for a in answers)])


def agent(
    answers: Iterator[AIMessage], scorer: MockScorer, tmp_path: Path, *, checkpointer: Any = None, **kw: Any
) -> Any:
    middleware = SemGradMiddleware(scorer, POLICY, review_queue=SQLiteReviewQueue(tmp_path / "r.db"), **kw)
    graph = create_agent(
        ScriptedToolModel(messages=answers),
        tools=[lookup],
        middleware=[middleware],
        checkpointer=checkpointer,
    )
    return graph, middleware


def scorer() -> MockScorer:
    return MockScorer(lambda m, a: TABLE[a])


def test_tool_calls_pass_unscored_and_final_answer_is_scored(tmp_path: Path) -> None:
    s = scorer()
    graph, mw = agent(script("Canberra"), s, tmp_path)
    out = graph.invoke({"messages": [HumanMessage("Capital of Australia?")]})
    final = out["messages"][-1]
    assert final.content == "Canberra"
    assert read_payload(final)["action"] == "accept"
    assert isinstance(out["messages"][2], ToolMessage)  # the tool ran
    assert [a for _, a in s.calls] == ["Canberra"]  # only the final answer was scored
    # the scored chat is the agent's context: question, tool call turn, tool result
    assert [m["role"] for m in s.calls[0][0]] == ["user", "assistant", "tool"]
    assert len(mw.results) == 1


def test_retry_reconsiders_then_accepts(tmp_path: Path) -> None:
    s = scorer()
    graph, mw = agent(script("Sydney", "Canberra"), s, tmp_path)
    out = graph.invoke({"messages": [HumanMessage("Capital of Australia?")]})
    assert out["messages"][-1].content == "Canberra"
    assert [a.answer for a in mw.results[0].attempts] == ["Sydney", "Canberra"]
    assert mw.results[0].attempts[1].strategy == "reconsider"


def test_abstain_replaces_the_answer(tmp_path: Path) -> None:
    graph, _ = agent(script("Atlantis"), scorer(), tmp_path)
    out = graph.invoke({"messages": [HumanMessage("Capital of Australia?")]})
    assert out["messages"][-1].content == "I cannot answer that reliably."
    assert read_payload(out["messages"][-1])["answer"] == "Atlantis"


@pytest.mark.parametrize(
    ("resume", "text", "status"),
    [
        ("approve", "Perth", "approved"),
        ({"action": "edit", "answer": "Canberra", "reviewer": "ana"}, "Canberra", "edited"),
        ("reject", "I cannot answer that reliably.", "rejected"),
    ],
)
def test_review_interrupts_and_resumes_without_rescoring(
    tmp_path: Path, resume: Any, text: str, status: str
) -> None:
    s = scorer()
    graph, mw = agent(script("Perth"), s, tmp_path, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    paused = graph.invoke({"messages": [HumanMessage("Capital of Australia?")]}, config)
    (intr,) = paused["__interrupt__"]
    assert intr.value["type"] == REVIEW_INTERRUPT_TYPE
    assert intr.value["answer"] == "Perth" and intr.value["rule"] == "human"
    assert intr.value["scores"]["semgrad"] == 0.8
    calls_before = len(s.calls)
    done = graph.invoke(Command(resume=resume), config)
    assert len(s.calls) == calls_before  # resumed from the checkpointed scores: no scoring again
    final = done["messages"][-1]
    assert final.content == text
    assert read_payload(final)["review_status"] == status
    item = mw.guard.review_queue.get(intr.value["review_id"])
    assert item.status.value == status
    assert (
        len([m for m in done["messages"] if isinstance(m, AIMessage) and m.content]) == 1
    )  # replaced, not appended


def test_bad_resume_value_is_a_clear_error(tmp_path: Path) -> None:
    graph, _ = agent(script("Perth"), scorer(), tmp_path, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t2"}}
    graph.invoke({"messages": [HumanMessage("q")]}, config)
    with pytest.raises(ConfigurationError, match="resume a SemGrad review"):
        graph.invoke(Command(resume="maybe"), config)


def test_review_without_checkpointer_queues_and_returns_pending(tmp_path: Path) -> None:
    graph, mw = agent(script("Perth"), scorer(), tmp_path)
    out = graph.invoke({"messages": [HumanMessage("q")]})
    assert "__interrupt__" not in out
    assert out["messages"][-1].content == POLICY.review.pending_message
    assert mw.guard.review_queue.get(mw.results[0].review_id).answer == "Perth"


async def test_async_agent(tmp_path: Path) -> None:
    graph, mw = agent(script("Sydney", "Canberra"), scorer(), tmp_path, checkpointer=InMemorySaver())
    out = await graph.ainvoke({"messages": [HumanMessage("q")]}, {"configurable": {"thread_id": "a"}})
    assert out["messages"][-1].content == "Canberra" and len(mw.results[0].attempts) == 2


def test_bad_review_mode() -> None:
    with pytest.raises(ConfigurationError, match="review must be"):
        SemGradMiddleware(scorer(), POLICY, review="sometimes")  # type: ignore[arg-type]


def test_langgraph_control_flow_is_never_retried_by_a_guard() -> None:
    # Importing the adapter registers LangGraph's GraphBubbleUp with the core (which imports no framework).
    from langgraph.errors import GraphInterrupt, ParentCommand

    from semgrad_guard.guard.guard import is_stop_exception

    assert is_stop_exception(GraphInterrupt()) and is_stop_exception(ParentCommand(None))  # type: ignore[arg-type]


def test_review_queue_named_by_a_path_string(tmp_path: Path) -> None:
    """review_queue= takes what the core takes: a queue, a path or a postgresql:// URL."""
    db = tmp_path / "named.db"
    middleware = SemGradMiddleware(scorer(), POLICY, review_queue=str(db))
    graph = create_agent(ScriptedToolModel(messages=script("Perth")), tools=[lookup], middleware=[middleware])
    graph.invoke({"messages": [HumanMessage("q")]})
    with SQLiteReviewQueue(db) as q:
        assert [it.answer for it in q.list()] == ["Perth"]
