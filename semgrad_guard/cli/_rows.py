"""Reading the JSONL files the commands take (labelled answers, calibration data) and their chats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError


def read_jsonl_rows(path: Path, option: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, each with its line number under ``"_line"``.

    Raises ConfigurationError naming ``option`` (e.g. ``--data``) for a missing or empty file, and the
    line for invalid JSON or a line that is not an object.
    """
    if not path.is_file():
        raise ConfigurationError(f"{option} {path} does not exist")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigurationError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise ConfigurationError(f"{path}:{lineno}: expected a JSON object")
        row["_line"] = lineno
        rows.append(row)
    if not rows:
        raise ConfigurationError(f"{option} {path} holds no rows")
    return rows


def row_chat(row: dict[str, Any], system_prompt: str | None, user_template: str) -> Any:
    """A row's chat: its ``messages``, or its ``question`` (or ``query``) rendered as in deployment; None if neither."""
    if "messages" in row:
        return row["messages"]
    question = row.get("question", row.get("query"))
    if not isinstance(question, str):
        return None
    chat = [{"role": "system", "content": system_prompt}] if system_prompt else []
    chat.append({"role": "user", "content": user_template.replace("{question}", question)})
    return chat
