"""Request and response bodies of the scoring service (pydantic; no FastAPI).

The score itself travels as :class:`~semgrad_guard.payload.ScorePayload` JSON (``source="service"``), the
one payload every adapter writes, so a client reads it with :meth:`ScorePayload.read` whatever route it used.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ChatMessages = str | list[dict[str, Any]]


class ErrorBody(BaseModel):
    """Every error answer: the typed error's class name and what is wrong (and how to fix it)."""

    type: str = Field(description="Class name: a semgrad_guard.errors class, or the HTTP problem.")
    message: str = Field(description="What is wrong and how to fix it.")
    details: dict[str, Any] | None = Field(default=None, description="The error's data (token counts, ...).")


class ScoreRequest(BaseModel):
    """One (messages, answer) pair to score."""

    model_config = ConfigDict(extra="forbid")

    messages: ChatMessages = Field(
        description="The chat the answer replies to: a string or role/content dicts."
    )
    answer: str = Field(description="The answer to score.")
    model: str | None = Field(default=None, description="The model the caller expects (checked when given).")


class BatchScoreRequest(BaseModel):
    """Several pairs scored together (and grouped with other requests' pairs)."""

    model_config = ConfigDict(extra="forbid")

    items: list[ScoreRequest] = Field(min_length=1, description="The pairs, answered in the same order.")
    model: str | None = Field(default=None, description="The model the caller expects (checked when given).")


class BatchScoreResponse(BaseModel):
    """One score payload per item, in order."""

    items: list[dict[str, Any]]


class GenerateRequest(BaseModel):
    """Generate an answer with the served model and score it (what ``RemoteScorer.generate`` sends).

    Not guarded: the text is the model's own; the payload carries the policy's verdict for the caller's Guard.
    """

    model_config = ConfigDict(extra="forbid")

    messages: ChatMessages
    model: str | None = None
    max_new_tokens: int | None = Field(default=None, ge=1)
    do_sample: bool = False
    temperature: float = Field(default=1.0, gt=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None


class GenerateResponse(BaseModel):
    """The generated text and its score payload."""

    answer: str
    semgrad: dict[str, Any]


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The OpenAI chat-completions request, the fields this service honours.

    Fields OpenAI clients send by default and that change nothing here are accepted and ignored
    (``user``, ``metadata``, ``store``, ...); fields that would change the answer and are not supported
    (``n`` > 1, ``tools``, ``stop``, ``logprobs``, ``response_format``) are refused with 400.
    """

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    logprobs: bool | None = None
    response_format: dict[str, Any] | None = None

    def unsupported(self) -> list[str]:
        """Names of the given fields this service cannot honour."""
        out = []
        if self.n != 1:
            out.append("n (one choice per request)")
        if self.stop:
            out.append("stop")
        if self.tools:
            out.append("tools")
        if self.tool_choice not in (None, "none", "auto"):
            out.append("tool_choice")
        if self.logprobs:
            out.append("logprobs")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            out.append("response_format")
        return out


FinishReason = Literal["stop", "length"]
