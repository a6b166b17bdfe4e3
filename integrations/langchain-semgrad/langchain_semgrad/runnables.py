"""``guard_runnable``: put a SemGrad guard (policy, retries, abstention, review) around any Runnable."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from typing import Any, Literal
from uuid import UUID

from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    BaseCallbackHandler,
    CallbackManagerForChainRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, convert_to_messages
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import patch_config

from semgrad_guard import (
    PAYLOAD_KEY,
    Action,
    AttemptContext,
    ConfigurationError,
    Generated,
    Guard,
    GuardResult,
    ScoreResult,
    ScoringError,
    generation_overrides,
)

from ._guarding import make_guard, retry_error
from .messages import input_to_chat, message_text, to_chat
from .metadata import read_score, score_payload

Output = Literal["both", "text", "guard_result", "message"]
AttemptInput = Callable[[Any, AttemptContext], Any]


class _LastModelCall(BaseCallbackHandler):
    """Records the prompt and output of the last chat-model / LLM run inside the guarded Runnable."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prompts: dict[UUID, list[dict[str, Any]]] = {}
        self.chat: list[dict[str, Any]] | None = None
        self.text: str | None = None
        self.result: ScoreResult | None = None

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        try:
            chat = to_chat(messages[0])
        except Exception:
            return
        with self._lock:
            self._prompts[run_id] = chat

    def on_llm_start(
        self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, **kwargs: Any
    ) -> None:
        with self._lock:
            self._prompts[run_id] = [{"role": "user", "content": prompts[0]}]

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        generation = response.generations[0][0] if response.generations and response.generations[0] else None
        with self._lock:
            chat = self._prompts.pop(run_id, None)
            if chat is None or generation is None:
                return
            self.chat = chat
            self.text = generation.text
            self.result = read_score(generation) if isinstance(generation, ChatGeneration) else None


def _answer_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, BaseMessage):
        return message_text(output)
    if isinstance(output, Mapping):
        for key in ("answer", "output", "text", "result"):
            if isinstance(output.get(key), str):
                return str(output[key])
    raise ConfigurationError(
        f"the guarded Runnable returned a {type(output).__name__}; it must return a str, a message, "
        "or a dict with an 'answer' (or 'output' / 'text') string"
    )


class GuardedRunnable(Runnable[Any, Any]):
    """A Runnable that runs another one under a :class:`~semgrad_guard.guard.guard.Guard`. See :func:`guard_runnable`."""

    def __init__(
        self,
        runnable: Runnable[Any, Any],
        guard: Guard,
        *,
        output: Output = "both",
        attempt_input: AttemptInput | None = None,
        name: str | None = None,
    ) -> None:
        if output not in ("both", "text", "guard_result", "message"):
            raise ConfigurationError(
                f"output must be 'both', 'text', 'guard_result' or 'message', got {output!r}"
            )
        self.runnable = runnable
        self.guard = guard
        self.output = output
        self.attempt_input = attempt_input
        self.name = name or f"SemGradGuard[{runnable.get_name()}]"
        self._is_chat_model = isinstance(runnable, BaseChatModel)

    # -- attempts -----------------------------------------------------------------------------------
    def _input_for(self, original: Any, ctx: AttemptContext) -> Any:
        if self.attempt_input is not None:
            return self.attempt_input(original, ctx)
        if self._is_chat_model or _is_chat_input(original):
            # The guard's strategies may rewrite the chat (reconsider, widened retrieval): send it.
            return convert_to_messages(ctx.messages)
        return original  # a chain with its own prompt: same input, other generation settings

    def _seen(self, out: Any, capture: _LastModelCall) -> tuple[str, Generated | None]:
        """The answer, and what is already known of its score (None: the guard scores ctx.score_messages)."""
        answer = _answer_text(out)
        if capture.chat is not None and capture.result is not None and capture.text == answer:
            return answer, Generated(answer, result=capture.result)  # scored against the prompt it saw
        return answer, None

    def _scorer(self) -> Any:
        if self.guard.scorer is None:
            raise ConfigurationError(
                "guard_runnable needs a scorer: guard_runnable(runnable, scorer, policy)"
            )
        return self.guard.scorer

    def _unseen(self, answer: str, chat_input: bool) -> str | Generated:
        """No model call was seen: a chat input is scored by the guard; any other input has no prompt to score."""
        if chat_input:
            return answer
        return Generated(
            answer,
            error=ScoringError(
                f"{self.runnable.get_name()} ran no chat model that the guard could observe, and its input is "
                "not a chat, so there is no prompt to score the answer against; make sure the chat model "
                "inside receives the run's callbacks (config), or pass a string / messages as input"
            ),
        )

    def _after(
        self, out: Any, capture: _LastModelCall, ctx: AttemptContext, chat_input: bool = True
    ) -> str | Generated:
        answer, known = self._seen(out, capture)
        if known is not None:
            return known
        if capture.chat is None:
            return self._unseen(answer, chat_input)
        # Score against the prompt the model really saw (a RAG chain's retrieved context included).
        try:
            return Generated(answer, result=self._scorer().score(capture.chat, answer))
        except ScoringError as e:
            return Generated(answer, error=e)  # on_error, not a shorter re-score

    async def _aafter(
        self, out: Any, capture: _LastModelCall, ctx: AttemptContext, chat_input: bool = True
    ) -> str | Generated:
        answer, known = self._seen(out, capture)
        if known is not None:
            return known
        if capture.chat is None:
            return self._unseen(answer, chat_input)
        try:
            return Generated(answer, result=await self._scorer().ascore(capture.chat, answer))
        except ScoringError as e:
            return Generated(answer, error=e)

    def _attempt_config(
        self, config: RunnableConfig, capture: _LastModelCall, ctx: AttemptContext
    ) -> RunnableConfig:
        callbacks = config.get("callbacks")
        if callbacks is None:
            handlers: Any = [capture]
        elif isinstance(callbacks, list):
            handlers = [*callbacks, capture]
        else:
            handlers = callbacks.copy()
            handlers.add_handler(capture, inherit=True)
        return patch_config(config, callbacks=handlers, run_name=f"attempt {ctx.number}")

    # -- results ------------------------------------------------------------------------------------
    def _shape(self, result: GuardResult) -> Any:
        if result.action is Action.RETRY:  # only from check(); run() always ends in a final action
            raise retry_error(result, result.answer)
        if self.output == "text":
            return result.answer
        if self.output == "guard_result":
            return result
        if self.output == "message":
            payload = score_payload(result.result, result, source="guard")
            return AIMessage(content=result.answer, response_metadata={PAYLOAD_KEY: payload})
        return {"answer": result.answer, "guard_result": result}

    # -- Runnable API -------------------------------------------------------------------------------
    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(self._invoke, input, config, **kwargs)

    def _invoke(self, input: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig) -> Any:
        child = patch_config(config, callbacks=run_manager.get_child())

        def generate(messages: list[dict[str, Any]], ctx: AttemptContext) -> Any:
            capture = _LastModelCall()
            with generation_overrides(**ctx.generate_kwargs):
                out = self.runnable.invoke(
                    self._input_for(input, ctx), self._attempt_config(child, capture, ctx)
                )
            return self._after(out, capture, ctx, chat_input)

        chat, chat_input = _guard_chat(input)
        result = self.guard.run(chat, generate, metadata={"runnable": self.runnable.get_name()})
        return self._shape(result)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self._acall_with_config(self._ainvoke, input, config, **kwargs)

    async def _ainvoke(
        self, input: Any, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig
    ) -> Any:
        child = patch_config(config, callbacks=run_manager.get_child())

        async def generate(messages: list[dict[str, Any]], ctx: AttemptContext) -> Any:
            capture = _LastModelCall()
            with generation_overrides(**ctx.generate_kwargs):
                out = await self.runnable.ainvoke(
                    self._input_for(input, ctx), self._attempt_config(child, capture, ctx)
                )
            return await self._aafter(out, capture, ctx, chat_input)

        chat, chat_input = _guard_chat(input)
        result = await self.guard.arun(chat, generate, metadata={"runnable": self.runnable.get_name()})
        return self._shape(result)


def _guard_chat(value: Any) -> tuple[list[dict[str, Any]], bool]:
    """(the chat the guard starts from, whether the input is a chat).

    An LCEL chain's input (``{"question": ...}``, any object) is not the prompt: the model's prompt is
    captured from the model run inside and scored. Until then, the guard's chat (what a review item
    shows as the question) is the input written out.
    """
    try:
        return input_to_chat(value), True
    except ScoringError:
        if isinstance(value, dict):
            strings = [v for v in value.values() if isinstance(v, str)]
            text = strings[0] if len(strings) == 1 else json.dumps(value, default=str, ensure_ascii=False)
        else:
            text = str(value)
        return [{"role": "user", "content": text}], False


def _is_chat_input(value: Any) -> bool:
    if isinstance(value, PromptValue):
        return True
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, (BaseMessage, tuple, dict)) for m in value)
    )


def guard_runnable(
    runnable: Runnable[Any, Any],
    scorer: Any = None,
    policy: Any = None,
    *,
    calibrator: Any = None,
    review_queue: Any = None,
    strategies: Mapping[str, Any] | None = None,
    guard: Guard | None = None,
    output: Output = "both",
    attempt_input: AttemptInput | None = None,
    name: str | None = None,
) -> GuardedRunnable:
    """Guard any Runnable that turns a question or chat into an answer (a chat model, an LCEL chain, an agent).

    Each attempt runs ``runnable``; the guard sees the prompt the model really saw (captured from
    the model run inside, so a RAG chain's retrieved context is part of it) and the answer, scores
    it (reusing ``ChatSemGrad``'s own score when it has one), applies the policy, retries with the
    policy's strategies (tenacity), abstains or sends the answer to review. Sync, async and batch.

    Retries: ``resample`` changes generation settings, which reach :class:`ChatSemGrad` anywhere
    inside the Runnable; ``reconsider`` and ``widen_retrieval`` rewrite the chat, which is sent
    as the input when ``runnable`` takes messages; for a chain with its own prompt, pass
    ``attempt_input(original_input, context) -> input`` to turn the attempt into the chain's input.

    Args:
        runnable: what produces the answer (returns a str, a message, or a dict with 'answer').
        scorer: the Scorer (scores answers the model did not already score).
        policy: a GuardPolicy (or dict / YAML).
        calibrator, review_queue, strategies: passed to the core Guard.
        guard: a ready Guard instead of scorer/policy/calibrator/review_queue/strategies.
        output: ``"both"`` (``{"answer", "guard_result"}``), ``"text"``, ``"guard_result"`` or
            ``"message"`` (an AIMessage whose ``response_metadata["semgrad"]`` holds the decision).

    Example:
        >>> from langchain_semgrad import ChatSemGrad
        >>> from semgrad_guard import MockScorer
        >>> from semgrad_guard import GuardPolicy
        >>> scorer = MockScorer(lambda m, a: 0.1 if a == "Canberra" else 0.9, answers=["Sydney", "Canberra"])
        >>> policy = GuardPolicy.from_dict({"rules": [{"field": "semgrad", "max": 0.5, "action": "accept"},
        ...     {"field": "semgrad", "action": "retry"}], "retry": {"max_attempts": 2}})
        >>> guarded = guard_runnable(ChatSemGrad(scorer=scorer), scorer, policy, output="text")
        >>> guarded.invoke("Capital of Australia?")
        'Canberra'
    """
    built = make_guard(guard, scorer, policy, calibrator, review_queue, strategies)
    return GuardedRunnable(runnable, built, output=output, attempt_input=attempt_input, name=name)
