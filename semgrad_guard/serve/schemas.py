"""Request and response bodies of the scoring service (pydantic; no FastAPI).

The score itself travels as :class:`~semgrad_guard.payload.ScorePayload` JSON (``source="service"``), the
one payload every adapter writes, so a client reads it with :meth:`ScorePayload.read` whatever route it used.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt

ChatMessages = str | list[dict[str, Any]]

MIN_TEMPERATURE = 1e-3
"""Smallest sampling temperature (0 is greedy in chat completions): below it, logits / temperature
overflows float32 and sampling draws from NaNs."""
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
"""The seeds ``torch.Generator.manual_seed`` takes."""


def _temperature_bound(value: float | None) -> float | None:
    if value is not None and 0.0 < value < MIN_TEMPERATURE:
        raise ValueError(
            f"temperature {value!r} is below the smallest sampling temperature {MIN_TEMPERATURE}; "
            "send 0 (greedy) or at least that"
        )
    return value


Seed = Annotated[StrictInt, Field(ge=SEED_MIN, le=SEED_MAX)]
"""A sampling seed: an integer within ``[-2**63, 2**64 - 1]`` (torch's generator seeds)."""
Temperature = Annotated[float, Field(allow_inf_nan=False), AfterValidator(_temperature_bound)]


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
    spans: Literal["sentences"] | list[tuple[StrictInt, StrictInt]] | None = Field(
        default=None,
        description="Also score spans of the answer: 'sentences', or [start, end] character offsets "
        "(result.spans; with a span policy, span_decisions too).",
    )


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
    max_new_tokens: StrictInt | None = Field(default=None, ge=1)
    do_sample: StrictBool = False
    temperature: Temperature = Field(default=1.0, gt=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: Seed | None = None


class GenerateResponse(BaseModel):
    """The generated text and its score payload."""

    answer: str
    semgrad: dict[str, Any]


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``."""

    model_config = ConfigDict(extra="ignore")

    include_usage: StrictBool = False


class SemGradOptions(BaseModel):
    """The request's ``semgrad`` object (``extra_body={"semgrad": {...}}`` in the OpenAI client)."""

    model_config = ConfigDict(extra="forbid")

    stream_mode: Literal["observe", "gate", "hold"] | None = None
    """With ``stream=True``: text as generated (observe), a sentence at a time once judged (gate), or
    all at once when judged (hold). Default: the service's (docs/serve.md, "Stream modes")."""


class ChatCompletionRequest(BaseModel):
    """The OpenAI chat-completions request, the fields this service honours.

    Fields OpenAI clients send by default and that change nothing here are accepted and ignored
    (``user``, ``metadata``, ``store``, ...); fields that would change the answer and are not supported
    (``n`` > 1, ``tools``, ``stop``, ``logprobs``, penalties, ``logit_bias``, ...) are refused with 400
    (docs/serve.md, "Chat-completion parameters", has the table).
    """

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: Temperature | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: Seed | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    semgrad: SemGradOptions | None = None
    n: StrictInt = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    logprobs: StrictBool | None = None
    response_format: dict[str, Any] | None = None
    # Read only to refuse them when they would change the answer (see unsupported()).
    frequency_penalty: float | None = Field(default=None, allow_inf_nan=False)
    presence_penalty: float | None = Field(default=None, allow_inf_nan=False)
    logit_bias: dict[str, Any] | None = None
    top_logprobs: StrictInt | None = None
    top_k: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    parallel_tool_calls: Any = None

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
        if self.frequency_penalty:
            out.append("frequency_penalty (other than 0)")
        if self.presence_penalty:
            out.append("presence_penalty (other than 0)")
        if self.logit_bias:
            out.append("logit_bias")
        if self.top_logprobs:
            out.append("top_logprobs")
        if self.top_k is not None:
            out.append("top_k (not an OpenAI parameter; use top_p)")
        if self.functions:
            out.append("functions")
        if self.function_call not in (None, "none", "auto"):
            out.append("function_call")
        if self.parallel_tool_calls is not None:
            out.append("parallel_tool_calls (no tools are supported)")
        return out


FinishReason = Literal["stop", "length"]
