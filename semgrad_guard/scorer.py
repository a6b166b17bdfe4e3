"""The ``Scorer`` protocol every guard and adapter talks to, and a weight-free test double.

The local Hugging Face scorer (:class:`semgrad_guard.SemGradScorer`) is one implementation;
:class:`MockScorer` is another, for tests and docs (like httpx's ``MockTransport``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from .messages import Messages, normalize_messages
from .results import ScoreResult
from .spans import SpanRequest, SpanScore, resolve_spans


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores (messages, answer) pairs."""

    def score(self, messages: Messages, answer: str) -> ScoreResult: ...

    def score_batch(self, pairs: Sequence[tuple[Messages, str]]) -> list[ScoreResult]: ...

    async def ascore(self, messages: Messages, answer: str) -> ScoreResult: ...

    async def ascore_batch(self, pairs: Sequence[tuple[Messages, str]]) -> list[ScoreResult]: ...


@runtime_checkable
class GeneratingScorer(Scorer, Protocol):
    """A scorer that can also generate the answer (and score it in the same pass)."""

    def generate(self, messages: Messages, **generate_kwargs: Any) -> tuple[str, ScoreResult]: ...

    async def agenerate(self, messages: Messages, **generate_kwargs: Any) -> tuple[str, ScoreResult]: ...


ScoreFn = Callable[[list[dict[str, Any]], str], "ScoreResult | dict[str, float] | float"]


class MockScorer:
    """A scorer without weights: deterministic scores from a function, a table, or a hash.

    ``score_fn(messages, answer)`` may return a :class:`ScoreResult`, a dict of score fields
    (missing ones default to the ``semgrad`` value), or one float used for every field.
    Without ``score_fn``, scores are a stable hash of the text in [0, 1).
    ``score(..., spans="sentences")`` scores each span as ``score_fn(messages, span_text)`` (token
    offsets count words), so span policies can be tested without weights.

    ``answers`` feeds :meth:`generate`: a list consumed in order (the last one repeats),
    or a function ``(messages, **kwargs) -> str``.

    Example:
        >>> s = MockScorer(lambda messages, answer: 0.9 if "maybe" in answer else 0.1)
        >>> s.score("Capital of France?", "Paris").semgrad
        0.1
    """

    def __init__(
        self,
        score_fn: ScoreFn | None = None,
        *,
        answers: Sequence[str] | Callable[..., str] | None = None,
        model_id: str = "mock",
        anchor_offset: int = -1,
        layers: Sequence[int] = (1,),
    ) -> None:
        self._score_fn = score_fn
        self._answers = answers
        self._answer_index = 0
        self.model_id = model_id
        self.anchor_offset = anchor_offset
        self.layers = list(layers)
        self.calls: list[tuple[list[dict[str, Any]], str]] = []

    def score(self, messages: Messages, answer: str, *, spans: SpanRequest = None) -> ScoreResult:
        chat = normalize_messages(messages)
        self.calls.append((chat, answer))
        result = self._score_text(chat, answer)
        chars = resolve_spans(spans, answer)
        if chars is None:
            return result
        out = []
        for start, end in chars:
            text = answer[start:end]
            r = self._score_text(chat, text)
            first = len(answer[:start].split())
            out.append(
                SpanScore(
                    start=start,
                    end=end,
                    token_start=first,
                    token_end=first + max(1, len(text.split())),
                    text=text,
                    **r.scores(),
                )
            )
        return result.model_copy(update={"spans": out})

    def _score_text(self, chat: list[dict[str, Any]], answer: str) -> ScoreResult:
        raw = self._score_fn(chat, answer) if self._score_fn else _hash_score(chat, answer)
        if isinstance(raw, ScoreResult):
            return raw
        fields = {"semgrad": float(raw)} if isinstance(raw, (int, float)) else dict(raw)
        base = fields.get("semgrad", next(iter(fields.values()), 0.0))
        n = max(1, len(answer.split()) + 1)
        values: dict[str, Any] = {
            k: float(fields.get(k, base))
            for k in ("semgrad", "hybridgrad", "exgrad", "nll", "mean_nll", "mean_entropy")
        }
        return ScoreResult(
            **values,
            answer_tokens=n,
            prompt_tokens=sum(len(m["content"].split()) for m in chat),
            anchor_offset=self.anchor_offset,
            layers=self.layers,
            model_id=self.model_id,
        )

    def score_batch(
        self, pairs: Sequence[tuple[Messages, str]], *, spans: SpanRequest = None
    ) -> list[ScoreResult]:
        return [self.score(m, a, spans=spans) for m, a in pairs]

    async def ascore(self, messages: Messages, answer: str, *, spans: SpanRequest = None) -> ScoreResult:
        return await asyncio.to_thread(lambda: self.score(messages, answer, spans=spans))

    async def ascore_batch(
        self, pairs: Sequence[tuple[Messages, str]], *, spans: SpanRequest = None
    ) -> list[ScoreResult]:
        return await asyncio.to_thread(lambda: self.score_batch(pairs, spans=spans))

    def generate(
        self, messages: Messages, *, spans: SpanRequest = None, **generate_kwargs: Any
    ) -> tuple[str, ScoreResult]:
        answer = self._next_answer(messages, **generate_kwargs)
        return answer, self.score(messages, answer, spans=spans)

    async def agenerate(self, messages: Messages, **generate_kwargs: Any) -> tuple[str, ScoreResult]:
        return await asyncio.to_thread(self.generate, messages, **generate_kwargs)

    def _next_answer(self, messages: Messages, **kwargs: Any) -> str:
        if self._answers is None:
            raise ValueError("MockScorer.generate needs answers=[...] or answers=callable")
        if callable(self._answers):
            return self._answers(normalize_messages(messages), **kwargs)
        answers = list(self._answers)
        answer = answers[min(self._answer_index, len(answers) - 1)]
        self._answer_index += 1
        return answer


def _hash_score(chat: list[dict[str, Any]], answer: str) -> float:
    digest = hashlib.sha256(repr((chat, answer)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
