"""Micro-batching: concurrent requests are scored together, in one worker thread, not N threads.

A :class:`ServiceBackend` is what the app needs from whatever runs the model: the core
:class:`~semgrad_guard.GeneratingScorer` protocol (its async methods go through the queue) plus the
queue's depth and a close. :class:`MicroBatcher` is the single-process one: a bounded queue, a collector that waits at most ``max_wait_ms`` for a batch to
fill up to ``max_batch_size``, and one worker thread that runs ``score_batch`` (and, one at a time,
``generate``), so requests never fight over the cores. A Ray Serve deployment can supply its own
backend (``@serve.batch`` around ``score_batch``) through ``create_app(backend_factory=...)``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from ..errors import SemGradGuardError, ServiceUnavailableError
from ..messages import Messages
from ..results import ScoreResult
from ..scorer import GeneratingScorer, Scorer


@runtime_checkable
class ServiceBackend(GeneratingScorer, Protocol):
    """Runs the model for the app: the scorer protocol, whose async side is queued and batched as the
    backend sees fit (``ascore_batch``: admitted all together or refused all together, 503), plus:"""

    def queue_depth(self) -> int:
        """Requests waiting for the model."""
        ...

    async def aclose(self) -> None:
        """Stop and release the worker."""
        ...


def queue_full(waiting: int, limit: int, retry_after_s: int) -> ServiceUnavailableError:
    """The error (the app's 503 with Retry-After) for a request that finds the queue full."""
    return ServiceUnavailableError(
        f"the scoring queue is full ({waiting} waiting, limit {limit}); retry after "
        f"{retry_after_s} s, or raise max_queue / add replicas",
        status=503,
        error_type="ServiceUnavailableError",
        retry_after=float(retry_after_s),
    )


def score_batch_isolating(
    scorer: Scorer, pairs: Sequence[tuple[Messages, str]]
) -> list[ScoreResult | Exception]:
    """``scorer.score_batch(pairs)``; when the batch fails, each pair alone, so only a bad pair gets its error.

    Example:
        >>> from semgrad_guard import MockScorer
        >>> [r.semgrad for r in score_batch_isolating(MockScorer(lambda m, a: 0.5), [("q", "a"), ("q", "b")])]
        [0.5, 0.5]
    """
    try:
        return list(scorer.score_batch(pairs))
    except Exception as e:
        if len(pairs) == 1:
            return [e]
    out: list[ScoreResult | Exception] = []
    for pair in pairs:
        try:
            out.append(scorer.score_batch([pair])[0])
        except Exception as e:
            out.append(e)
    return out


RELEASE_AFTER_TOKENS = 256
"""Answer tokens in one pass from which the worker hands freed memory back to the system afterwards."""


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


def release_memory() -> bool:
    """Give freed heap memory back to the system (glibc's ``malloc_trim``); False where there is none.

    The vocabulary-sized tensors of a long answer are freed after the pass, but glibc keeps the pages
    for reuse, so the server's resident memory stays at its peak; trimming returns them.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def _tokens_of(outcomes: Sequence[Any]) -> int:
    return sum(getattr(o, "answer_tokens", 0) for o in outcomes if not isinstance(o, BaseException))


def score_batch_releasing(
    scorer: Scorer, pairs: Sequence[tuple[Messages, str]]
) -> list[ScoreResult | Exception]:
    """:func:`score_batch_isolating`, then :func:`release_memory` after a pass of
    :data:`RELEASE_AFTER_TOKENS` answer tokens or more (what a worker thread runs, here and on Ray)."""
    outcomes = score_batch_isolating(scorer, pairs)
    if _tokens_of(outcomes) >= RELEASE_AFTER_TOKENS:
        release_memory()
    return outcomes


def generate_releasing(generate: Callable[..., Any], messages: Any, kwargs: Mapping[str, Any]) -> Any:
    """``generate(messages, **kwargs)``, then :func:`release_memory` after a long answer."""
    out = generate(messages, **kwargs)
    if _tokens_of([out[1]]) >= RELEASE_AFTER_TOKENS:
        release_memory()
    return out


BatchObserver = Callable[[str, int], None]
"""``observer(kind, size)``: called for every pass the worker runs (``"score"`` or ``"generate"``)."""


@dataclass
class _Job:
    kind: Literal["score", "generate"]
    future: asyncio.Future[Any]
    pair: tuple[Messages, str] | None = None
    messages: Messages | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


class MicroBatcher:
    """Groups concurrent score requests into ``score_batch`` calls on one worker thread.

    Args:
        scorer: The scorer (``SemGradScorer`` or any :class:`Scorer`; ``generate`` for generations).
        max_batch_size: Most pairs per ``score_batch`` call.
        max_wait_ms: How long the first pair of a batch waits for others (0: take what is queued).
        max_queue: Most requests waiting; more raise :class:`ServiceUnavailableError` (the app's 503).
        retry_after_s: What the 503 tells clients to wait.
        observer: Called with ``(kind, size)`` for every pass (metrics).

    Example:
        >>> import asyncio
        >>> from semgrad_guard import MockScorer
        >>> batcher = MicroBatcher(MockScorer(lambda m, a: 0.25), max_batch_size=4)
        >>> async def main():
        ...     rs = await asyncio.gather(*(batcher.ascore("q", f"a{i}") for i in range(4)))
        ...     await batcher.aclose()
        ...     return [r.semgrad for r in rs]
        >>> asyncio.run(main())
        [0.25, 0.25, 0.25, 0.25]
    """

    def __init__(
        self,
        scorer: Scorer,
        *,
        max_batch_size: int = 8,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        retry_after_s: int = 1,
        observer: BatchObserver | None = None,
    ) -> None:
        self.scorer = scorer
        self.model_id = getattr(scorer, "model_id", None)
        self.profile = getattr(scorer, "profile", None)
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self._observer = observer
        # One thread: the model runs one pass at a time, with all of torch's threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semgrad-worker")
        self._jobs: collections.deque[_Job] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ Scorer
    def score(self, messages: Messages, answer: str) -> ScoreResult:
        """The scorer's own ``score`` (direct: the queue is the async side)."""
        return self.scorer.score(messages, answer)

    def score_batch(self, pairs: Sequence[tuple[Messages, str]]) -> list[ScoreResult]:
        """The scorer's own ``score_batch`` (direct)."""
        return self.scorer.score_batch(pairs)

    def generate(self, messages: Messages, **generate_kwargs: Any) -> tuple[str, ScoreResult]:
        """The scorer's own ``generate`` (direct)."""
        return self.scorer.generate(messages, **generate_kwargs)  # type: ignore[attr-defined,no-any-return]

    async def ascore(self, messages: Messages, answer: str) -> ScoreResult:
        """Score one pair through the queue (batched with other requests' pairs)."""
        (result,) = await self.ascore_batch([(messages, answer)])
        return result

    async def ascore_batch(self, pairs: Sequence[tuple[Messages, str]]) -> list[ScoreResult]:
        """Score pairs through the queue, admitted all together or refused all together (503)."""
        loop = self._start()
        jobs = [_Job("score", loop.create_future(), pair=(m, a)) for m, a in pairs]
        return list(await self._submit(jobs))

    async def agenerate(self, messages: Messages, **generate_kwargs: Any) -> tuple[str, ScoreResult]:
        """Generate and score one answer on the worker thread, between score batches."""
        loop = self._start()
        job = _Job("generate", loop.create_future(), messages=messages, kwargs=dict(generate_kwargs))
        (out,) = await self._submit([job])
        return out  # type: ignore[no-any-return]

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the worker thread (between passes): checks that tokenize, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    def queue_depth(self) -> int:
        return len(self._jobs)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._task
            self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ internals
    def _start(self) -> asyncio.AbstractEventLoop:
        # Started lazily in the running loop: ASGI transports without lifespan events (httpx's) work too.
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop = loop
            self._arrived = asyncio.Event()
            self._jobs.clear()
            self._task = loop.create_task(self._run(), name="semgrad-micro-batcher")
        return loop

    async def _submit(self, jobs: list[_Job]) -> list[Any]:
        if len(self._jobs) + len(jobs) > self.max_queue:
            raise queue_full(len(self._jobs), self.max_queue, self.retry_after_s)
        self._jobs.extend(jobs)
        assert self._arrived is not None
        self._arrived.set()
        try:
            outs = await asyncio.gather(*(j.future for j in jobs), return_exceptions=True)
        except asyncio.CancelledError:
            for j in jobs:  # the client went away: do not score for nobody
                j.future.cancel()
            raise
        for i, out in enumerate(outs):
            if isinstance(out, BaseException):
                if len(jobs) > 1 and isinstance(out, SemGradGuardError) and out.args:
                    out.args = (f"items[{i}]: {out.args[0]}", *out.args[1:])  # say which pair failed
                raise out
        return outs

    async def _next(self, timeout: float | None) -> _Job | None:
        assert self._arrived is not None
        while not self._jobs:
            self._arrived.clear()
            if timeout is None:
                await self._arrived.wait()
            else:
                try:
                    await asyncio.wait_for(self._arrived.wait(), timeout)
                except TimeoutError:
                    return None
        return self._jobs.popleft()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Job | None = None
        while True:
            job = carry or await self._next(None)
            carry = None
            assert job is not None
            if job.future.done():
                continue
            if job.kind == "generate":
                await self._run_generate(job)
                continue
            batch = [job]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch_size:
                if self._jobs:
                    nxt: _Job | None = self._jobs.popleft()
                else:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    nxt = await self._next(remaining)
                    if nxt is None:
                        break
                assert nxt is not None
                if nxt.future.done():
                    continue
                if nxt.kind != "score":
                    carry = nxt  # generations run alone, after this batch
                    break
                batch.append(nxt)
            await self._run_scores(batch)

    async def _run_scores(self, batch: list[_Job]) -> None:
        live = [j for j in batch if not j.future.done()]
        if not live:
            return
        if self._observer is not None:
            self._observer("score", len(live))
        pairs = [j.pair for j in live]
        loop = asyncio.get_running_loop()
        outcomes = await loop.run_in_executor(self._executor, self._score_batch, pairs)
        for j, out in zip(live, outcomes, strict=True):
            if j.future.done():
                continue
            if isinstance(out, BaseException):
                j.future.set_exception(out)
            else:
                j.future.set_result(out)

    def _score_batch(self, pairs: list[Any]) -> list[ScoreResult | Exception]:
        return score_batch_releasing(self.scorer, pairs)

    async def _run_generate(self, job: _Job) -> None:
        if self._observer is not None:
            self._observer("generate", 1)
        generate = getattr(self.scorer, "generate", None)
        loop = asyncio.get_running_loop()
        try:
            if generate is None:
                raise TypeError(f"{type(self.scorer).__name__} cannot generate (not a GeneratingScorer)")
            out = await loop.run_in_executor(
                self._executor, generate_releasing, generate, job.messages, job.kwargs
            )
        except Exception as e:
            if not job.future.done():
                job.future.set_exception(e)
            return
        if not job.future.done():
            job.future.set_result(out)
