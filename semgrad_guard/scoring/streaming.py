"""Stream an answer's text while it is generated, then its score: one implementation, two thin shells.

:meth:`SemGradScorer.stream` and :meth:`SemGradScorer.astream` run :meth:`SemGradScorer.generate` in a
worker thread with a text streamer attached. ``generate`` scores the generated ids from its own KV cache
and the residual states it recorded (docs/method.md, "The fast path", step 5) the moment the last token
is sampled: nothing is re-encoded, and the scored final chunk follows the last text chunk by the
scoring pass alone. The shells differ only in how they wait for the worker's next event (a blocking
queue, or an asyncio queue fed through ``call_soon_threadsafe``); turning events into chunks is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import copy_context
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import ConfigurationError
from ..messages import Messages
from ..results import ScoreResult


class _TokenGenerating(Protocol):
    """What streaming needs of a scorer (:class:`SemGradScorer` has it): a tokenizer and ``generate``."""

    tokenizer: Any

    def generate(self, messages: Messages, **generate_kwargs: Any) -> tuple[str, ScoreResult]: ...


@dataclass(frozen=True)
class StreamChunk:
    """One piece of a streamed answer.

    Attributes:
        delta: text new since the previous chunk. On the last chunk, whatever the final decode holds
            beyond the streamed text (usually ``""``).
        text: the answer so far; on the last chunk, exactly the text that was scored.
        result: the score, on the last chunk only.
    """

    delta: str
    text: str
    result: ScoreResult | None = None


@dataclass(frozen=True)
class _Done:
    text: str
    result: ScoreResult


@dataclass(frozen=True)
class _Failed:
    error: BaseException


class _Assembler:
    """Turns the worker's events (text pieces, then done or failed) into :class:`StreamChunk` s."""

    def __init__(self) -> None:
        self.streamed = ""

    def chunk(self, event: object) -> StreamChunk | None:
        if isinstance(event, _Failed):
            raise event.error
        if isinstance(event, _Done):
            # The streamer skips special tokens; generate decodes them as produced. Whatever the
            # final text has beyond what was streamed goes out with the score.
            rest = event.text[len(self.streamed) :] if event.text.startswith(self.streamed) else ""
            return StreamChunk(delta=rest, text=event.text, result=event.result)
        assert isinstance(event, str)
        if not event:
            return None
        self.streamed += event
        return StreamChunk(delta=event, text=self.streamed)


def _start(
    scorer: _TokenGenerating,
    messages: Messages,
    generate_kwargs: dict[str, Any],
    emit: Callable[[object], None],
) -> threading.Thread:
    """Start generating (and scoring) in a worker thread that reports through ``emit``."""
    if "streamer" in generate_kwargs:
        raise ConfigurationError("stream() attaches its own streamer; do not pass streamer=")
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                emit(text)

    streamer = _Streamer(scorer.tokenizer, skip_prompt=True, skip_special_tokens=True)

    def work() -> None:
        try:
            text, result = scorer.generate(messages, streamer=streamer, **generate_kwargs)
        except BaseException as e:  # raised again in the consumer
            emit(_Failed(e))
            return
        emit(_Done(text, result))

    # Context variables (tracing, callbacks) follow the call into the worker.
    thread = threading.Thread(target=copy_context().run, args=(work,), name="semgrad-stream", daemon=True)
    thread.start()
    return thread


def stream(scorer: _TokenGenerating, messages: Messages, **generate_kwargs: Any) -> Iterator[StreamChunk]:
    """Text chunks as they are generated, then one chunk carrying the score (see :meth:`SemGradScorer.stream`)."""
    events: queue.SimpleQueue[object] = queue.SimpleQueue()
    thread = _start(scorer, messages, generate_kwargs, events.put)
    assembler = _Assembler()
    while True:
        chunk = assembler.chunk(events.get())
        if chunk is None:
            continue
        yield chunk
        if chunk.result is not None:
            thread.join()
            return


async def astream(
    scorer: _TokenGenerating, messages: Messages, **generate_kwargs: Any
) -> AsyncIterator[StreamChunk]:
    """:func:`stream` for async code: the event loop never blocks on generation or scoring."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[object] = asyncio.Queue()

    def emit(event: object) -> None:
        # The loop may have closed while the worker was finishing: then nobody is listening.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(events.put_nowait, event)

    _start(scorer, messages, generate_kwargs, emit)
    assembler = _Assembler()
    while True:
        chunk = assembler.chunk(await events.get())
        if chunk is None:
            continue
        yield chunk
        if chunk.result is not None:
            return
