"""Callback handlers that score every chat-model / LLM answer with SemGrad and record the result.

Callbacks observe; they cannot reliably change what a chain returns (see the package README).
Use them to *score and record*; gate with :class:`~langchain_semgrad.SemGradOutputParser`,
:func:`~langchain_semgrad.guard_runnable` or :class:`~langchain_semgrad.SemGradMiddleware`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.callbacks.manager import adispatch_custom_event, dispatch_custom_event
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, Generation, LLMResult

from semgrad_guard import Action, Scorer, ScoreResult, ToolCallingUnsupportedError, Verdict, judge

from .errors import LowConfidenceError
from .messages import is_tool_call_turn, to_chat
from .metadata import attach_payload, score_payload

logger = logging.getLogger(__name__)

SCORE_EVENT = "semgrad_score"
"""Name of the custom event dispatched after each scored answer (see ``astream_events``)."""

DEFAULT_RAISE_ON: tuple[str, ...] = ("retry", "abstain", "review", "raise")


@dataclass(frozen=True)
class _Score:
    """Score ``text`` against ``chat`` (with the service's verdict when ``with_verdict``)."""

    scorer: Any
    chat: list[dict[str, Any]]
    text: str
    with_verdict: bool


@dataclass(frozen=True)
class _Dispatch:
    """Dispatch :data:`SCORE_EVENT` with ``payload``."""

    payload: dict[str, Any]


_Steps = Generator[_Score | _Dispatch, Any, None]


class _ScoreRecorder:
    """Both handlers' logic, written once: the registry, and what happens when a run ends.

    :meth:`_on_end` is a generator that yields the two things a handler waits on (:class:`_Score`,
    :class:`_Dispatch`); the sync and async handlers differ only in how they carry those out.
    """

    def __init__(
        self,
        scorer: Scorer,
        *,
        policy: Any = None,
        calibrator: Any = None,
        raise_error: bool = False,
        raise_on: Sequence[str] = DEFAULT_RAISE_ON,
        dispatch_events: bool = True,
    ) -> None:
        self.scorer = scorer
        self.policy = policy
        self.calibrator = calibrator
        self.raise_error = raise_error
        self.raise_on = tuple(raise_on)
        self.dispatch_events = dispatch_events
        self._lock = threading.Lock()
        self._prompts: dict[UUID, list[dict[str, Any]]] = {}
        self._tools: dict[UUID, list[dict[str, Any]]] = {}
        self.chats: dict[UUID, list[dict[str, Any]]] = {}
        """``run_id -> the chat that was scored`` (what a review item needs; the parser cannot see prompts)."""
        self.results: dict[UUID, ScoreResult] = {}
        """Source of truth: ``run_id -> ScoreResult`` of the first generation of each run."""
        self.all_results: dict[UUID, list[ScoreResult | None]] = {}
        """``run_id -> one ScoreResult (or None if skipped) per generation`` (several with ``n > 1``)."""
        self.outcomes: dict[UUID, Verdict] = {}
        """``run_id -> the core's verdict`` (:func:`semgrad_guard.judge`) when a policy was given."""
        self.skipped: dict[UUID, str] = {}
        """``run_id -> why nothing was scored`` (tool-call message, unknown prompt, ...)."""
        self.errors: dict[UUID, BaseException] = {}
        """``run_id -> the scoring error`` (the run itself is not failed unless ``raise_error``)."""

    # -- registry ---------------------------------------------------------------------------------
    def get(self, run_id: UUID | str) -> ScoreResult | None:
        """The score recorded for ``run_id``, or ``None``."""
        key = run_id if isinstance(run_id, UUID) else UUID(str(run_id))
        with self._lock:
            return self.results.get(key)

    @property
    def last_result(self) -> ScoreResult | None:
        """The most recently recorded score."""
        with self._lock:
            return next(reversed(self.results.values()), None)

    def clear(self) -> None:
        """Forget every recorded score, skip reason and error."""
        with self._lock:
            for registry in (
                self._prompts,
                self._tools,
                self.chats,
                self.results,
                self.all_results,
                self.outcomes,
                self.skipped,
                self.errors,
            ):
                registry.clear()

    # -- capture ----------------------------------------------------------------------------------
    def _capture_chat(
        self, messages: list[list[BaseMessage]], run_id: UUID, invocation_params: Any = None
    ) -> None:
        try:
            chat = to_chat(messages[0])
        except Exception as e:  # an unknown message type: record why, never break the run
            with self._lock:
                self.skipped[run_id] = f"prompt could not be converted: {e}"
            return
        tools = invocation_params.get("tools") if isinstance(invocation_params, dict) else None
        with self._lock:
            self._prompts[run_id] = chat
            if tools:  # bound tools are part of the prompt the model saw
                self._tools[run_id] = list(tools)

    def _scorer_for(self, run_id: UUID) -> Any:
        """The scorer, rendering the run's bound tools where it can (a scorer whose template ignores
        tools scores without them, as for a chat model it cannot mirror exactly)."""
        with self._lock:
            tools = self._tools.pop(run_id, None)
        if tools and hasattr(self.scorer, "with_tools"):
            try:
                return self.scorer.with_tools(tools)
            except ToolCallingUnsupportedError:
                logger.debug(
                    "scorer %r cannot render tools: scoring run %s without them", self.scorer, run_id
                )
        return self.scorer

    def _capture_prompt(self, prompts: list[str], run_id: UUID) -> None:
        # A plain LLM gets text, not a chat: we score it as one user message.
        with self._lock:
            self._prompts[run_id] = [{"role": "user", "content": prompts[0]}]

    def _pending(
        self, response: LLMResult, run_id: UUID
    ) -> tuple[list[dict[str, Any]] | None, list[Generation]]:
        with self._lock:
            chat = self._prompts.pop(run_id, None)
            if chat is None and run_id not in self.skipped:
                self.skipped[run_id] = "no prompt was captured for this run (handler attached after start?)"
        generations = [g for gens in response.generations for g in gens]
        return chat, generations

    def _to_score(self, generation: Generation, run_id: UUID) -> str | None:
        if isinstance(generation, ChatGeneration) and is_tool_call_turn(generation.message):
            with self._lock:
                self.skipped.setdefault(run_id, "tool-call message: an intermediate step, no answer to score")
            return None
        return generation.text

    def _record(
        self,
        run_id: UUID,
        chat: list[dict[str, Any]],
        generations: list[Generation],
        results: list[ScoreResult | None],
        servers: list[dict[str, Any] | None],
    ) -> list[dict[str, Any]]:
        payloads = []
        for generation, result, server in zip(generations, results, servers, strict=True):
            if result is None:
                continue
            outcome = None
            if server is not None:  # a RemoteScorer's: the service's calibrator and policy judged it
                outcome = _verdict(server)
            if self.policy is not None:
                try:
                    outcome = judge(self.policy, result, self.calibrator)
                except Exception as e:  # e.g. a rule over confidence without a calibrator
                    with self._lock:
                        self.errors[run_id] = e
                    if self.raise_error:
                        raise
                    logger.warning("SemGrad policy failed for run %s: %s", run_id, e)
            extra = {"confidence": server["confidence"]} if server and "confidence" in server else {}
            payload = score_payload(result, outcome, source="callback", run_id=run_id, **extra)
            attach_payload(generation, payload)
            payloads.append(payload)
            with self._lock:
                self.results.setdefault(run_id, result)
                if outcome is not None:
                    self.outcomes.setdefault(run_id, outcome)
        with self._lock:
            self.all_results[run_id] = results
            if any(r is not None for r in results):
                self.chats[run_id] = chat
        return payloads

    def _on_end(self, response: LLMResult, run_id: UUID) -> _Steps:
        """What happens when a run ends: score each generation, record, dispatch, maybe raise."""
        chat, generations = self._pending(response, run_id)
        if chat is None:
            return
        scorer = self._scorer_for(run_id)
        # A scorer that reports its own verdict (RemoteScorer) gives it when this handler has no policy.
        with_verdict = self.policy is None and all(
            hasattr(scorer, name) for name in ("score_with_verdict", "ascore_with_verdict")
        )
        results: list[ScoreResult | None] = []
        servers: list[dict[str, Any] | None] = []  # the service's verdict on each, with_verdict
        for generation in generations:
            text = self._to_score(generation, run_id)
            scored: Any = None
            if text is not None:
                try:
                    scored = yield _Score(scorer, chat, text, with_verdict)
                except Exception as e:
                    with self._lock:
                        self.errors[run_id] = e
                    if self.raise_error:
                        raise
                    logger.warning("SemGrad scoring failed for run %s: %s", run_id, e)
            result, server = scored if with_verdict and scored is not None else (scored, None)
            results.append(result)
            servers.append(server)
        payloads = self._record(run_id, chat, generations, results, servers)
        if self.dispatch_events:
            for payload in payloads:
                # Outside a traced run (a bare model.invoke) there is no parent to attach the event to.
                with contextlib.suppress(RuntimeError):
                    yield _Dispatch(payload)
        self._check_raise(run_id, generations)

    def _forget(self, run_id: UUID) -> None:
        with self._lock:
            self._prompts.pop(run_id, None)
            self._tools.pop(run_id, None)

    def _check_raise(self, run_id: UUID, generations: list[Generation]) -> None:
        with self._lock:
            outcome = self.outcomes.get(run_id)
            result = self.results.get(run_id)
        if self.raise_error and outcome is not None and outcome.action.value in self.raise_on:
            raise LowConfidenceError(
                f"SemGrad policy decided {outcome.action.value!r} (rule {outcome.rule!r}) for run {run_id}",
                answer=generations[0].text if generations else "",
                result=result,
                action=outcome.action.value,
                rule=outcome.rule,
                confidence=outcome.confidence,
            )


def _verdict(server: dict[str, Any]) -> Verdict | None:
    """A service's verdict (``RemoteScorer.score_with_verdict``) as the core's; None without an action."""
    if "action" not in server:
        return None
    return Verdict(
        action=Action(server["action"]), rule=server.get("rule"), confidence=server.get("confidence")
    )


class SemGradCallbackHandler(_ScoreRecorder, BaseCallbackHandler):
    """Scores each chat-model or LLM answer with ``scorer`` when the run ends (sync; thread-safe).

    Works for chat models it did not create (``ChatHuggingFace``, a remote server serving the same
    weights as the local scorer, a fake model): the prompt is rebuilt from the run's messages with
    the scorer's own tokenizer and chat template. Results go to
    ``response_metadata["semgrad"]`` / ``generation_info["semgrad"]``, to :attr:`results`
    (``run_id -> ScoreResult``, the source of truth, also in streaming), and to a custom event
    :data:`SCORE_EVENT` inside a traced run. Messages that call tools are skipped, with the
    reason in :attr:`skipped`.

    With a ``policy`` (and optional ``calibrator``) the decision is recorded too; with
    ``raise_error=True`` a decision in ``raise_on`` raises :class:`LowConfidenceError`, which stops
    the chain. Without ``raise_error``, scoring errors are recorded in :attr:`errors` and logged.

    Example:
        >>> from langchain_core.language_models.fake_chat_models import FakeListChatModel
        >>> from semgrad_guard import MockScorer
        >>> handler = SemGradCallbackHandler(MockScorer(lambda m, a: 0.25))
        >>> msg = FakeListChatModel(responses=["Paris."]).invoke("Capital of France?",
        ...                                                       config={"callbacks": [handler]})
        >>> msg.response_metadata["semgrad"]["scores"]["semgrad"]
        0.25
    """

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._capture_chat(messages, run_id, kwargs.get("invocation_params"))

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._capture_prompt(prompts, run_id)

    def on_llm_end(
        self, response: LLMResult, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        steps = self._on_end(response, run_id)
        value: Any = None
        error: Exception | None = None
        while True:
            try:
                step = steps.throw(error) if error is not None else steps.send(value)
            except StopIteration:
                return
            value, error = None, None
            try:
                if isinstance(step, _Score):
                    score = step.scorer.score_with_verdict if step.with_verdict else step.scorer.score
                    value = score(step.chat, step.text)
                else:
                    dispatch_custom_event(SCORE_EVENT, step.payload)
            except Exception as e:
                error = e

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._forget(run_id)


class AsyncSemGradCallbackHandler(_ScoreRecorder, AsyncCallbackHandler):
    """The async twin of :class:`SemGradCallbackHandler`: scoring runs in a worker thread.

    ``scorer.ascore`` is awaited (for the local scorer it runs in a thread), so other coroutines
    keep running while an answer is scored. Same registry, metadata, event and policy options, and
    the same logic (:meth:`_ScoreRecorder._on_end`): only the waiting differs.

    Example:
        >>> import asyncio
        >>> from langchain_core.language_models.fake_chat_models import FakeListChatModel
        >>> from semgrad_guard import MockScorer
        >>> handler = AsyncSemGradCallbackHandler(MockScorer(lambda m, a: 0.5))
        >>> model = FakeListChatModel(responses=["4"])
        >>> msg = asyncio.run(model.ainvoke("2+2?", config={"callbacks": [handler]}))
        >>> handler.last_result.semgrad
        0.5
    """

    async def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._capture_chat(messages, run_id, kwargs.get("invocation_params"))

    async def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._capture_prompt(prompts, run_id)

    async def on_llm_end(
        self, response: LLMResult, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        steps = self._on_end(response, run_id)
        value: Any = None
        error: Exception | None = None
        while True:
            try:
                step = steps.throw(error) if error is not None else steps.send(value)
            except StopIteration:
                return
            value, error = None, None
            try:
                if isinstance(step, _Score):
                    ascore = step.scorer.ascore_with_verdict if step.with_verdict else step.scorer.ascore
                    value = await ascore(step.chat, step.text)
                else:
                    await adispatch_custom_event(SCORE_EVENT, step.payload)
            except Exception as e:
                error = e

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._forget(run_id)
