"""``ChatSemGrad``: a local Hugging Face chat model that generates and scores in one pass."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from typing import Any, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, model_validator

from semgrad_guard.results import ScoreResult

from .messages import to_chat
from .metadata import METADATA_KEY, score_payload

generation_overrides: ContextVar[dict[str, Any] | None] = ContextVar(
    "semgrad_generation_overrides", default=None
)
"""Generation settings a guard's retry strategy sets for the current attempt (``do_sample``,
``temperature``, ``top_p``, ``seed``, ...): every :class:`ChatSemGrad` call inside the attempt uses them,
also deep inside a chain, since context variables follow LangChain's steps and threads."""

_SCORER_CACHE: dict[tuple[str, str], Any] = {}
_SCORER_CACHE_LOCK = threading.Lock()


def _load_scorer(model: str, device: str) -> Any:
    """Load (once per process) ``SemGradScorer.from_pretrained(model, device=device)``."""
    with _SCORER_CACHE_LOCK:
        key = (model, device)
        if key not in _SCORER_CACHE:
            from semgrad_guard.hf_scorer import SemGradScorer

            _SCORER_CACHE[key] = SemGradScorer.from_pretrained(model, device=device)
        return _SCORER_CACHE[key]


class ChatSemGrad(BaseChatModel):
    """A local Hugging Face chat model whose every answer carries its SemGrad score.

    Generation and scoring share one pass (the scorer reuses generation's KV cache). The score is
    in ``response_metadata["semgrad"]`` (see :mod:`langchain_semgrad.metadata`); token counts are in
    ``usage_metadata``. Streaming yields text as it is generated and attaches the score to the last
    chunk. Async methods run generation in a worker thread, so the event loop keeps running.
    Tool calling and structured output are not implemented.

    Args:
        scorer: a generating scorer (:class:`semgrad_guard.SemGradScorer`, or
            ``semgrad_guard.MockScorer(answers=...)`` in tests). If omitted, ``model`` is loaded
            with ``SemGradScorer.from_pretrained`` (once per process).
        model: ``"default"`` (the embedded SmolLM2-135M-Instruct) or a local model directory;
            also the name reported in traces.
        temperature: 0 or ``None`` decodes greedily; > 0 samples.
        max_tokens: most new tokens per answer.
        stop: stop strings; the answer is cut before the first one and re-scored as cut.
        timeout: seconds of generation before it stops (``max_time`` in ``generate``).

    Example:
        >>> from semgrad_guard import MockScorer
        >>> chat = ChatSemGrad(scorer=MockScorer(lambda m, a: 0.1, answers=["Paris."]))
        >>> msg = chat.invoke("Capital of France?")
        >>> msg.content, msg.response_metadata["semgrad"]["scores"]["semgrad"]
        ('Paris.', 0.1)
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    scorer: Any = Field(default=None, exclude=True)
    """The generating scorer (``SemGradScorer`` or any ``GeneratingScorer``)."""
    model_name: str | None = Field(default=None, alias="model")
    """Model to load when no scorer is given, and the name reported in traces."""
    device: str = "cpu"
    """Device for a model loaded by name."""
    temperature: float | None = None
    """Sampling temperature; 0 or None means greedy decoding."""
    max_tokens: int | None = 256
    """Most new tokens per answer."""
    top_p: float | None = None
    """Nucleus sampling mass (only when sampling)."""
    seed: int | None = None
    """Seed for sampling, per call."""
    stop: list[str] | None = None
    """Default stop strings."""
    timeout: float | None = None
    """Seconds of generation before it stops (passed as ``max_time``)."""
    streaming: bool = False
    """Make ``invoke`` stream internally (callbacks then see tokens)."""

    @model_validator(mode="after")
    def _resolve_scorer(self) -> ChatSemGrad:
        if self.scorer is None:
            self.scorer = _load_scorer(self.model_name or "default", self.device)
        if not hasattr(self.scorer, "generate"):
            raise ValueError("ChatSemGrad needs a generating scorer (with .generate / .agenerate)")
        if self.model_name is None:
            self.model_name = getattr(self.scorer, "model_id", None) or "semgrad-local"
        return self

    # -- LangChain plumbing -----------------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "semgrad-huggingface"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "seed": self.seed,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="semgrad",
            ls_model_name=kwargs.get("model") or self.model_name or "semgrad-local",
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
        )
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # -- helpers ----------------------------------------------------------------------------------
    def _is_hf(self) -> bool:
        return (
            getattr(self.scorer, "tokenizer", None) is not None
            and getattr(self.scorer, "model", None) is not None
        )

    def _generate_kwargs(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(kwargs)
        kwargs.pop("model", None)  # one local model: a per-call name only labels traces
        temperature = kwargs.pop("temperature", self.temperature)
        out: dict[str, Any] = {"max_new_tokens": kwargs.pop("max_tokens", self.max_tokens) or 256}
        if temperature:
            out.update(do_sample=True, temperature=float(temperature))
            top_p = kwargs.pop("top_p", self.top_p)
            if top_p is not None:
                out["top_p"] = top_p
        else:
            kwargs.pop("top_p", None)
            out["do_sample"] = False
        seed = kwargs.pop("seed", self.seed)
        if seed is not None:
            out["seed"] = seed
        if self._is_hf():
            if stop:
                out.update(stop_strings=list(stop), tokenizer=self.scorer.tokenizer)
            if self.timeout is not None:
                out["max_time"] = float(self.timeout)
        out.update(kwargs)
        overrides = generation_overrides.get()
        if overrides:
            out.update(overrides)
            if not out.get("do_sample"):
                for key in ("temperature", "top_p"):
                    out.pop(key, None)
        return out

    @staticmethod
    def _cut_at_stop(text: str, stop: list[str] | None) -> str | None:
        if not stop:
            return None
        cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
        return text[: min(cuts)] if cuts else None

    def _message_fields(self, result: ScoreResult) -> tuple[dict[str, Any], UsageMetadata]:
        metadata = {
            METADATA_KEY: score_payload(result, source="chat_semgrad"),
            "model_name": self.model_name,
            "model_provider": "semgrad",
        }
        usage = UsageMetadata(
            input_tokens=result.prompt_tokens,
            output_tokens=result.answer_tokens,
            total_tokens=result.prompt_tokens + result.answer_tokens,
        )
        return metadata, usage

    def _result(self, text: str, result: ScoreResult) -> ChatResult:
        metadata, usage = self._message_fields(result)
        message = AIMessage(content=text, response_metadata=metadata, usage_metadata=usage)
        return ChatResult(
            generations=[
                ChatGeneration(message=message, generation_info={METADATA_KEY: metadata[METADATA_KEY]})
            ]
        )

    # -- generation -------------------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            chunks = list(self._stream(messages, stop=stop, run_manager=run_manager, **kwargs))
            full = chunks[0]
            for c in chunks[1:]:
                full += c
            msg = cast(AIMessageChunk, full.message)
            return ChatResult(
                generations=[
                    ChatGeneration(
                        message=AIMessage(
                            content=msg.content,
                            response_metadata=msg.response_metadata,
                            usage_metadata=msg.usage_metadata,
                            id=msg.id,
                        ),
                        generation_info={METADATA_KEY: msg.response_metadata.get(METADATA_KEY)},
                    )
                ]
            )
        chat = to_chat(messages)
        stop = stop or self.stop
        text, result = self.scorer.generate(chat, **self._generate_kwargs(stop, kwargs))
        cut = self._cut_at_stop(text, stop)
        if cut is not None:
            text, result = cut, self.scorer.score(chat, cut)
        return self._result(text, result)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            full: ChatGenerationChunk | None = None
            async for c in self._astream(messages, stop=stop, run_manager=run_manager, **kwargs):
                full = c if full is None else full + c
            assert full is not None
            msg = cast(AIMessageChunk, full.message)
            return ChatResult(
                generations=[
                    ChatGeneration(
                        message=AIMessage(
                            content=msg.content,
                            response_metadata=msg.response_metadata,
                            usage_metadata=msg.usage_metadata,
                        ),
                        generation_info={METADATA_KEY: msg.response_metadata.get(METADATA_KEY)},
                    )
                ]
            )
        chat = to_chat(messages)
        stop = stop or self.stop
        text, result = await self.scorer.agenerate(chat, **self._generate_kwargs(stop, kwargs))
        cut = self._cut_at_stop(text, stop)
        if cut is not None:
            text, result = cut, await self.scorer.ascore(chat, cut)
        return self._result(text, result)

    def _last_chunk(self, remainder: str, result: ScoreResult) -> ChatGenerationChunk:
        metadata, usage = self._message_fields(result)
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content=remainder, response_metadata=metadata, usage_metadata=usage, chunk_position="last"
            ),
            generation_info={METADATA_KEY: metadata[METADATA_KEY]},
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        chat = to_chat(messages)
        stop = stop or self.stop
        gen_kwargs = self._generate_kwargs(stop, kwargs)
        if not self._is_hf() or stop:
            # No token stream to tap (a test double), or stop strings that must be cut before the
            # text goes out: generate first, then emit the final text and the score.
            text, result = self.scorer.generate(chat, **gen_kwargs)
            cut = self._cut_at_stop(text, stop)
            if cut is not None:
                text, result = cut, self.scorer.score(chat, cut)
            if text:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
                if run_manager:
                    run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
            yield self._last_chunk("", result)
            return

        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.scorer.tokenizer, skip_prompt=True, skip_special_tokens=True)
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["out"] = self.scorer.generate(chat, streamer=streamer, **gen_kwargs)
            except BaseException as e:  # re-raised in the consumer thread
                box["error"] = e
                streamer.end()  # type: ignore[no-untyped-call]

        thread = threading.Thread(target=work, name="ChatSemGrad-generate", daemon=True)
        thread.start()
        streamed: list[str] = []
        for piece in streamer:
            if not piece:
                continue
            streamed.append(piece)
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        thread.join()
        if "error" in box:
            raise box["error"]
        text, result = box["out"]
        yield self._last_chunk(_remainder(text, "".join(streamed)), result)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        chat = to_chat(messages)
        stop = stop or self.stop
        gen_kwargs = self._generate_kwargs(stop, kwargs)
        if not self._is_hf() or stop:
            text, result = await self.scorer.agenerate(chat, **gen_kwargs)
            cut = self._cut_at_stop(text, stop)
            if cut is not None:
                text, result = cut, await self.scorer.ascore(chat, cut)
            if text:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
                if run_manager:
                    await run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
            yield self._last_chunk("", result)
            return

        from transformers import AsyncTextIteratorStreamer

        streamer = AsyncTextIteratorStreamer(
            self.scorer.tokenizer, skip_prompt=True, skip_special_tokens=True
        )

        def work() -> tuple[str, ScoreResult]:
            try:
                out: tuple[str, ScoreResult] = self.scorer.generate(chat, streamer=streamer, **gen_kwargs)
                return out
            except BaseException:
                streamer.end()  # type: ignore[no-untyped-call]
                raise

        task = asyncio.ensure_future(asyncio.to_thread(work))
        streamed: list[str] = []
        try:
            async for piece in streamer:
                if not piece:
                    continue
                streamed.append(piece)
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager:
                    await run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:
            text, result = await task
        yield self._last_chunk(_remainder(text, "".join(streamed)), result)


def _remainder(text: str, streamed: str) -> str:
    """What the final decode has beyond what was streamed (usually nothing)."""
    return text[len(streamed) :] if text.startswith(streamed) else ""
