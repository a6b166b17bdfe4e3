"""Normalising chats: a plain string is one user message; roles are checked up front."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from .errors import ScoringError, UnknownRoleError

Message: TypeAlias = dict[str, Any]
Messages: TypeAlias = str | Sequence[Mapping[str, Any]]

KNOWN_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def normalize_messages(messages: Messages) -> list[Message]:
    """Return ``messages`` as a list of ``{"role", "content"}`` dicts.

    A plain string becomes one user message. Roles outside :data:`KNOWN_ROLES` raise
    :class:`UnknownRoleError`; a message without ``role`` or ``content`` raises :class:`ScoringError`.

    Example:
        >>> normalize_messages("What is 2+2?")
        [{'role': 'user', 'content': 'What is 2+2?'}]
    """
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, Sequence) or isinstance(messages, bytes):
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
            content = ""
        if not isinstance(content, str):
            raise ScoringError(f"messages[{i}]['content'] must be a string, got {type(content).__name__}")
        msg = dict(m)
        msg["content"] = content
        out.append(msg)
    if not out:
        raise ScoringError("messages is empty: give at least one user message")
    return out
