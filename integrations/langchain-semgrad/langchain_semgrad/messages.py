"""Turning LangChain messages and inputs into semgrad-guard chats (``[{"role", "content"}]``).

The scorer re-renders the prompt with its own tokenizer and chat template, so all an adapter
has to hand over is the roles and the text of each message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    convert_to_messages,
)
from langchain_core.prompt_values import PromptValue

from semgrad_guard import ScoringError

_ROLE_BY_TYPE: dict[type[BaseMessage], str] = {
    SystemMessage: "system",
    HumanMessage: "user",
    AIMessage: "assistant",
    ToolMessage: "tool",
    FunctionMessage: "tool",
}


def message_text(message: BaseMessage) -> str:
    """The plain text of a message (text blocks joined; images and other blocks dropped)."""
    content = message.content
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return "".join(parts)


def message_role(message: BaseMessage) -> str:
    """The chat-template role of a LangChain message."""
    for cls, role in _ROLE_BY_TYPE.items():
        if isinstance(message, cls):
            return role
    if isinstance(message, ChatMessage):
        return {"human": "user", "ai": "assistant"}.get(message.role, message.role)
    raise ScoringError(f"cannot score a {type(message).__name__}: no chat role for it")


def to_chat(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages -> ``[{"role", "content"}]`` (AIMessage chunks count as assistant turns).

    An AI message's tool calls go along as ``tool_calls`` and a tool result carries its
    ``tool_call_id`` and tool ``name``, in the shape chat templates render (transformers' convention).

    Example:
        >>> from langchain_core.messages import HumanMessage, SystemMessage
        >>> to_chat([SystemMessage("Be brief."), HumanMessage("Hi")])
        [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]
    """
    return [_chat_message(m) for m in messages]


def _chat_message(message: BaseMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message_role(message), "content": message_text(message)}
    if isinstance(message, AIMessage) and message.tool_calls:
        out["tool_calls"] = [
            {"type": "function", "id": c.get("id"), "function": {"name": c["name"], "arguments": c["args"]}}
            for c in message.tool_calls
        ]
    elif isinstance(message, ToolMessage):
        out["tool_call_id"] = message.tool_call_id
        if message.name:
            out["name"] = message.name
    return out


def input_to_chat(value: Any) -> list[dict[str, Any]]:
    """Any chat-model input (str, PromptValue, list of messages / tuples / dicts) -> chat dicts."""
    if isinstance(value, PromptValue):
        return to_chat(value.to_messages())
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, dict) and "messages" in value:
        return input_to_chat(value["messages"])
    if isinstance(value, Sequence):
        if all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
            return [{"role": m["role"], "content": m["content"]} for m in value]
        return to_chat(convert_to_messages(value))
    raise ScoringError(
        f"cannot read a chat from {type(value).__name__}: give a string, a PromptValue or a list of messages"
    )


def is_tool_call_turn(message: BaseMessage) -> bool:
    """True for an AI message that calls tools: an intermediate step, not an answer to score.

    Text next to the calls ("Let me look that up.") is not the answer either: the agent loop runs
    the tools and asks the model again.
    """
    return isinstance(message, AIMessage) and bool(message.tool_calls)
