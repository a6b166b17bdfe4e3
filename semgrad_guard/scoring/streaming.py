"""Stream an answer in one of three modes: one implementation, two thin shells (sync and async).

:meth:`SemGradScorer.stream` and :meth:`SemGradScorer.astream` run :meth:`SemGradScorer.generate` in a
worker thread. ``generate`` scores the generated ids from its own KV cache and the residual states it
recorded (docs/method.md, "The fast path", step 5) the moment the last token is sampled. What the
consumer sees while that runs is the *stream mode*:

- ``observe``: text as generated; the score (and, in the service and adapters, the verdict) on the
  final chunk. What a client expects of ``stream=True``; nothing is held back.
- ``gate``: text released one sentence at a time, after that sentence's span score passed the span
  policy (``judge(span) -> decision``). The sentence is judged from a stopping criterion between two
  decode steps, on the answer so far: a span's loss depends only on the tokens up to its end, so its
  score there equals its score in the whole answer. ``keep`` / ``flag`` release the sentence, ``drop``
  withholds it and goes on, ``review`` withholds the rest (generation finishes: the whole answer is
  what a reviewer sees), ``abstain`` stops generation there, saving the rest of it.
- ``hold``: nothing until the whole answer is generated and scored; one chunk with all of it.

The worker and the model: generation's residual recording is thread-local and a scoring pass pauses
it (:meth:`ModelAdapter.not_recording`); a gate's scoring pass runs on the generating thread, between
two decode steps, so the two never interleave, and generation's own KV cache is never touched.

A consumer that stops listening (``close()`` on the iterator, ``break``, a cancelled task, a client
that disconnected from the service) sets the stream's stop event; a stopping criterion ends
generation at the next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import copy_context
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

from ..errors import ConfigurationError
from ..messages import Messages
from ..results import ScoreResult
from ..spans import split_sentences

StreamMode = Literal["observe", "gate", "hold"]
STREAM_MODES: tuple[str, ...] = ("observe", "gate", "hold")

RELEASING_ACTIONS = frozenset({"keep", "flag"})
"""Span actions under which gate mode releases the sentence."""


def check_stream_mode(mode: object, where: str = "stream_mode") -> StreamMode:
    """``mode`` if it is one of :data:`STREAM_MODES`, else a :class:`ConfigurationError` saying which are."""
    if mode not in STREAM_MODES:
        raise ConfigurationError(f"{where} must be one of 'observe', 'gate' or 'hold', got {mode!r}")
    return cast(StreamMode, mode)


class SpanJudge(Protocol):
    """What gate mode needs of a span policy (:class:`SpanPolicy` has it): ``judge(span) -> decision``,
    the decision carrying ``action`` (``keep``, ``flag``, ``drop``, ``review`` or ``abstain``)."""

    def judge(self, span: Any) -> Any: ...


SpanScorer = Callable[[Messages, str, tuple[int, int]], Any]
"""``span_scorer(messages, answer_so_far, (start, end)) -> SpanScore``: one sentence's score."""


class _TokenGenerating(Protocol):
    """What streaming needs of a scorer (:class:`SemGradScorer` has it): a tokenizer and ``generate``."""

    tokenizer: Any

    def generate(self, messages: Messages, **generate_kwargs: Any) -> tuple[str, ScoreResult]: ...


@dataclass(frozen=True)
class GateStop:
    """Why gate mode stopped releasing text: the sentence, and the span policy's decision on it.

    Attributes:
        span: The sentence's span score (``span.start``, ``span.end``: offsets into the scored text).
        decision: The span policy's decision (``decision.action``: ``review`` or ``abstain``).
        generation_stopped: Generation was cut at this sentence (``abstain``): the rest never ran.
    """

    span: Any
    decision: Any
    generation_stopped: bool

    @property
    def action(self) -> str:
        """The decision's action as a string."""
        return _action_of(self.decision)


@dataclass(frozen=True)
class StreamChunk:
    """One piece of a streamed answer.

    Attributes:
        delta: text new since the previous chunk (what the consumer shows). On the last chunk, whatever
            is still to be shown (observe: the final decode beyond the streamed text, usually ``""``;
            hold: the whole answer; gate: ``""``).
        text: the text released so far; on the last chunk, exactly the text that was scored (in gate
            mode that can hold sentences that were withheld or dropped: see ``stopped``, ``dropped``).
        result: the score, on the last chunk only.
        mode: the stream mode.
        stopped: gate mode only, on the last chunk: the sentence that ended the release, or None.
        dropped: gate mode only, on the last chunk: the span scores of sentences withheld by ``drop``.
    """

    delta: str
    text: str
    result: ScoreResult | None = None
    mode: StreamMode = "observe"
    stopped: GateStop | None = None
    dropped: tuple[Any, ...] = ()

    @property
    def released(self) -> bool:
        """True when everything scored was shown (no sentence withheld, none dropped)."""
        return self.stopped is None and not self.dropped


# ---------------------------------------------------------------------------------------------- events
@dataclass(frozen=True)
class _Release:
    delta: str


@dataclass(frozen=True)
class _Done:
    text: str
    result: ScoreResult
    stopped: GateStop | None = None
    dropped: tuple[Any, ...] = ()


@dataclass(frozen=True)
class _Failed:
    error: BaseException


class _Assembler:
    """Turns the worker's events (text pieces or releases, then done or failed) into :class:`StreamChunk` s."""

    def __init__(self, mode: StreamMode) -> None:
        self.mode = mode
        self.streamed = ""

    def chunk(self, event: object) -> StreamChunk | None:
        if isinstance(event, _Failed):
            raise event.error
        if isinstance(event, _Done):
            if self.mode == "gate":
                rest = ""
            elif event.text.startswith(self.streamed):
                # The streamer skips special tokens; generate decodes them as produced. Whatever the
                # final text has beyond what was streamed goes out with the score.
                rest = event.text[len(self.streamed) :]
            else:
                rest = ""
            return StreamChunk(
                delta=rest,
                text=event.text,
                result=event.result,
                mode=self.mode,
                stopped=event.stopped,
                dropped=event.dropped,
            )
        delta = event.delta if isinstance(event, _Release) else event
        assert isinstance(delta, str)
        if not delta:
            return None
        self.streamed += delta
        return StreamChunk(delta=delta, text=self.streamed, mode=self.mode)


# ---------------------------------------------------------------------------------------------- the gate
def _action_of(decision: Any) -> str:
    action = getattr(decision, "action", decision)
    return str(getattr(action, "value", action))


def score_span(scorer: Any, messages: Messages, answer: str, span: tuple[int, int]) -> Any:
    """One sentence's span score: ``scorer.score(messages, answer, spans=[span]).spans[0]``."""
    try:
        result = scorer.score(messages, answer, spans=[span])
    except TypeError as e:
        if "spans" not in str(e):
            raise
        raise ConfigurationError(
            f"gate mode needs span scores, and {type(scorer).__name__}.score takes no spans=; "
            "stream in 'observe' or 'hold' mode, or pass span_scorer="
        ) from e
    return result.spans[0]


@dataclass
class _Gate:
    """Gate mode's judge of completed sentences, called between decode steps and once at the end."""

    messages: Messages
    judge: SpanJudge
    span_scorer: Callable[[Messages, str, tuple[int, int]], Any]
    emit: Callable[[object], None]
    judged: int = 0  # sentences judged so far
    released: int = 0  # characters of the text released (or skipped by a drop)
    withholding: bool = False
    stopped: GateStop | None = None
    dropped: list[Any] = field(default_factory=list)

    def step(self, text: str, *, final: bool) -> bool:
        """Judge every sentence completed in ``text``; True when generation must stop now (abstain)."""
        spans = split_sentences(text)
        # The last sentence is complete only once something follows it (or generation ended): "3." may
        # still become "3.5".
        complete = spans if final else spans[:-1]
        for start, end in complete[self.judged :]:
            self.judged += 1
            if self.withholding:
                continue
            span = self.span_scorer(self.messages, text[:end], (start, end))
            decision = self.judge.judge(span)
            action = _action_of(decision)
            if action in RELEASING_ACTIONS:
                self.emit(_Release(text[self.released : end]))
                self.released = end
            elif action == "drop":
                self.dropped.append(span)
                self.released = end
            else:  # review or abstain: nothing more is shown
                halt = action == "abstain"
                self.stopped = GateStop(span=span, decision=decision, generation_stopped=halt and not final)
                self.withholding = True
                if halt:
                    return True
        return False


# ---------------------------------------------------------------------------------------------- the worker
def _criteria(
    scorer: _TokenGenerating, stop: threading.Event, gate: _Gate | None, generate_kwargs: dict[str, Any]
) -> Any:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    tokenizer = scorer.tokenizer
    eos = set(getattr(scorer, "eos_token_ids", None) or [])

    class _Stop(StoppingCriteria):
        """Stops when the consumer left, or (gate) when a sentence was judged 'abstain'."""

        def __init__(self) -> None:
            self.prompt_len: int | None = None

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            if self.prompt_len is None:  # called first after one new token
                self.prompt_len = input_ids.shape[1] - 1
            halt = stop.is_set()
            if not halt and gate is not None and not gate.withholding:
                ids = input_ids[0, self.prompt_len :].tolist()
                if ids and ids[-1] not in eos:  # at an end of turn, the final judge runs after generate
                    # Decoded as generate decodes its answer, so offsets are offsets into the scored text.
                    # Generate runs under no_grad; a scoring pass expects torch's default mode.
                    with torch.enable_grad():
                        halt = gate.step(tokenizer.decode(ids, skip_special_tokens=False), final=False)
            return torch.full((input_ids.shape[0],), halt, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([*(generate_kwargs.pop("stopping_criteria", None) or []), _Stop()])


def run_stream(
    scorer: _TokenGenerating,
    messages: Messages,
    emit: Callable[[object], None],
    *,
    mode: StreamMode = "observe",
    span_judge: SpanJudge | None = None,
    span_scorer: SpanScorer | None = None,
    stop: threading.Event | None = None,
    **generate_kwargs: Any,
) -> None:
    """Generate, score and (gate) judge in the calling thread, reporting through ``emit``.

    The body of every stream: :func:`stream` and :func:`astream` run it in a worker thread, the
    service's backend on its model thread. ``emit`` gets text (observe), releases (gate), then the
    end (the scored text and result) or the error.
    """
    try:
        if "streamer" in generate_kwargs:
            raise ConfigurationError("stream() attaches its own streamer; do not pass streamer=")
        stop = stop or threading.Event()
        gate = None
        if mode == "gate":
            if span_judge is None:
                raise ConfigurationError(
                    "gate mode needs a span policy (span_judge=, with judge(span) -> decision)"
                )
            gate = _Gate(
                messages,
                span_judge,
                span_scorer or (lambda m, a, s: score_span(scorer, m, a, s)),
                emit,
            )
        kwargs = dict(generate_kwargs)
        if getattr(scorer, "tokenizer", None) is not None and hasattr(scorer, "eos_token_ids"):
            kwargs["stopping_criteria"] = _criteria(scorer, stop, gate, kwargs)
        if mode == "observe" and getattr(scorer, "tokenizer", None) is not None:
            kwargs["streamer"] = _streamer(scorer.tokenizer, emit)
        text, result = scorer.generate(messages, **kwargs)
        if gate is not None and not gate.withholding:
            gate.step(text, final=True)
        emit(
            _Done(
                text,
                result,
                stopped=gate.stopped if gate else None,
                dropped=tuple(gate.dropped) if gate else (),
            )
        )
    except BaseException as e:  # raised again in the consumer
        emit(_Failed(e))


def _streamer(tokenizer: Any, emit: Callable[[object], None]) -> Any:
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                emit(text)

    return _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _thread(work: Callable[[], None]) -> threading.Thread:
    # Context variables (tracing, callbacks) follow the call into the worker.
    thread = threading.Thread(target=copy_context().run, args=(work,), name="semgrad-stream", daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------------------------------------- shells
def stream(
    scorer: _TokenGenerating,
    messages: Messages,
    *,
    mode: StreamMode = "observe",
    span_judge: SpanJudge | None = None,
    span_scorer: SpanScorer | None = None,
    **generate_kwargs: Any,
) -> Iterator[StreamChunk]:
    """Chunks of the answer in ``mode``, the last one carrying the score (see :meth:`SemGradScorer.stream`).

    Closing the iterator (or leaving a ``for`` loop early) stops generation at the next token.
    """
    mode = check_stream_mode(mode)
    events: queue.SimpleQueue[object] = queue.SimpleQueue()
    stop = threading.Event()

    def work() -> None:
        run_stream(
            scorer,
            messages,
            events.put,
            mode=mode,
            span_judge=span_judge,
            span_scorer=span_scorer,
            stop=stop,
            **generate_kwargs,
        )

    return _drain(events, _thread(work), stop, mode)


def _drain(
    events: queue.SimpleQueue[object], thread: threading.Thread, stop: threading.Event, mode: StreamMode
) -> Iterator[StreamChunk]:
    assembler = _Assembler(mode)
    try:
        while True:
            chunk = assembler.chunk(events.get())
            if chunk is None:
                continue
            yield chunk
            if chunk.result is not None:
                thread.join()
                return
    finally:
        stop.set()  # a consumer that left early: generation stops at the next token


Runner = Callable[[Callable[[], None]], Awaitable[Any]]
"""``runner(work)``: runs the blocking ``work()`` off the event loop (default: a thread of its own;
the service's backend: its model thread, queued between other passes)."""


async def astream(
    scorer: _TokenGenerating,
    messages: Messages,
    *,
    mode: StreamMode = "observe",
    span_judge: SpanJudge | None = None,
    span_scorer: SpanScorer | None = None,
    runner: Runner | None = None,
    **generate_kwargs: Any,
) -> AsyncIterator[StreamChunk]:
    """:func:`stream` for async code: the event loop never blocks on generation or scoring.

    Closing the iterator or cancelling the task consuming it stops generation at the next token.
    """
    mode = check_stream_mode(mode)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[object] = asyncio.Queue()
    stop = threading.Event()

    def emit(event: object) -> None:
        # The loop may have closed while the worker was finishing: then nobody is listening.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(events.put_nowait, event)

    def work() -> None:
        run_stream(
            scorer,
            messages,
            emit,
            mode=mode,
            span_judge=span_judge,
            span_scorer=span_scorer,
            stop=stop,
            **generate_kwargs,
        )

    task: asyncio.Future[Any]
    if runner is None:
        _thread(work)
        task = loop.create_future()
    else:
        task = asyncio.ensure_future(runner(work))
        # A runner that refuses the work (a full queue) reports it as the stream's error.
        task.add_done_callback(
            lambda t: None if t.cancelled() or t.exception() is None else emit(_Failed(t.exception()))  # type: ignore[arg-type]
        )
    assembler = _Assembler(mode)
    try:
        while True:
            chunk = assembler.chunk(await events.get())
            if chunk is None:
                continue
            yield chunk
            if chunk.result is not None:
                return
    finally:
        stop.set()  # generation stops at the next token
        if not task.done():
            task.cancel()  # still queued: it never starts


def span_json(span: Any) -> dict[str, Any]:
    """A span score as plain JSON data (a ``SpanScore``'s fields; for other objects their offsets and text)."""
    dump = getattr(span, "model_dump", None)
    if callable(dump):
        return dict(dump(mode="json"))
    return {k: getattr(span, k) for k in ("start", "end", "text") if hasattr(span, k)}


def stream_fields(chunk: StreamChunk) -> dict[str, Any]:
    """What a streamed answer's payload says about its stream (nothing for ``observe``).

    ``stream_mode``; in gate mode ``stopped`` (the sentence that ended the release: its span, the
    decision's action, reason and confidence, and whether generation was cut there) and ``dropped``.

    Example:
        >>> stream_fields(StreamChunk(delta="", text="Hi.", mode="hold"))
        {'stream_mode': 'hold'}
    """
    if chunk.mode == "observe":
        return {}
    out: dict[str, Any] = {"stream_mode": chunk.mode}
    if chunk.stopped is not None:
        decision = chunk.stopped.decision
        out["stopped"] = {
            **span_json(chunk.stopped.span),
            "action": chunk.stopped.action,
            "reason": getattr(decision, "reason", None),
            "confidence": getattr(decision, "confidence", None),
            "generation_stopped": chunk.stopped.generation_stopped,
        }
    if chunk.dropped:
        out["dropped"] = [span_json(s) for s in chunk.dropped]
    return out
