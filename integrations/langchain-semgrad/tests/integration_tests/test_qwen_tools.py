"""Real tool calls on a real model: Qwen2.5-Coder-0.5B-Instruct (registry name, fetched by `make test`'s install)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_semgrad import ChatSemGrad
from langchain_semgrad.chat_models import _load_scorer
from langchain_semgrad.metadata import read_payload, read_score

from semgrad_guard import GuardPolicy, SQLiteReviewQueue

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QWEN = "qwen2.5-coder-0.5b"
SYSTEM = (
    "You are a helpful assistant. Call a tool when you need it; once a tool has returned, "
    "answer the user in one short sentence."
)
# Every answer is accepted but annotated with its rule, so the test sees the gate decide.
POLICY = GuardPolicy.from_dict(
    {
        "rules": [
            {"name": "low", "field": "semgrad", "max": 1e9, "action": "accept"},
            {"name": "no", "field": "semgrad", "action": "abstain"},
        ]
    }
)


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


@pytest.fixture(scope="module")
def qwen() -> Any:
    return _load_scorer(QWEN, "cpu")


def test_bind_tools_makes_a_parsed_call(qwen: Any) -> None:
    chat = ChatSemGrad(scorer=qwen, max_tokens=64)
    message = chat.bind_tools([multiply]).invoke("What is 17 times 23? Use the multiply tool.")
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("multiply", {"a": 17, "b": 23})]
    assert message.content == ""
    assert read_payload(message)["turn"] == "tool_call"  # an intermediate step, not an answer


def test_an_agent_runs_the_tool_and_finishes_with_a_scored_gated_answer(qwen: Any, tmp_path: Path) -> None:
    from langchain.agents import create_agent
    from langchain_semgrad import SemGradMiddleware

    chat = ChatSemGrad(scorer=qwen, max_tokens=64)
    middleware = SemGradMiddleware(qwen, POLICY, review_queue=SQLiteReviewQueue(tmp_path / "r.db"))
    agent = create_agent(chat, [multiply], system_prompt=SYSTEM, middleware=[middleware])
    out = agent.invoke(
        {"messages": [HumanMessage("What is 17 times 23? Use the multiply tool.")]}, {"recursion_limit": 8}
    )
    messages = out["messages"]
    tool_results = [m for m in messages if isinstance(m, ToolMessage)]
    assert tool_results and tool_results[0].content == "391"  # the tool ran on the parsed call
    final = messages[-1]
    assert isinstance(final, AIMessage) and not final.tool_calls
    assert "391" in final.content and "{" not in final.content  # an answer, not tool-call JSON
    assert read_score(final) is not None and read_payload(final)["action"] == "accept"
    assert len(middleware.results) == 1  # only the final answer went through the gate


def test_the_two_tool_cookbook_agent_calls_the_right_tool_and_gates_its_answers(qwen: Any) -> None:
    import runpy

    cookbook = runpy.run_path(str(Path(__file__).resolve().parents[4] / "cookbook" / "agent_two_tools.py"))
    rows = cookbook["run"]()
    assert len(rows) == len(cookbook["QUESTIONS"])
    for row, (question, tool_name) in zip(rows, cookbook["QUESTIONS"], strict=True):
        assert row["question"] == question
        assert [name for name, _ in row["tool_calls"]] == [tool_name]  # one call, to the right tool
        assert not row["final_is_tool_call"] and "<tool_call>" not in row["answer"]
        assert '"arguments"' not in row["answer"]  # never tool-call JSON passed off as an answer
        assert row["mean_nll"] is not None  # the final answer was scored...
        assert row["action"] in ("accept", "abstain")  # ...and gated
    product, founder = rows
    assert float(product["tool_results"][0]) == 84.0
    assert "Varga" in founder["tool_results"][0]
    if product["action"] == "accept":
        assert "84" in product["answer"]
