"""``SemGradLLM``: a local Hugging Face chat model for LlamaIndex that generates and scores in one pass."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CallbackManager
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from semgrad_guard import PAYLOAD_KEY, ConfigurationError, ScoreResult, resolve_generation

from ._convert import prompt_as_chat, score_payload, to_chat

# Per-call keyword arguments that reach the scorer's ``generate``; LlamaIndex passes others
# (``formatted``, tool settings) that a local model has no use for.
_GENERATE_KEYS = ("max_new_tokens", "temperature", "top_p", "seed")


class SemGradLLM(CustomLLM):
    """A local Hugging Face chat model that generates an answer and scores it with SemGrad in one pass.

    The answer is scored on exactly the generated token ids, reusing generation's KV cache, so the
    score costs a fraction of the generation. The :class:`~semgrad_guard.ScoreResult` goes into
    ``response.additional_kwargs["semgrad"]`` as a dict (Cleanlab's convention for scoring LLMs);
    :func:`score_from_response` turns it back into a ``ScoreResult``. Streaming yields text as it is
    generated and puts the score on the last chunk. Async methods run generation in a worker thread,
    so the event loop keeps serving other requests.

    Args:
        scorer: a :class:`~semgrad_guard.GeneratingScorer`, e.g. ``SemGradScorer.from_pretrained("default")``.
        max_new_tokens: most tokens generated per answer.
        temperature: 0 (the default) decodes greedily; above 0 samples.
        top_p: nucleus sampling cut-off when sampling.
        seed: seeds sampling per call, for reproducible answers.
        generate_kwargs: extra Hugging Face ``generate()`` settings (e.g. ``repetition_penalty``),
            passed on every call; a per-call keyword of the same name wins. They shape decoding only,
            the score is always the raw model's. Sampling, length and seed are set by the fields above.

    Example:
        >>> from semgrad_guard import MockScorer
        >>> llm = SemGradLLM(MockScorer(lambda m, a: 0.25, answers=["Paris."]))
        >>> r = llm.complete("Capital of France?")
        >>> r.text, r.additional_kwargs["semgrad"]["scores"]["semgrad"]
        ('Paris.', 0.25)
    """

    max_new_tokens: int = Field(default=256, gt=0, description="Most tokens generated per answer.")
    temperature: float = Field(default=0.0, ge=0.0, description="0 decodes greedily; above 0 samples.")
    top_p: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Nucleus sampling cut-off when sampling."
    )
    seed: int | None = Field(default=None, description="Seeds sampling per call, for reproducible answers.")
    context_window: int = Field(
        default=DEFAULT_CONTEXT_WINDOW, gt=0, description="The model's context, in tokens."
    )
    model_name: str = Field(default="semgrad", description="The scorer's model id.")
    generate_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra Hugging Face generate() settings, e.g. repetition_penalty (the score uses the raw model).",
    )

    _scorer: Any = PrivateAttr()

    def __init__(
        self,
        scorer: Any,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float | None = None,
        seed: int | None = None,
        generate_kwargs: dict[str, Any] | None = None,
        callback_manager: CallbackManager | None = None,
        **kwargs: Any,
    ) -> None:
        if not callable(getattr(scorer, "generate", None)):
            raise ConfigurationError(
                f"SemGradLLM needs a scorer that can generate (a GeneratingScorer such as SemGradScorer), "
                f"got {type(scorer).__name__}"
            )
        super().__init__(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            generate_kwargs=dict(generate_kwargs or {}),
            context_window=int(getattr(scorer, "context_window", None) or DEFAULT_CONTEXT_WINDOW),
            model_name=str(getattr(scorer, "model_id", None) or "semgrad"),
            callback_manager=callback_manager,
            **kwargs,
        )
        self._scorer = scorer

    @classmethod
    def from_pretrained(
        cls, model: str | Path = "default", *, device: str = "cpu", **llm_kwargs: Any
    ) -> SemGradLLM:
        """Load a local model (``"default"``: the embedded SmolLM2-135M-Instruct) and wrap it."""
        from semgrad_guard import SemGradScorer

        return cls(SemGradScorer.from_pretrained(model, device=device), **llm_kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "SemGradLLM"

    @property
    def scorer(self) -> Any:
        """The scorer that generates and scores (its ``.model`` and ``.tokenizer`` are the weights)."""
        return self._scorer

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            model_name=self.model_name,
        )

    # -- helpers ----------------------------------------------------------------------------------
    def _generate_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        # Extra generate() settings first (a per-call value of the same name wins); then the dedicated fields <
        # per-call arguments < the guard's attempt overrides decide sampling, length and seed
        # (semgrad_guard.generation: the same precedence as the LangChain adapter).
        out: dict[str, Any] = dict(self.generate_kwargs)
        out.update({k: kwargs[k] for k in self.generate_kwargs if k in kwargs})
        defaults = {k: getattr(self, k) for k in _GENERATE_KEYS}
        out.update(
            resolve_generation(
                defaults, {k: kwargs[k] for k in (*_GENERATE_KEYS, "do_sample") if k in kwargs}
            )
        )
        return out

    # What a response is, written once for chat and completion, whole or streamed: ``(text, delta,
    # score)`` in, the LlamaIndex response out; only a scored response carries the payload.
    @staticmethod
    def _chat_response(answer: str, result: ScoreResult | None, delta: str | None = None) -> ChatResponse:
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=answer),
            delta=delta,
            additional_kwargs=_payload(result),
        )

    @staticmethod
    def _completion_response(
        answer: str, result: ScoreResult | None, delta: str | None = None
    ) -> CompletionResponse:
        return CompletionResponse(text=answer, delta=delta, additional_kwargs=_payload(result))

    def _stream(
        self, chat: list[dict[str, Any]], gen: dict[str, Any]
    ) -> Iterator[tuple[str, str, ScoreResult | None]]:
        """Yield ``(text so far, delta, score or None)``; only the last item carries the score."""
        if getattr(self._scorer, "tokenizer", None) is None or not hasattr(self._scorer, "stream"):
            # A scorer without a tokenizer (MockScorer) cannot stream tokens: one chunk, scored.
            answer, result = self._scorer.generate(chat, **gen)
            yield answer, answer, result
            return
        # The core streams the text, then scores from generation's own state the moment it ends.
        pending = ""
        for piece in self._scorer.stream(chat, **gen):
            if piece.result is not None:
                yield piece.text, pending + piece.delta, piece.result
                return
            if pending:
                yield piece.text[: -len(piece.delta)], pending, None
            # Hold one chunk back: the last chunk must carry the score, which exists only after scoring.
            pending = piece.delta

    # -- sync -------------------------------------------------------------------------------------
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat_response(*self._scorer.generate(to_chat(messages), **self._generate_kwargs(kwargs)))

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        chat = prompt_as_chat(prompt)
        return self._completion_response(*self._scorer.generate(chat, **self._generate_kwargs(kwargs)))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return _each(self._stream(to_chat(messages), self._generate_kwargs(kwargs)), self._chat_response)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        items = self._stream(prompt_as_chat(prompt), self._generate_kwargs(kwargs))
        return _each(items, self._completion_response)

    # -- async: the same steps, with generation in a worker thread, never on the event loop -------
    async def _agenerate(self, chat: list[dict[str, Any]], gen: dict[str, Any]) -> tuple[str, ScoreResult]:
        agenerate = getattr(self._scorer, "agenerate", None)
        if agenerate is not None:
            answer, result = await agenerate(chat, **gen)
        else:
            answer, result = await asyncio.to_thread(lambda: self._scorer.generate(chat, **gen))
        return answer, result

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat_response(*await self._agenerate(to_chat(messages), self._generate_kwargs(kwargs)))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        chat = prompt_as_chat(prompt)
        return self._completion_response(*await self._agenerate(chat, self._generate_kwargs(kwargs)))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        items = self._stream(to_chat(messages), self._generate_kwargs(kwargs))
        return _aeach(items, self._chat_response)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        items = self._stream(prompt_as_chat(prompt), self._generate_kwargs(kwargs))
        return _aeach(items, self._completion_response)


def _payload(result: ScoreResult | None) -> dict[str, Any]:
    return {PAYLOAD_KEY: score_payload(result, source="llm")} if result is not None else {}


_R = TypeVar("_R", ChatResponse, CompletionResponse)
_Item = tuple[str, str, ScoreResult | None]


def _each(
    items: Iterator[_Item], build: Callable[[str, ScoreResult | None, str], _R]
) -> Generator[_R, None, None]:
    """The streamed ``(text, delta, score)`` items as responses."""
    for text, delta, result in items:
        yield build(text, result, delta)


async def _aeach(
    items: Iterator[_Item], build: Callable[[str, ScoreResult | None, str], _R]
) -> AsyncGenerator[_R, None]:
    """:func:`_each` from async code: each ``next`` of the blocking stream runs in a worker thread."""
    while True:
        item = await asyncio.to_thread(next, items, None)
        if item is None:
            return
        text, delta, result = item
        yield build(text, result, delta)
