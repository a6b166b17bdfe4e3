"""``ChatSemGrad``: a local Hugging Face chat model that generates and scores in one pass."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolCall, ToolCallChunk
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, model_validator

from semgrad_guard import (
    PAYLOAD_KEY,
    ConfigurationError,
    ScoreResult,
    ToolTurn,
    check_stream_mode,
    generate_tool_turn,
    require_tool_support,
    resolve_generation,
    stream_fields,
)

from .messages import to_chat
from .metadata import score_payload

_SCORER_CACHE: dict[tuple[str, str], Any] = {}
_SCORER_CACHE_LOCK = threading.Lock()


def _load_scorer(model: str, device: str) -> Any:
    """Load (once per process) ``SemGradScorer.from_pretrained(model, device=device)``."""
    with _SCORER_CACHE_LOCK:
        key = (model, device)
        if key not in _SCORER_CACHE:
            from semgrad_guard import SemGradScorer

            _SCORER_CACHE[key] = SemGradScorer.from_pretrained(model, device=device)
        return _SCORER_CACHE[key]


_Steps = Generator[tuple[str, Any, Any], Any, tuple[str, ScoreResult]]
"""(kind, chat, arg) requests: ("generate", chat, kwargs) or ("score", chat, (text, spans)); returns (text, result)."""


class ChatSemGrad(BaseChatModel):
    """A local Hugging Face chat model whose every answer carries its SemGrad score.

    Generation and scoring share one pass (the scorer reuses generation's KV cache). The score is
    in ``response_metadata["semgrad"]`` (see :mod:`langchain_semgrad.metadata`); token counts are in
    ``usage_metadata``. Streaming yields text as it is generated and attaches the score to the last
    chunk (``stream_mode``: ``"observe"``, ``"gate"`` or ``"hold"``, below). Async methods run
    generation in a worker thread, so the event loop keeps running. A consumer that stops reading a
    stream (or a cancelled task) stops generation.

    Tool calling (:meth:`bind_tools`, hence ``create_agent`` and ``with_structured_output``): the
    tools are rendered through the model's chat template (``tools=``) and the calls are read from the
    generated text (the tokenizer's ``response_template`` where it has one, else Hermes
    ``<tool_call>``, Llama 3.1 JSON or Mistral ``[TOOL_CALLS]``; see :mod:`semgrad_guard.scoring.tool_calls`).
    A turn that calls tools is an intermediate step, not an answer: its payload says
    ``"turn": "tool_call"`` and guards skip it; the final answer is scored as usual.

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
        stream_mode: how ``stream`` / ``astream`` stream: ``"observe"`` (text as generated),
            ``"gate"`` (a sentence at a time, once ``span_policy`` keeps it; a failing one ends the
            stream, see the payload's ``stopped``; ``abstain`` stops generation) or ``"hold"`` (all
            at once, when scored). A per-call ``stream_mode=`` wins.
        span_policy: judges each sentence in gate mode (``judge(span) -> decision``, a ``SpanPolicy``).

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
    stream_mode: Literal["observe", "gate", "hold"] = "observe"
    """observe (text as generated), gate (sentences once judged by ``span_policy``) or hold."""
    span_policy: Any = Field(default=None, exclude=True)
    """Judges each sentence in gate mode (``judge(span) -> decision``)."""
    spans: Literal["sentences"] | None = None
    """``"sentences"``: score each sentence of the answer too, in the same pass (``result.spans`` in
    the payload; per call: ``invoke(..., spans="sentences")``)."""

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

    # -- tools ------------------------------------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer ``tools`` to the model: rendered through its chat template, calls parsed from its output.

        Args:
            tools: anything ``convert_to_openai_tool`` takes (``@tool`` functions, pydantic models,
                functions, OpenAI tool dicts).
            tool_choice: ``None`` / ``"auto"``: the model decides; ``"none"``: no tools this call;
                ``"any"`` / ``"required"`` / ``True``: a call of one of the tools, forced; a tool
                name (or ``{"type": "function", "function": {"name": ...}}``): a call of that tool,
                forced. Forcing holds the turn's first tokens to the call's opening as the chat
                template writes it and to an offered name; the model writes the arguments.

        Raises:
            ToolCallingUnsupportedError: the model's chat template does not render tools.

        Example:
            >>> from langchain_core.tools import tool
            >>> from semgrad_guard.testing.tools import tiny_tool_scorer
            >>> @tool
            ... def add(a: int, b: int) -> int:
            ...     "Add two integers."
            ...     return a + b
            >>> chat = ChatSemGrad(scorer=tiny_tool_scorer("hermes"), max_tokens=8)
            >>> bound = chat.bind_tools([add])
            >>> bound.kwargs["tools"][0]["function"]["name"]
            'add'
        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        formatted = _choose_tools(formatted, tool_choice)
        if formatted:
            require_tool_support(self.scorer)
        force = _forcing(tool_choice, formatted)
        return super().bind(tools=formatted or None, **({"tool_choice": force} if force else {}), **kwargs)

    def _tool_message(self, turn: ToolTurn, result: ScoreResult) -> AIMessage:
        metadata, usage = self._message_fields(result)
        metadata[PAYLOAD_KEY]["turn"] = "tool_call"  # an intermediate step, not an answer
        calls = [ToolCall(name=c.name, args=c.arguments, id=c.id, type="tool_call") for c in turn.tool_calls]
        return AIMessage(
            content=turn.content, tool_calls=calls, response_metadata=metadata, usage_metadata=usage
        )

    def _tool_result(self, turn: ToolTurn, result: ScoreResult) -> ChatResult:
        message = self._tool_message(turn, result)
        info = {PAYLOAD_KEY: message.response_metadata[PAYLOAD_KEY]}
        return ChatResult(generations=[ChatGeneration(message=message, generation_info=info)])

    def _tool_chunks(self, turn: ToolTurn, result: ScoreResult) -> list[ChatGenerationChunk]:
        message = self._tool_message(turn, result)
        chunks = [
            ToolCallChunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
            for i, c in enumerate(message.tool_calls)
        ]
        last = AIMessageChunk(
            content=message.content,
            tool_call_chunks=chunks,
            response_metadata=message.response_metadata,
            usage_metadata=message.usage_metadata,
            chunk_position="last",
        )
        return [
            ChatGenerationChunk(
                message=last, generation_info={PAYLOAD_KEY: last.response_metadata[PAYLOAD_KEY]}
            )
        ]

    def _run_tools(
        self,
        chat: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        stop: list[str] | None,
        gen: dict[str, Any],
        force: bool | str = False,
    ) -> tuple[ToolTurn, ScoreResult]:
        turn, result = generate_tool_turn(self.scorer, chat, tools, force=force, **gen)
        cut = self._cut_at_stop(turn.content, stop) if turn.is_answer else None
        if cut is not None:
            scorer = self.scorer.with_tools(tools) if hasattr(self.scorer, "with_tools") else self.scorer
            turn, result = ToolTurn(content=cut, tool_calls=[]), scorer.score(chat, cut)
        return turn, result

    def _generate_kwargs(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(kwargs)
        kwargs.pop("model", None)  # one local model: a per-call name only labels traces
        kwargs.pop("stream_mode", None)  # read by _stream_args
        for key in ("tools", "tool_choice", "ls_structured_output_format", "structured_output_format"):
            kwargs.pop(key, None)  # tools are rendered by the template, not passed to generate()
        # Model fields < per-call arguments < the guard's attempt overrides (semgrad_guard.generation).
        defaults = {
            "max_new_tokens": self.max_tokens or 256,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
        }
        per_call: dict[str, Any] = {
            k: kwargs.pop(k) for k in ("temperature", "top_p", "seed", "do_sample") if k in kwargs
        }
        if "max_tokens" in kwargs:
            per_call["max_new_tokens"] = kwargs.pop("max_tokens")
        out: dict[str, Any] = dict(kwargs)  # other generate() arguments pass through
        out.update(resolve_generation(defaults, per_call))
        if self._is_hf():
            if stop:
                out.update(stop_strings=list(stop), tokenizer=self.scorer.tokenizer)
            if self.timeout is not None:
                out["max_time"] = float(self.timeout)
        if self.spans is not None:
            out.setdefault("spans", self.spans)
        return out

    @staticmethod
    def _cut_at_stop(text: str, stop: list[str] | None) -> str | None:
        if not stop:
            return None
        cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
        return text[: min(cuts)] if cuts else None

    def _message_fields(self, result: ScoreResult) -> tuple[dict[str, Any], UsageMetadata]:
        metadata = {
            PAYLOAD_KEY: score_payload(result, source="chat_semgrad"),
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
                ChatGeneration(message=message, generation_info={PAYLOAD_KEY: metadata[PAYLOAD_KEY]})
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
            return _from_chunks(list(self._stream(messages, stop=stop, run_manager=run_manager, **kwargs)))
        chat = to_chat(messages)
        stop = stop or self.stop
        tools = kwargs.get("tools")
        if tools:
            force = _forcing(kwargs.get("tool_choice"), tools)
            turn, result = self._run_tools(chat, tools, stop, self._generate_kwargs(stop, kwargs), force)
            return self._tool_result(turn, result) if turn.tool_calls else self._result(turn.content, result)
        return self._result(*self._drive(self._answer(chat, stop, self._generate_kwargs(stop, kwargs))))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return _from_chunks(
                [c async for c in self._astream(messages, stop=stop, run_manager=run_manager, **kwargs)]
            )
        chat = to_chat(messages)
        stop = stop or self.stop
        tools = kwargs.get("tools")
        if tools:
            gen = self._generate_kwargs(stop, kwargs)
            force = _forcing(kwargs.get("tool_choice"), tools)
            turn, result = await asyncio.to_thread(self._run_tools, chat, tools, stop, gen, force)
            return self._tool_result(turn, result) if turn.tool_calls else self._result(turn.content, result)
        return self._result(
            *await self._adrive(self._answer(chat, stop, self._generate_kwargs(stop, kwargs)))
        )

    # -- one answer, written once: the steps as a generator, run by a sync and an async driver ------
    def _answer(
        self, chat: list[dict[str, Any]], stop: list[str] | None, gen_kwargs: dict[str, Any]
    ) -> _Steps:
        """Generate, then cut at the first stop string and re-score the cut text (what is returned is what is scored)."""
        text, result = yield ("generate", chat, gen_kwargs)
        cut = self._cut_at_stop(text, stop)
        if cut is not None:
            text, result = cut, (yield ("score", chat, (cut, gen_kwargs.get("spans"))))
        return text, result

    def _drive(self, steps: _Steps) -> tuple[str, ScoreResult]:
        try:
            kind, chat, arg = next(steps)
            while True:
                value = (
                    self.scorer.generate(chat, **arg)
                    if kind == "generate"
                    else self.scorer.score(chat, arg[0], **_spanned(arg))
                )
                kind, chat, arg = steps.send(value)
        except StopIteration as done:
            return cast(tuple[str, ScoreResult], done.value)

    async def _adrive(self, steps: _Steps) -> tuple[str, ScoreResult]:
        try:
            kind, chat, arg = next(steps)
            while True:
                if kind == "generate":
                    value = await self.scorer.agenerate(chat, **arg)
                else:
                    value = await self.scorer.ascore(chat, arg[0], **_spanned(arg))
                kind, chat, arg = steps.send(value)
        except StopIteration as done:
            return cast(tuple[str, ScoreResult], done.value)

    def _stream_args(self, kwargs: dict[str, Any], stop: list[str] | None = None) -> dict[str, Any]:
        mode = check_stream_mode(kwargs.get("stream_mode", self.stream_mode))
        if mode == "gate" and (kwargs.get("tools") or stop or not self._is_hf()):
            # Those paths generate the whole turn first: nothing could be gated, so say so.
            raise ConfigurationError(
                "stream_mode 'gate' needs ChatSemGrad on a SemGradScorer, without stop strings or bound "
                "tools (those turns are generated whole before any text goes out); use 'hold' or 'observe'"
            )
        return {"mode": mode, "span_judge": self.span_policy} if mode != "observe" else {}

    def _last_chunk(self, remainder: str, result: ScoreResult, **fields: Any) -> ChatGenerationChunk:
        metadata, usage = self._message_fields(result)
        if fields:  # how the answer was streamed (stream_mode, a gate's stop)
            metadata[PAYLOAD_KEY] = {**metadata[PAYLOAD_KEY], **fields}
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content=remainder, response_metadata=metadata, usage_metadata=usage, chunk_position="last"
            ),
            generation_info={PAYLOAD_KEY: metadata[PAYLOAD_KEY]},
        )

    # -- streaming, written once: _chunks yields what to emit and what it waits on; two drivers ----
    def _chunks(
        self,
        chat: list[dict[str, Any]],
        stop: list[str] | None,
        gen: dict[str, Any],
        tools: Any,
        how: dict[str, Any],
        force: bool | str = False,
    ) -> Generator[Any, Any, None]:
        """The chunks of one streamed answer (:class:`_Emit`), and the waits between them."""
        if tools:
            # Tool calls are known only once the turn is complete: generate, then emit it whole.
            turn, result = yield _RunTools(chat, tools, stop, gen, force)
            if turn.tool_calls:
                for chunk in self._tool_chunks(turn, result):
                    yield _Emit(chunk)
                return
            text = turn.content
        elif not self._is_hf() or stop:
            # No token stream to tap (a test double), or stop strings that must be cut before the
            # text goes out: generate first, then emit the final text and the score.
            text, result = yield _Drive(self._answer(chat, stop, gen))
        else:
            # The core streams the text, then scores from generation's own state the moment it ends.
            stream = yield _Open(chat, gen, how)
            while (piece := (yield _Next(stream))).result is None:
                yield _Emit(ChatGenerationChunk(message=AIMessageChunk(content=piece.delta)), piece.delta)
            yield _Emit(self._last_chunk(piece.delta, piece.result, **stream_fields(piece)))
            return
        if text:
            yield _Emit(ChatGenerationChunk(message=AIMessageChunk(content=text)), text)
        yield _Emit(self._last_chunk("", result))

    def _stream_steps(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> Generator[Any, Any, None]:
        """One streamed answer's steps (:meth:`_chunks`), for the sync and the async driver."""
        tools = kwargs.get("tools")
        return self._chunks(
            to_chat(messages),
            stop,
            self._generate_kwargs(stop, kwargs),
            tools,
            self._stream_args(kwargs, stop),
            _forcing(kwargs.get("tool_choice"), tools),
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        steps = self._stream_steps(messages, stop or self.stop, kwargs)
        value: Any = None
        opened: Any = None
        try:
            while True:
                try:
                    step = steps.send(value)
                except StopIteration:
                    return
                value = None
                if isinstance(step, _Emit):
                    if step.token is not None and run_manager:
                        run_manager.on_llm_new_token(step.token, chunk=step.chunk)
                    yield step.chunk
                elif isinstance(step, _RunTools):
                    value = self._run_tools(step.chat, step.tools, step.stop, step.gen, step.force)
                elif isinstance(step, _Drive):
                    value = self._drive(step.steps)
                elif isinstance(step, _Open):
                    value = opened = self.scorer.stream(step.chat, **step.how, **step.gen)
                else:
                    value = next(step.stream)
        finally:
            if opened is not None:
                opened.close()  # a consumer that stopped reading stops generation

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        steps = self._stream_steps(messages, stop or self.stop, kwargs)
        value: Any = None
        opened: Any = None
        try:
            while True:
                try:
                    step = steps.send(value)
                except StopIteration:
                    return
                value = None
                if isinstance(step, _Emit):
                    if step.token is not None and run_manager:
                        await run_manager.on_llm_new_token(step.token, chunk=step.chunk)
                    yield step.chunk
                elif isinstance(step, _RunTools):
                    value = await asyncio.to_thread(
                        self._run_tools, step.chat, step.tools, step.stop, step.gen, step.force
                    )
                elif isinstance(step, _Drive):
                    value = await self._adrive(step.steps)
                elif isinstance(step, _Open):
                    value = opened = self.scorer.astream(step.chat, **step.how, **step.gen)
                else:
                    value = await anext(step.stream)
        finally:
            if opened is not None:
                await opened.aclose()  # a cancelled consumer stops generation


@dataclass(frozen=True)
class _Emit:
    """Emit ``chunk``; ``token`` is its text for ``on_llm_new_token`` (None: the scored last chunk)."""

    chunk: ChatGenerationChunk
    token: str | None = None


@dataclass(frozen=True)
class _RunTools:
    chat: list[dict[str, Any]]
    tools: Any
    stop: list[str] | None
    gen: dict[str, Any]
    force: bool | str = False


@dataclass(frozen=True)
class _Drive:
    steps: _Steps


@dataclass(frozen=True)
class _Open:
    chat: list[dict[str, Any]]
    gen: dict[str, Any]
    how: dict[str, Any]  # the stream mode and span policy (empty: observe)


@dataclass(frozen=True)
class _Next:
    stream: Any


def _from_chunks(chunks: list[ChatGenerationChunk]) -> ChatResult:
    """A streamed answer as one ChatResult (sync and async alike: the message keeps the stream's id)."""
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    msg = cast(AIMessageChunk, full.message)
    message = AIMessage(
        content=msg.content,
        tool_calls=msg.tool_calls,
        response_metadata=msg.response_metadata,
        usage_metadata=msg.usage_metadata,
        id=msg.id,
    )
    return ChatResult(
        generations=[
            ChatGeneration(
                message=message, generation_info={PAYLOAD_KEY: msg.response_metadata.get(PAYLOAD_KEY)}
            )
        ]
    )


_ALL_TOOLS = ("auto", "any", "required")


def _choose_tools(
    tools: list[dict[str, Any]], tool_choice: str | dict[str, Any] | bool | None
) -> list[dict[str, Any]]:
    """The tools to render for ``tool_choice`` (a name narrows them; "none" drops them)."""
    if tool_choice is None or tool_choice is True or tool_choice in _ALL_TOOLS:
        return tools
    if tool_choice is False or tool_choice == "none":
        return []
    name = _choice_name(tool_choice)
    chosen = [t for t in tools if t["function"]["name"] == name]
    if not isinstance(name, str) or not chosen:
        offered = [t["function"]["name"] for t in tools]
        raise ConfigurationError(f"tool_choice={tool_choice!r} names no bound tool; tools are {offered}")
    return chosen


def _forcing(tool_choice: Any, tools: list[dict[str, Any]] | None) -> bool | str:
    """What ``tool_choice`` forces among the rendered ``tools``: a call (True), one tool's call (its
    name), or nothing (False: the model decides, or no tools)."""
    if not tools or tool_choice is None or tool_choice is False or tool_choice in ("auto", "none"):
        return False
    if tool_choice is True or tool_choice in ("any", "required"):
        return True
    name = _choice_name(tool_choice)
    return name if isinstance(name, str) else False


def _choice_name(tool_choice: Any) -> Any:
    """The tool a ``tool_choice`` names: the string itself, or an OpenAI-style dict's name."""
    if isinstance(tool_choice, dict):
        return (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
    return tool_choice


def _spanned(arg: tuple[str, str | None]) -> dict[str, Any]:
    """``score``'s keyword arguments for a re-score: the spans only when asked for (a scorer without
    span support still works)."""
    return {} if arg[1] is None else {"spans": arg[1]}
