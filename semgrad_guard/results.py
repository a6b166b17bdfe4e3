"""The result of scoring one answer. Plain data: no torch, JSON round-trips."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .spans import SpanScore

SCORE_FIELDS: tuple[str, ...] = ("semgrad", "hybridgrad", "exgrad", "nll", "mean_nll", "mean_entropy")
"""Score fields of :class:`ScoreResult`; higher means more uncertain for every one of them."""


class ScoreResult(BaseModel):
    """SemGrad and its single-pass companions for one (messages, answer) pair.

    Higher is more uncertain for every score. See ``docs/method.md`` for the definitions.

    Example:
        >>> r = ScoreResult(semgrad=1e-3, hybridgrad=2e-3, exgrad=5e-3, nll=4.0, mean_nll=0.5,
        ...                 mean_entropy=1.2, answer_tokens=8, anchor_offset=-3, layers=[15, 16])
        >>> ScoreResult.model_validate_json(r.model_dump_json()) == r
        True
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    semgrad: float = Field(description="Mean |dL/dh_l[a]| over the profile's layers and the hidden size.")
    hybridgrad: float = Field(
        description="alpha * exgrad + (1 - alpha) * semgrad, alpha = exp(-mean_entropy)."
    )
    exgrad: float = Field(
        description="Mean |dL/dW_out| over the output projection (through the logits only, or as the "
        "gradient of the weight parameter: see exgrad_mode)."
    )
    nll: float = Field(description="Sum of the answer tokens' negative log-likelihoods (nats).")
    mean_nll: float = Field(description="nll divided by the number of answer tokens.")
    mean_entropy: float = Field(
        description="Mean entropy (nats) of the next-token distributions over the answer."
    )
    answer_tokens: int = Field(
        ge=1, description="Number of answer tokens scored, the end-of-turn token included."
    )
    prompt_tokens: int = Field(
        default=0, ge=0, description="Number of prompt tokens (chat template applied)."
    )
    anchor_offset: int = Field(description="Anchor position relative to the end of the prompt (negative).")
    layers: list[int] = Field(description="Hidden-state indices whose gradients make up semgrad.")
    model_id: str | None = Field(default=None, description="The scorer's model id, for provenance.")
    exgrad_mode: Literal["logits", "weight"] = Field(
        default="logits",
        description="'logits': dL/dW_out through the logits only; 'weight': the gradient of the lm_head "
        "weight parameter (the research code's; for tied embeddings it adds the input-embedding path).",
    )
    flags: list[str] = Field(
        default_factory=list,
        description="What the scorer noticed about the answer: 'control_tokens' (chat-template control "
        "tokens in the answer, scored as literal text), 'prompt_echo_stripped' (the answer began with the "
        "prompt, which was cut off and not scored; see answer_start), 'truncated' (generation stopped at "
        "max_new_tokens before end-of-turn; the tokens returned were scored, without an end-of-turn).",
    )
    answer_start: int = Field(
        default=0,
        ge=0,
        description="Characters cut from the front of the given answer before scoring (an echoed "
        "prompt); the scored text is answer[answer_start:].",
    )

    spans: list[SpanScore] | None = Field(
        default=None,
        description="The scores of each span (sentence, or the caller's ranges) of the answer, in order, "
        "when spans were asked for (score(..., spans='sentences')); None otherwise.",
    )

    def scored_text(self, answer: str) -> str:
        """The part of ``answer`` this result scored (all of it unless an echoed prompt was cut)."""
        return answer[self.answer_start :]

    def scores(self) -> dict[str, float]:
        """The six score fields as a dict."""
        return {name: float(getattr(self, name)) for name in SCORE_FIELDS}
