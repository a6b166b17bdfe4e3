"""Test helpers for stream modes: a model made to say a known answer, and a stubbed span policy.

Used by the core's, the service's and both adapters' stream tests (random tiny models say nothing
with sentences in it; a span policy needs span scores, stubbed here as offsets and text).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch


class ForcedAnswer:
    """A logits processor that makes generation produce ``text``'s tokens, then end the turn.

    ``delay`` seconds per step (so a stream has time to show it streams); ``steps`` counts the
    decode steps that ran (so a test sees generation stop). One instance per generation.

    Example:
        >>> from transformers import LogitsProcessorList
        >>> from semgrad_guard.testing import tiny_scorer
        >>> scorer = tiny_scorer("qwen2")
        >>> force = ForcedAnswer(scorer, "Hi. Bye.")
        >>> scorer.generate("Say hi.", logits_processor=LogitsProcessorList([force]))[0]
        'Hi. Bye.'
    """

    def __init__(self, scorer: Any, text: str, delay: float = 0.0) -> None:
        self.ids = scorer.tokenizer.encode(text, add_special_tokens=False)
        self.eos = scorer.eos_token_ids[0]
        self.delay = delay
        self.start: int | None = None
        self.steps = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        self.steps += 1
        if self.delay:
            time.sleep(self.delay)
        i = input_ids.shape[1] - self.start
        out = torch.full_like(scores, float("-inf"))
        out[:, self.ids[i] if i < len(self.ids) else self.eos] = 0.0
        return out


@dataclass(frozen=True)
class StubSpan:
    """A span score without scores: the sentence's offsets and text."""

    start: int
    end: int
    text: str


def stub_score_span(scorer: Any, messages: Any, answer: str, span: tuple[int, int]) -> StubSpan:
    """Stands in for :func:`semgrad_guard.scoring.streaming.score_span` (monkeypatch it)."""
    return StubSpan(span[0], span[1], answer[span[0] : span[1]])


@dataclass(frozen=True)
class StubDecision:
    """A span decision in the span contract's shape."""

    action: str
    confidence: float = 0.1
    reason: str = "stubbed"


class FailOn:
    """A span policy stub: ``action`` for every sentence containing ``word``, ``keep`` for the others."""

    def __init__(self, word: str, action: str = "abstain") -> None:
        self.word, self.action = word, action
        self.seen: list[Any] = []

    def judge(self, span: Any) -> StubDecision:
        self.seen.append(span)
        return StubDecision(self.action if self.word in span.text else "keep")
