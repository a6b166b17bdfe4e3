"""AnswerFromToolResults in a real create_agent graph: the nudge reaches the model call after tool
results and only it, never the agent's state, and SemGradMiddleware scores the answer on it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_semgrad import AnswerFromToolResults, SemGradMiddleware, read_payload
from langchain_semgrad.middleware import ANSWER_PROMPT

from semgrad_guard import MockScorer
from semgrad_guard.errors import ConfigurationError
from semgrad_guard.guard.policy import GuardPolicy
from semgrad_guard.review.queue import SQLiteReviewQueue

POLICY = GuardPolicy.from_dict({"rules": [{"name": "ok", "field": "semgrad", "action": "accept"}]})


class RecordingToolModel(GenericFakeChatModel):
    """A scripted model bound to tools that records the messages of every call (async runs _generate)."""

    calls: list[list[BaseMessage]] = []

    def bind_tools(self, tools: Any, **kwargs: Any) -> RecordingToolModel:
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.calls.append(list(messages))
        return super()._generate(messages, *args, **kwargs)


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def scripted() -> RecordingToolModel:
    call = AIMessage(content="", tool_calls=[{"name": "multiply", "args": {"a": 7, "b": 12}, "id": "c1"}])
    return RecordingToolModel(messages=iter([call, AIMessage(content="7 times 12 is 84.")]), calls=[])


def build(model: RecordingToolModel, tmp_path: Path, seen: list[list[dict[str, Any]]]) -> tuple[Any, Any]:
    scorer = MockScorer(lambda m, a: seen.append(list(m)) or 0.1)
    guard = SemGradMiddleware(scorer, POLICY, review_queue=SQLiteReviewQueue(tmp_path / "r.db"))
    return create_agent(model, tools=[multiply], middleware=[AnswerFromToolResults(), guard]), guard


def check(model: RecordingToolModel, out: dict[str, Any], seen: list[list[dict[str, Any]]]) -> None:
    first, second = model.calls
    assert isinstance(first[-1], HumanMessage) and first[-1].content == "What is 7 times 12?"
    assert [type(m) for m in second[-3:]] == [AIMessage, ToolMessage, HumanMessage]
    assert second[-2].content == "84" and second[-1].content == ANSWER_PROMPT  # after the result
    # The agent's state (the conversation the user keeps) holds no nudge.
    assert [m.content for m in out["messages"] if isinstance(m, HumanMessage)] == ["What is 7 times 12?"]
    final = out["messages"][-1]
    assert final.content == "7 times 12 is 84." and read_payload(final)["action"] == "accept"
    # The answer was scored on the prompt the model saw: the nudge is its last user turn.
    assert seen and seen[-1][-1] == {"role": "user", "content": ANSWER_PROMPT}


def test_the_nudge_follows_tool_results_only_and_stays_out_of_the_state(tmp_path: Path) -> None:
    model, seen = scripted(), []
    graph, _ = build(model, tmp_path, seen)
    check(model, graph.invoke({"messages": [HumanMessage("What is 7 times 12?")]}), seen)


def test_the_nudge_async(tmp_path: Path) -> None:
    model, seen = scripted(), []
    graph, _ = build(model, tmp_path, seen)
    check(model, asyncio.run(graph.ainvoke({"messages": [HumanMessage("What is 7 times 12?")]})), seen)


def test_a_custom_prompt_and_an_empty_one() -> None:
    assert AnswerFromToolResults("Answer from the results.").prompt == "Answer from the results."
    with pytest.raises(ConfigurationError, match="prompt is empty"):
        AnswerFromToolResults("  ")
