"""Normalising chats: a plain string is one user message; roles are checked up front."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from .errors import ScoringError, UnknownRoleError

Message: TypeAlias = dict[str, Any]
Messages: TypeAlias = str | Sequence[Mapping[str, Any]]

KNOWN_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def check_text(value: Any, where: str) -> str:
    """Return ``value`` if it is a string a tokenizer can encode, else raise :class:`ScoringError`.

    ``where`` names the value in the message (``"answer"``, ``"messages[1]['content']"``).

    Example:
        >>> check_text("Canberra.", "answer")
        'Canberra.'
    """
    if not isinstance(value, str):
        hint = " (decode it first: data.decode('utf-8'))" if isinstance(value, (bytes, bytearray)) else ""
        raise ScoringError(f"{where} must be a string, got {type(value).__name__}{hint}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = value[e.start]
        raise ScoringError(
            f"{where} contains a lone surrogate {bad!r} at position {e.start}, which no tokenizer can encode; "
            "it usually comes from decoding bytes with errors='surrogateescape' or from a JSON '\\ud800' escape: "
            "clean it with text.encode('utf-8', 'replace').decode('utf-8')"
        ) from None
    return value


def normalize_messages(messages: Messages) -> list[Message]:
    """Return ``messages`` as a list of ``{"role", "content"}`` dicts.

    A plain string becomes one user message. Roles outside :data:`KNOWN_ROLES` raise
    :class:`UnknownRoleError`; a message without ``role`` or ``content``, content that is not a
    string, or text a tokenizer cannot encode (a lone surrogate) raises :class:`ScoringError`.
    An assistant message that carries ``tool_calls`` may leave ``content`` out or None (it becomes "").

    Example:
        >>> normalize_messages("What is 2+2?")
        [{'role': 'user', 'content': 'What is 2+2?'}]
    """
    if isinstance(messages, str):
        return [{"role": "user", "content": check_text(messages, "the prompt")}]
    if not isinstance(messages, Sequence) or isinstance(messages, (bytes, bytearray)):
        raise ScoringError(
            f"messages must be a string or a list of {{'role', 'content'}} dicts, got {type(messages).__name__}"
        )
    out: list[Message] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m:
            raise ScoringError(f"messages[{i}] must be a dict with 'role' and 'content', got {m!r:.80}")
        role = m["role"]
        if role not in KNOWN_ROLES:
            raise UnknownRoleError(
                f"messages[{i}] has unknown role {role!r}; use one of {sorted(KNOWN_ROLES)}"
            )
        content = m.get("content")
        if content is None:
            if role == "assistant" and m.get("tool_calls"):
                content = ""  # an assistant turn that only calls tools
            elif "content" not in m:
                raise ScoringError(
                    f"messages[{i}] ({role}) has no 'content'; give its text, e.g. "
                    f"{{'role': {role!r}, 'content': '...'}} (use '' for an intentionally empty message)"
                )
        content = check_text(content, f"messages[{i}]['content']")
        msg = dict(m)
        msg["content"] = content
        out.append(msg)
    if not out:
        raise ScoringError("messages is empty: give at least one user message")
    return out
