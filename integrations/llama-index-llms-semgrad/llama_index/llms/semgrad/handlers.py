"""Observing handlers: score every LLM answer, record the score by event id. They never gate.

Two flavours over one core: :class:`SemGradCallbackHandler` for the legacy ``CallbackManager`` and
:class:`SemGradEventHandler` for the instrumentation dispatcher. Both

* score only the outermost LLM call: ``CustomLLM.chat()`` calls the decorated ``complete()`` (and a
  ``CustomLLM``'s ``achat()`` calls ``chat()``), so one answer raises two or three LLM events; the
  nested ones are counted in :attr:`deduplicated` and not scored again;
* reuse the score a :class:`~llama_index.llms.semgrad.SemGradLLM` response already carries;
* score inline when called from synchronous code, and in a worker thread when called on a running
  event loop, so a slow backward pass never stalls the loop (fetch it with :meth:`aget`).

Gating belongs in :class:`~llama_index.llms.semgrad.SemGradQueryEngine` (callbacks observe, they
do not control).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.exception import ExceptionEvent
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatStartEvent,
    LLMCompletionEndEvent,
    LLMCompletionStartEvent,
)
from llama_index.core.instrumentation.events.span import SpanDropEvent  # type: ignore[attr-defined]

from semgrad_guard import ScoreResult

from ._convert import prompt_as_chat, response_text, score_from_response, to_chat

logger = logging.getLogger(__name__)

PromptToMessages = Callable[[str], list[dict[str, Any]]]


@dataclass(frozen=True)
class ScoredAnswer:
    """One LLM answer and its score (or the error that prevented scoring)."""

    event_id: str
    """Legacy callback event id, or the instrumentation span id of the LLM call."""
    kind: str
    """``"chat"`` or ``"completion"``: which LLM method produced the answer."""
    messages: list[dict[str, Any]]
    """The chat the answer replies to (a completion prompt becomes one user message)."""
    answer: str
    """The answer text."""
    result: ScoreResult | None
    """The scores; ``None`` when scoring failed (see :attr:`error`)."""
    error: BaseException | None = None
    """Why scoring failed (context too long, non-finite gradient, ...)."""
    reused: bool = False
    """True when the score came with the response (a :class:`SemGradLLM` answer), not rescored."""

    @property
    def ok(self) -> bool:
        return self.result is not None


@dataclass
class ScoreCapture:
    """The answers scored inside one :func:`capture_scores` block, in the order their calls ended."""

    owner: Any = None
    """The handler whose scores this capture collects (None: every SemGrad handler's)."""
    _futures: list[Future[ScoredAnswer]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _add(self, fut: Future[ScoredAnswer]) -> None:
        with self._lock:
            self._futures.append(fut)

    def __len__(self) -> int:
        return len(self._futures)

    def answers(self, timeout: float | None = None) -> list[ScoredAnswer]:
        """All captured answers, waiting for scoring still in progress."""
        with self._lock:
            futures = list(self._futures)
        return [f.result(timeout) for f in futures]

    async def aanswers(self) -> list[ScoredAnswer]:
        """:meth:`answers` without blocking the event loop."""
        with self._lock:
            futures = list(self._futures)
        return [await asyncio.wrap_future(f) for f in futures]

    def last(self, timeout: float | None = None) -> ScoredAnswer | None:
        """The last answer (the final one of a query), or ``None`` if no LLM call was observed."""
        with self._lock:
            fut = self._futures[-1] if self._futures else None
        return fut.result(timeout) if fut is not None else None

    async def alast(self) -> ScoredAnswer | None:
        with self._lock:
            fut = self._futures[-1] if self._futures else None
        if fut is None:
            return None
        return await asyncio.wrap_future(fut)


_CAPTURE: ContextVar[ScoreCapture | None] = ContextVar("semgrad_llamaindex_capture", default=None)


@contextmanager
def capture_scores(handler: Any = None) -> Iterator[ScoreCapture]:
    """Collect the answers scored inside the block (this task/thread and the tasks/threads it starts).

    Args:
        handler: collect only this handler's scores (default: any SemGrad handler's).

    Example:
        >>> with capture_scores() as cap:
        ...     pass  # run a query engine here
        >>> len(cap)
        0
    """
    cap = ScoreCapture(owner=getattr(handler, "_core", None))
    token = _CAPTURE.set(cap)
    try:
        yield cap
    finally:
        _CAPTURE.reset(token)


def _done(answer: ScoredAnswer) -> Future[ScoredAnswer]:
    fut: Future[ScoredAnswer] = Future()
    fut.set_result(answer)
    return fut


class _ScoringCore:
    """Dedupe, scoring and the record, shared by both handler flavours."""

    def __init__(
        self,
        scorer: Any,
        *,
        prompt_to_messages: PromptToMessages | None,
        only_captured: bool,
        raise_errors: bool,
        max_records: int,
        max_workers: int,
        spans: Literal["sentences"] | None = None,
    ) -> None:
        if not callable(getattr(scorer, "score", None)):
            from semgrad_guard import ConfigurationError

            raise ConfigurationError(
                f"a SemGrad handler needs a Scorer (with .score), got {type(scorer).__name__}"
            )
        self.scorer = scorer
        self.spans = spans  # "sentences": each sentence is scored too (result.spans)
        self.prompt_to_messages = prompt_to_messages or prompt_as_chat
        self.only_captured = only_captured
        self.raise_errors = raise_errors
        self.max_records = max_records
        self.max_workers = max_workers
        # LLM calls open in this task/thread: a call started while another is open is nested.
        self._stack: ContextVar[tuple[str, ...]] = ContextVar(f"semgrad_llm_stack_{id(self)}", default=())
        self._open: dict[str, bool] = {}  # event id -> nested?
        self._records: OrderedDict[str, Future[ScoredAnswer]] = OrderedDict()
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self.deduplicated = 0

    # -- event bookkeeping --------------------------------------------------------------------
    def start(self, event_id: str) -> None:
        stack = self._stack.get()
        with self._lock:
            # Entries of calls that died without an end event are no longer in _open: ignore them.
            self._open[event_id] = any(e in self._open for e in stack)
        self._stack.set((*stack, event_id))

    def _close(self, event_id: str) -> bool:
        with self._lock:
            nested = self._open.pop(event_id, None)
        stack = self._stack.get()
        if event_id in stack:
            self._stack.set(tuple(e for e in stack if e != event_id))
        if nested is None:  # no start seen (handler attached mid-call): nested if an LLM call is open
            with self._lock:
                nested = any(e in self._open for e in self._stack.get())
        return nested

    def fail(self, event_id: str) -> None:
        self._close(event_id)

    def end(
        self,
        event_id: str,
        kind: str,
        *,
        messages: Sequence[Any] | None,
        prompt: str | None,
        response: Any,
    ) -> Future[ScoredAnswer] | None:
        if self._close(event_id):
            with self._lock:
                self.deduplicated += 1
            return None
        capture = _CAPTURE.get()
        if capture is not None and capture.owner not in (None, self):
            capture = None
        if response is None or (self.only_captured and capture is None):
            return None
        chat = to_chat(messages) if messages is not None else self.prompt_to_messages(prompt or "")
        answer = response_text(response)
        carried = score_from_response(response)
        if carried is not None:
            fut = _done(ScoredAnswer(event_id, kind, chat, answer, carried, reused=True))
        elif _on_event_loop():
            fut = self._pool().submit(self._score, event_id, kind, chat, answer)
        else:
            fut = _done(self._score(event_id, kind, chat, answer))
        self._remember(event_id, fut)
        if capture is not None:
            capture._add(fut)
        if self.raise_errors and fut.done() and fut.result().error is not None:
            raise fut.result().error  # type: ignore[misc]
        return fut

    def _score(self, event_id: str, kind: str, chat: list[dict[str, Any]], answer: str) -> ScoredAnswer:
        try:
            extra = {} if self.spans is None else {"spans": self.spans}
            return ScoredAnswer(event_id, kind, chat, answer, self.scorer.score(chat, answer, **extra))
        except Exception as e:  # recorded, not raised: observers must not break the LLM call
            logger.warning("SemGrad could not score the answer of LLM event %s: %s", event_id, e)
            return ScoredAnswer(event_id, kind, chat, answer, None, error=e)

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.max_workers, thread_name_prefix="semgrad-handler")
            return self._executor

    def _remember(self, event_id: str, fut: Future[ScoredAnswer]) -> None:
        with self._lock:
            self._records[event_id] = fut
            while len(self._records) > self.max_records:
                self._records.popitem(last=False)

    # -- reading the record -------------------------------------------------------------------
    def future(self, event_id: str) -> Future[ScoredAnswer]:
        with self._lock:
            fut = self._records.get(event_id)
        if fut is None:
            raise KeyError(f"no scored LLM answer with event id {event_id!r} (nested events are not scored)")
        return fut

    def snapshot(self) -> dict[str, ScoredAnswer]:
        with self._lock:
            items = list(self._records.items())
        return {k: f.result() for k, f in items if f.done()}

    def all_futures(self) -> list[Future[ScoredAnswer]]:
        with self._lock:
            return list(self._records.values())

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self.deduplicated = 0

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _RecordAccess:
    """Reading the scores a handler recorded (shared by both flavours)."""

    _core: _ScoringCore

    @property
    def scorer(self) -> Any:
        return self._core.scorer

    @property
    def scores(self) -> dict[str, ScoredAnswer]:
        """Finished scores by event id (oldest first; at most ``max_records`` kept)."""
        return self._core.snapshot()

    @property
    def deduplicated(self) -> int:
        """How many nested LLM events (``complete()`` under ``chat()``) were skipped."""
        return self._core.deduplicated

    def get(self, event_id: str, timeout: float | None = None) -> ScoredAnswer:
        """The scored answer of one event, waiting while it is still being scored."""
        return self._core.future(event_id).result(timeout)

    async def aget(self, event_id: str) -> ScoredAnswer:
        """:meth:`get` without blocking the event loop."""
        return await asyncio.wrap_future(self._core.future(event_id))

    def wait(self, timeout: float | None = None) -> list[ScoredAnswer]:
        """Every recorded answer, once scoring in progress has finished."""
        return [f.result(timeout) for f in self._core.all_futures()]

    async def await_all(self) -> list[ScoredAnswer]:
        return [await asyncio.wrap_future(f) for f in self._core.all_futures()]

    def clear(self) -> None:
        """Forget the recorded scores and reset the dedupe counter."""
        self._core.clear()

    def close(self) -> None:
        """Stop the worker threads (after letting running scores finish)."""
        self._core.close()


class SemGradCallbackHandler(_RecordAccess, BaseCallbackHandler):
    """Legacy ``CallbackManager`` handler: scores every (outermost) LLM answer, keyed by event id.

    Args:
        scorer: a :class:`~semgrad_guard.Scorer` holding the LLM's weights (``SemGradScorer`` over
            the same model and tokenizer), or any scorer you want as a proxy judge.
        prompt_to_messages: how a completion prompt becomes a chat for scoring (default: one user
            message, which is what ``complete()`` of a chat-template LLM sends).
        only_captured: score only calls made inside :func:`capture_scores` blocks.
        raise_errors: re-raise scoring errors (a legacy handler that raises aborts the LLM call).
        max_records: how many scores to keep (oldest dropped first).
        spans: ``"sentences"`` scores each sentence of the answer too (``result.spans``).

    Example:
        >>> from llama_index.core.callbacks import CallbackManager
        >>> from llama_index.core.llms import MockLLM
        >>> from semgrad_guard import MockScorer
        >>> handler = SemGradCallbackHandler(MockScorer(lambda m, a: 0.5))
        >>> llm = MockLLM(callback_manager=CallbackManager([handler]))
        >>> _ = llm.complete("hello")
        >>> [s.result.semgrad for s in handler.scores.values()]
        [0.5]
    """

    def __init__(
        self,
        scorer: Any,
        *,
        prompt_to_messages: PromptToMessages | None = None,
        only_captured: bool = False,
        raise_errors: bool = False,
        max_records: int = 10_000,
        max_workers: int = 2,
        spans: Literal["sentences"] | None = None,
    ) -> None:
        ignored: list[CBEventType] = [t for t in CBEventType if t != CBEventType.LLM]
        BaseCallbackHandler.__init__(self, event_starts_to_ignore=ignored, event_ends_to_ignore=ignored)
        self._core = _ScoringCore(
            scorer,
            prompt_to_messages=prompt_to_messages,
            only_captured=only_captured,
            raise_errors=raise_errors,
            max_records=max_records,
            max_workers=max_workers,
            spans=spans,
        )

    def on_event_start(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        parent_id: str = "",
        **kwargs: Any,
    ) -> str:
        if event_type == CBEventType.LLM:
            self._core.start(event_id)
        return event_id

    def on_event_end(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        **kwargs: Any,
    ) -> None:
        if event_type != CBEventType.LLM:
            return
        payload = payload or {}
        if EventPayload.EXCEPTION in payload:
            self._core.fail(event_id)
            return
        is_chat = EventPayload.MESSAGES in payload
        self._core.end(
            event_id,
            "chat" if is_chat else "completion",
            messages=payload.get(EventPayload.MESSAGES),
            prompt=payload.get(EventPayload.PROMPT),
            response=payload.get(EventPayload.RESPONSE) if is_chat else payload.get(EventPayload.COMPLETION),
        )

    def start_trace(self, trace_id: str | None = None) -> None:
        return None

    def end_trace(self, trace_id: str | None = None, trace_map: dict[str, list[str]] | None = None) -> None:
        return None


class SemGradEventHandler(_RecordAccess, BaseEventHandler):
    """Instrumentation handler: scores every (outermost) LLM answer, keyed by the LLM call's span id.

    Register it with :meth:`register` (the root dispatcher by default). The dispatcher swallows
    handler errors, so it can never break or block an LLM call's result; scoring errors are
    recorded on :class:`ScoredAnswer`. Arguments as for :class:`SemGradCallbackHandler`.

    Example:
        >>> from llama_index.core.llms import MockLLM
        >>> from semgrad_guard import MockScorer
        >>> handler = SemGradEventHandler(MockScorer(lambda m, a: 0.5)).register()
        >>> _ = MockLLM().complete("hello")
        >>> [s.answer for s in handler.scores.values()]
        ['hello']
        >>> handler.unregister()
    """

    _core: _ScoringCore = PrivateAttr()
    _dispatcher: Any = PrivateAttr(default=None)

    def __init__(
        self,
        scorer: Any,
        *,
        prompt_to_messages: PromptToMessages | None = None,
        only_captured: bool = False,
        raise_errors: bool = False,
        max_records: int = 10_000,
        max_workers: int = 2,
        spans: Literal["sentences"] | None = None,
    ) -> None:
        super().__init__()
        self._core = _ScoringCore(
            scorer,
            prompt_to_messages=prompt_to_messages,
            only_captured=only_captured,
            raise_errors=raise_errors,
            max_records=max_records,
            max_workers=max_workers,
            spans=spans,
        )

    @classmethod
    def class_name(cls) -> str:
        return "SemGradEventHandler"

    def register(self, dispatcher: Any = None) -> SemGradEventHandler:
        """Add this handler to ``dispatcher`` (default: the root dispatcher); returns ``self``."""
        self._dispatcher = dispatcher or get_dispatcher()
        if not any(h is self for h in self._dispatcher.event_handlers):
            self._dispatcher.add_event_handler(self)
        return self

    def unregister(self) -> None:
        """Remove this handler from the dispatcher it was registered with, and stop its workers."""
        if self._dispatcher is not None:
            self._dispatcher.event_handlers = [h for h in self._dispatcher.event_handlers if h is not self]
            self._dispatcher = None
        self.close()

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        span = event.span_id or event.id_
        if isinstance(event, (LLMChatStartEvent, LLMCompletionStartEvent)):
            self._core.start(span)
        elif isinstance(event, LLMChatEndEvent):
            self._core.end(span, "chat", messages=event.messages, prompt=None, response=event.response)
        elif isinstance(event, LLMCompletionEndEvent):
            self._core.end(span, "completion", messages=None, prompt=event.prompt, response=event.response)
        elif isinstance(event, (SpanDropEvent, ExceptionEvent)) and event.span_id:
            self._core.fail(event.span_id)
