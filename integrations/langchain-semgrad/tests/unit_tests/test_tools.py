"""ChatSemGrad with tools: bind_tools, each tool-call format, ToolMessages in history, create_agent end to end."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_semgrad import (
    AsyncSemGradCallbackHandler,
    ChatSemGrad,
    SemGradCallbackHandler,
    SemGradMiddleware,
    read_payload,
    read_score,
)
from langchain_semgrad.messages import to_chat
from pydantic import BaseModel

from semgrad_guard import MockScorer
from semgrad_guard.errors import ConfigurationError, ToolCallingUnsupportedError, ToolCallParseError
from semgrad_guard.guard.policy import GuardPolicy
from semgrad_guard.scoring.tool_calls import generate_tool_turn
from semgrad_guard.testing.tools import TOOL_FORMATS, ScriptedGeneration
from tests._shared import tiny_scorer_once, tiny_tool_scorer_once


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


CALLS = {
    "hermes": '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>',
    "llama3": '{"name": "add", "parameters": {"a": 2, "b": 3}}',
    "mistral": '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 2, "b": 3}, "id": "a1b2c3d4e"}]',
}
ANSWER = "2 + 3 = 5."
ACCEPT_ALL = GuardPolicy.from_dict({"rules": [{"name": "ok", "field": "semgrad", "action": "accept"}]})


def scorer_for(fmt: str) -> Any:
    return tiny_tool_scorer_once(fmt)


# -- bind_tools -----------------------------------------------------------------------------------------
def test_bind_tools_converts_tools_to_openai_format() -> None:
    class Multiply(BaseModel):
        """Multiply two integers."""

        a: int
        b: int

    chat = ChatSemGrad(scorer=scorer_for("hermes"))
    bound: Any = chat.bind_tools([add, Multiply, {"type": "function", "function": {"name": "noop"}}])
    assert [t["function"]["name"] for t in bound.kwargs["tools"]] == ["add", "Multiply", "noop"]
    assert bound.kwargs["tools"][0]["function"]["parameters"]["required"] == ["a", "b"]


def test_tool_choice_narrows_or_drops_the_tools() -> None:
    chat = ChatSemGrad(scorer=scorer_for("hermes"))

    def names(**kw: Any) -> list[str] | None:
        tools = chat.bind_tools([add, {"type": "function", "function": {"name": "noop"}}], **kw).kwargs[
            "tools"
        ]  # type: ignore[attr-defined]
        return None if tools is None else [t["function"]["name"] for t in tools]

    assert names() == ["add", "noop"]
    assert names(tool_choice="any") == ["add", "noop"]
    assert names(tool_choice="noop") == ["noop"]
    assert names(tool_choice={"type": "function", "function": {"name": "add"}}) == ["add"]
    assert names(tool_choice="none") is None
    with pytest.raises(ConfigurationError, match="names no bound tool"):
        names(tool_choice="search")


@pytest.mark.parametrize(
    ("choice", "force"),
    [
        (None, False),
        ("auto", False),
        ("any", True),
        ("required", True),
        (True, True),
        ("add", "add"),
        ({"type": "function", "function": {"name": "add"}}, "add"),
    ],
)
@pytest.mark.parametrize("how", ["invoke", "ainvoke", "stream", "astream"])
def test_tool_choice_forces_the_call_on_every_path(
    monkeypatch: Any, choice: Any, force: Any, how: str
) -> None:
    """What bind_tools' tool_choice forces reaches generate_tool_turn, sync, async and streamed."""
    import asyncio

    from langchain_semgrad import chat_models

    seen: list[Any] = []

    def spy(scorer: Any, chat: Any, tools: Any, *, force: Any = False, **kw: Any) -> Any:
        seen.append(force)
        return generate_tool_turn(scorer, chat, tools, **kw)

    monkeypatch.setattr(chat_models, "generate_tool_turn", spy)
    scorer = MockScorer(lambda m, a: 0.1, answers=[CALLS["hermes"]])
    bound = ChatSemGrad(scorer=scorer).bind_tools([add], tool_choice=choice)
    if how == "invoke":
        bound.invoke("2 + 3?")
    elif how == "ainvoke":
        asyncio.run(bound.ainvoke("2 + 3?"))
    elif how == "stream":
        list(bound.stream("2 + 3?"))
    else:

        async def consume() -> None:
            async for _ in bound.astream("2 + 3?"):
                pass

        asyncio.run(consume())
    assert seen == [force]


def test_a_model_that_cannot_call_tools_is_named_in_the_error() -> None:
    chat = ChatSemGrad(scorer=tiny_scorer_once("llama"))  # its chat template ignores tools
    with pytest.raises(ToolCallingUnsupportedError, match="tiny-random-llama cannot call tools"):
        chat.bind_tools([add])


# -- each format --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", TOOL_FORMATS)
def test_each_format_becomes_an_ai_message_with_tool_calls(fmt: str) -> None:
    scorer = scorer_for(fmt)
    chat = ChatSemGrad(scorer=scorer, max_tokens=64).bind_tools([add])
    with ScriptedGeneration(scorer, [CALLS[fmt]]):
        msg = chat.invoke("What is 2 + 3?")
    assert isinstance(msg, AIMessage)
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("add", {"a": 2, "b": 3})]
    assert msg.content == ""
    payload = read_payload(msg)
    assert payload is not None and payload["turn"] == "tool_call"  # flagged: not an answer
    assert msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] > 5


@pytest.mark.parametrize("fmt", TOOL_FORMATS)
def test_tool_results_render_through_the_template_and_the_answer_is_scored(fmt: str) -> None:
    scorer = scorer_for(fmt)
    tools = [add]
    chat = ChatSemGrad(scorer=scorer, max_tokens=64).bind_tools(tools)
    call_id = "a1b2c3d4e"
    history = [
        HumanMessage("What is 2 + 3?"),
        AIMessage(content="", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": call_id}]),
        ToolMessage("5", tool_call_id=call_id, name="add"),
    ]
    with ScriptedGeneration(scorer, [ANSWER]):
        msg = chat.invoke(history)
    assert msg.content == ANSWER and not msg.tool_calls
    payload = read_payload(msg)
    assert payload is not None and payload["turn"] is None
    # The score is that of this answer after this history with the tools rendered.
    bound = scorer.with_tools(chat.kwargs["tools"])  # type: ignore[attr-defined]
    prompt = bound.render_prompt(to_chat(history))
    assert "5" in prompt.split("What is 2 + 3?")[1]  # the tool result reached the prompt
    assert '"name": "add"' in prompt
    result = read_score(msg)
    assert result is not None and result.prompt_tokens == len(bound.prompt_ids(to_chat(history)))


def test_to_chat_carries_tool_calls_and_tool_results() -> None:
    chat = to_chat(
        [
            AIMessage(content="", tool_calls=[{"name": "add", "args": {"a": 1}, "id": "c1"}]),
            ToolMessage("1", tool_call_id="c1", name="add"),
        ]
    )
    assert chat == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "id": "c1", "function": {"name": "add", "arguments": {"a": 1}}}
            ],
        },
        {"role": "tool", "content": "1", "tool_call_id": "c1", "name": "add"},
    ]


def test_streaming_and_async_give_the_same_tool_calls() -> None:
    import asyncio

    scorer = scorer_for("hermes")
    chat = ChatSemGrad(scorer=scorer, max_tokens=64).bind_tools([add])
    with ScriptedGeneration(scorer, [CALLS["hermes"]] * 3):
        plain = chat.invoke("What is 2 + 3?")
        chunks = list(chat.stream("What is 2 + 3?"))
        amsg = asyncio.run(chat.ainvoke("What is 2 + 3?"))
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [("add", {"a": 2, "b": 3})]  # type: ignore[attr-defined]
    assert [(c["name"], c["args"]) for c in amsg.tool_calls] == [("add", {"a": 2, "b": 3})]
    assert read_score(full) == read_score(plain) == read_score(amsg)


def test_a_malformed_call_raises_a_typed_error() -> None:
    scorer = scorer_for("hermes")
    chat = ChatSemGrad(scorer=scorer, max_tokens=64).bind_tools([add])
    script = ScriptedGeneration(scorer, ['<tool_call>{"name": "add", "arguments": {"a": 2</tool_call>'])
    with script, pytest.raises(ToolCallParseError):
        chat.invoke("What is 2 + 3?")


def test_a_mock_scorer_can_script_tool_calls() -> None:
    scorer = MockScorer(lambda m, a: 0.1, answers=[CALLS["hermes"], ANSWER])
    chat = ChatSemGrad(scorer=scorer).bind_tools([add])
    assert chat.invoke("2 + 3?").tool_calls[0]["name"] == "add"  # type: ignore[attr-defined]
    assert chat.invoke("2 + 3?").content == ANSWER


def test_callback_handler_skips_tool_call_turns_and_scores_answers() -> None:
    scorer = scorer_for("hermes")
    handler = SemGradCallbackHandler(MockScorer(lambda m, a: 0.3))
    chat = ChatSemGrad(scorer=scorer, max_tokens=64).bind_tools([add])
    with ScriptedGeneration(scorer, [f"Let me add them. {CALLS['hermes']}"]):
        msg = chat.invoke("What is 2 + 3?", config={"callbacks": [handler]})
    assert msg.content == "Let me add them."
    assert msg.tool_calls
    assert handler.results == {}  # text next to tool calls is not an answer
    assert "tool-call message" in next(iter(handler.skipped.values()))


# -- create_agent end to end ------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", TOOL_FORMATS)
def test_create_agent_calls_the_tool_then_answers_and_the_answer_is_scored(fmt: str) -> None:
    scorer = scorer_for(fmt)
    seen: list[int] = []

    @tool
    def add_numbers(a: int, b: int) -> int:
        """Add two integers."""
        seen.append(a + b)
        return a + b

    call = CALLS[fmt].replace('"add"', '"add_numbers"')
    middleware = SemGradMiddleware(scorer, ACCEPT_ALL)
    agent = create_agent(
        ChatSemGrad(scorer=scorer, max_tokens=64), tools=[add_numbers], middleware=[middleware]
    )
    with ScriptedGeneration(scorer, [call, ANSWER]) as script:
        state = agent.invoke({"messages": [HumanMessage("What is 2 + 3?")]})
    assert script.calls == 2
    assert seen == [5]  # the tool really ran
    kinds = [type(m).__name__ for m in state["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    tool_turn, tool_result, final = state["messages"][1:]
    assert tool_turn.tool_calls[0]["name"] == "add_numbers"
    assert tool_result.content == "5" and tool_result.tool_call_id == tool_turn.tool_calls[0]["id"]
    assert final.content == ANSWER
    # The tool-call turn was not guarded; the final answer was, with ChatSemGrad's own score.
    assert len(middleware.results) == 1
    assert middleware.results[0].answer == ANSWER
    final_payload = read_payload(final)
    assert final_payload is not None and final_payload["action"] == "accept"
    assert read_score(final) is not None
    assert middleware.results[0].result == read_score(final)
    assert json.dumps(final_payload)  # JSON-able, survives checkpoints


async def test_create_agent_async_end_to_end() -> None:
    scorer = scorer_for("hermes")
    middleware = SemGradMiddleware(scorer, ACCEPT_ALL)
    agent = create_agent(ChatSemGrad(scorer=scorer, max_tokens=64), tools=[add], middleware=[middleware])
    with ScriptedGeneration(scorer, [CALLS["hermes"], ANSWER]):
        state = await agent.ainvoke({"messages": [HumanMessage("What is 2 + 3?")]})
    assert [type(m).__name__ for m in state["messages"]][-2:] == ["ToolMessage", "AIMessage"]
    assert state["messages"][-1].content == ANSWER
    assert len(middleware.results) == 1


def test_generate_tool_turn_is_what_chat_semgrad_uses() -> None:
    scorer = scorer_for("llama3")
    tools = ChatSemGrad(scorer=scorer).bind_tools([add]).kwargs["tools"]  # type: ignore[attr-defined]
    with ScriptedGeneration(scorer, [CALLS["llama3"]] * 2):
        turn, result = generate_tool_turn(scorer, "What is 2 + 3?", tools, max_new_tokens=64, do_sample=False)
        msg = ChatSemGrad(scorer=scorer, max_tokens=64).bind_tools([add]).invoke("What is 2 + 3?")
    assert read_score(msg) == result
    assert msg.tool_calls[0]["args"] == turn.tool_calls[0].arguments  # type: ignore[attr-defined]


@pytest.mark.parametrize("fmt", ["hermes", "llama3"])
async def test_callback_scores_the_final_answer_with_the_bound_tools_in_the_prompt(fmt: str) -> None:
    scorer = scorer_for(fmt)
    chat = ChatSemGrad(scorer=scorer, max_tokens=64).bind_tools([add])
    history = [
        HumanMessage("What is 2 + 3?"),
        AIMessage(content="", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "a1b2c3d4e"}]),
        ToolMessage("5", tool_call_id="a1b2c3d4e", name="add"),
    ]
    sync_handler, async_handler = SemGradCallbackHandler(scorer), AsyncSemGradCallbackHandler(scorer)
    with ScriptedGeneration(scorer, [ANSWER] * 3):
        own = read_score(chat.invoke(history))  # ChatSemGrad's score of the generated ids
        chat.invoke(history, config={"callbacks": [sync_handler]})
        await chat.ainvoke(history, config={"callbacks": [async_handler]})
    for handler in (sync_handler, async_handler):
        # The handler re-renders the prompt with the run's tools (from invocation_params).
        got = handler.last_result
        assert own is not None and got is not None
        assert got.prompt_tokens == own.prompt_tokens and got.answer_tokens == own.answer_tokens
        assert got.semgrad == pytest.approx(own.semgrad, rel=1e-3, abs=1e-9)


def test_with_structured_output_reads_the_call_as_the_schema() -> None:
    class Sum(BaseModel):
        """The sum of two integers."""

        a: int
        b: int

    scorer = scorer_for("hermes")
    structured = ChatSemGrad(scorer=scorer, max_tokens=64).with_structured_output(Sum, include_raw=True)
    with ScriptedGeneration(
        scorer, ['<tool_call>{"name": "Sum", "arguments": {"a": 2, "b": 3}}</tool_call>']
    ):
        out: Any = structured.invoke("Split 5 into two integers.")
    assert out["parsed"] == Sum(a=2, b=3)
    assert read_payload(out["raw"])["turn"] == "tool_call"  # type: ignore[index]
