"""Evaluation data (JSONL questions with reference answers) and the prompt template. No torch.

Each line is a JSON object with a question (``query`` or ``question``) and one or more reference
answers (``truthful answer`` or ``answers``; a single string is accepted too). An ``id`` field is
used when present, else the line number.

Example:
    >>> t = PromptTemplate(system="Answer briefly.", user="Q: {question}")
    >>> t.messages("Why is the sky blue?")
    [{'role': 'system', 'content': 'Answer briefly.'}, {'role': 'user', 'content': 'Q: Why is the sky blue?'}]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import ConfigurationError

QUESTION_KEYS: tuple[str, ...] = ("query", "question")
ANSWER_KEYS: tuple[str, ...] = ("truthful answer", "answers", "answer")

DEFAULT_SYSTEM_PROMPT = "Answer the question with a short phrase, without explanation."
"""Short answers keep generation cheap and correctness rules meaningful on short-answer QA."""


class Question(BaseModel):
    """One evaluation example."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Stable id: the file's 'id' field, else the 0-based line number.")
    question: str = Field(description="The question text.")
    references: list[str] = Field(min_length=1, description="Reference answers (any one counts).")


class PromptTemplate(BaseModel):
    """How a question becomes a chat: optional system prompt and a user-message template."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    system: str | None = Field(default=DEFAULT_SYSTEM_PROMPT, description="System prompt; None for none.")
    user: str = Field(default="{question}", description="User message template with a '{question}' field.")

    @field_validator("user")
    @classmethod
    def _has_field(cls, v: str) -> str:
        if "{question}" not in v:
            raise ValueError("the user template must contain '{question}'")
        return v

    def messages(self, question: str) -> list[dict[str, str]]:
        """The chat for one question."""
        out = [{"role": "system", "content": self.system}] if self.system else []
        out.append({"role": "user", "content": self.user.replace("{question}", question)})
        return out


def _first(obj: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        if k in obj:
            return obj[k]
    return None


def load_questions(path: str | Path, *, limit: int | None = None) -> list[Question]:
    """Read questions from JSONL; ``limit`` keeps the first N. Malformed lines raise ConfigurationError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigurationError(f"data file {p} does not exist")
    out: list[Question] = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f):
            if limit is not None and len(out) >= limit:
                break
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigurationError(f"{p}:{lineno + 1}: not valid JSON ({e.msg})") from e
            q = _first(obj, QUESTION_KEYS) if isinstance(obj, dict) else None
            refs = _first(obj, ANSWER_KEYS) if isinstance(obj, dict) else None
            if not isinstance(q, str) or not q.strip():
                raise ConfigurationError(f"{p}:{lineno + 1}: no question (expected one of {QUESTION_KEYS})")
            if isinstance(refs, str):
                refs = [refs]
            if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
                raise ConfigurationError(
                    f"{p}:{lineno + 1}: no reference answers (expected a string or list under one of {ANSWER_KEYS})"
                )
            out.append(Question(id=str(obj.get("id", lineno)), question=q, references=refs))
    if not out:
        raise ConfigurationError(f"data file {p} holds no questions")
    ids = [q.id for q in out]
    if len(set(ids)) != len(ids):
        raise ConfigurationError(f"data file {p} has duplicate ids")
    return out


def load_labels(path: str | Path) -> dict[str, bool]:
    """Human labels overriding the rule: JSONL ``{"id": ..., "correct": true|false}`` or JSON ``{id: bool}``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigurationError(f"labels file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    labels: dict[str, bool] = {}
    try:
        if p.suffix == ".json":
            obj = json.loads(text)
            if not isinstance(obj, dict):
                raise ConfigurationError(f"labels file {p}: expected an object mapping id to true/false")
            items = list(obj.items())
        else:
            items = []
            for line in text.splitlines():
                if line.strip():
                    row = json.loads(line)
                    items.append((row["id"], row["correct"]))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigurationError(f"labels file {p} is malformed: {e}") from e
    for k, v in items:
        if not isinstance(v, bool):
            raise ConfigurationError(f"labels file {p}: label of {k!r} must be true or false, got {v!r}")
        labels[str(k)] = v
    return labels
