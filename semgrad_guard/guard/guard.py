"""The guard: score an answer, calibrate, apply the policy, retry, abstain or send it to human review.

Framework-free: the LangChain and LlamaIndex adapters translate their objects and call
:meth:`Guard.check` / :meth:`Guard.run` (or the async variants). Abstain and review are results,
not exceptions; only a rule with action ``raise`` (or ``on_exhausted: raise``) raises.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    AnswerRejectedError,
    ConfigurationError,
    RetriesExhaustedError,
    ReviewTimeoutError,
)
from ..messages import Message, Messages, normalize_messages
from ..results import ScoreResult
from ..scorer import Scorer
from .calibration import Calibrator
from .outcomes import Attempt, GuardResult
from .policy import Action, GuardPolicy, Verdict, judge
from .strategies import AttemptContext, RetryStrategy, resolve_strategies

if TYPE_CHECKING:
    from ..review.queue import ReviewItem, ReviewQueue

logger = logging.getLogger(__name__)

__all__ = ["Attempt", "Guard", "GuardResult", "GenerateFn", "is_stop_exception"]
# Attempt and GuardResult live in semgrad_guard.guard.outcomes; re-exported here for one release.

GenerateFn = Callable[[list[Message], AttemptContext], Any]
"""``generate_fn(messages, context) -> str | (str, ScoreResult)``, or a coroutine function returning that."""

STOP_EXCEPTION_NAMES = frozenset(
    {"GraphBubbleUp", "GraphInterrupt", "NodeInterrupt", "ParentCommand", "Interrupt"}
)
"""Exception class names (anywhere in the MRO) that mean "stop", never "retry" (LangGraph's, matched by name)."""


def is_stop_exception(exc: BaseException) -> bool:
    """True for exceptions that must never be retried or swallowed.

    KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError (any non-``Exception``),
    and LangGraph's interrupts (``GraphInterrupt``, ``ParentCommand``: detected by class name, so
    langgraph is not imported).
    """
    if not isinstance(exc, Exception):
        return True
    return any(cls.__name__ in STOP_EXCEPTION_NAMES for cls in type(exc).__mro__)


class _Exhausted:
    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc


class Guard:
    """Scores answers, applies a :class:`GuardPolicy`, retries with strategies, abstains or escalates to review.

    Args:
        scorer: Any :class:`Scorer` (``SemGradScorer``, ``MockScorer``, ...).
        policy: A :class:`GuardPolicy`, a dict, YAML text, or a YAML/JSON file path (see :meth:`GuardPolicy.coerce`).
        calibrator: Maps scores to confidence; required when a rule is over ``confidence``.
        review_queue: Where 'review' items go (default: a :class:`SQLiteReviewQueue` at
            ``policy.review.path`` or the default path, opened on first use).
        strategies: Retry strategies by name, added to (or overriding) the built-in ones.

    Example:
        >>> from semgrad_guard import MockScorer
        >>> scorer = MockScorer(lambda m, a: 0.9 if a == "Sydney" else 0.1)
        >>> policy = GuardPolicy.from_dict({
        ...     "rules": [{"field": "semgrad", "max": 0.5, "action": "accept"}, {"action": "retry"}],
        ...     "retry": {"max_attempts": 2, "strategy": "reconsider", "on_exhausted": "abstain"}})
        >>> answers = iter(["Sydney", "Canberra"])
        >>> r = Guard(scorer, policy).run("Capital of Australia?", lambda messages, ctx: next(answers))
        >>> r.answer, [a.answer for a in r.attempts], r.attempts[1].strategy
        ('Canberra', ['Sydney', 'Canberra'], 'reconsider')
    """

    def __init__(
        self,
        scorer: Scorer,
        policy: GuardPolicy | Mapping[str, Any] | str | Path,
        calibrator: Calibrator | None = None,
        review_queue: ReviewQueue | None = None,
        strategies: Mapping[str, RetryStrategy] | None = None,
    ) -> None:
        self.policy = GuardPolicy.coerce(policy)
        if self.policy.uses_confidence and calibrator is None:
            raise ConfigurationError(
                "the policy has rules over 'confidence' but no calibrator was given: pass "
                "calibrator=Calibrator.load(...) (or Calibrator.default_for(model_id)), or write the rules over a raw score"
            )
        if calibrator is not None:
            calibrator.check_compatible(getattr(scorer, "model_id", None), getattr(scorer, "profile", None))
        self.scorer = scorer
        self.calibrator = calibrator
        self._queue = review_queue
        self._strategies: dict[str, RetryStrategy] = {}
        if Action.RETRY in self.policy.actions:
            self._strategies = resolve_strategies(self.policy.retry.strategies, strategies)
        first = self.policy.rules[0].field
        self._rank_field = self.policy.rank_by or ("confidence" if calibrator is not None else first)
        if self._rank_field == "confidence" and calibrator is None:
            self._rank_field = "semgrad"

    # ------------------------------------------------------------------ public API
    def judge(self, result: ScoreResult | None) -> Verdict:
        """Confidence, action and rule for one scored answer (``None``: scoring failed -> ``on_error``).

        No retry, no review, no I/O: what every adapter asks when it already holds the scores.
        """
        return judge(self.policy, result, self.calibrator)

    @property
    def review_queue(self) -> ReviewQueue:
        """The review queue (opened on first use)."""
        if self._queue is None:
            from ..review.queue import SQLiteReviewQueue, default_review_db_path

            self._queue = SQLiteReviewQueue(self.policy.review.path or default_review_db_path())
        return self._queue

    def check(
        self,
        messages: Messages,
        answer: str,
        *,
        result: ScoreResult | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> GuardResult:
        """Score one answer and apply the policy (no retry: a 'retry' decision is returned for the caller to act on).

        Args:
            messages: The chat the answer replies to.
            answer: The answer text.
            result: Scores already computed for this exact pair (skips scoring).
            metadata: Stored with a review item.
        """
        t0 = time.perf_counter()
        chat = normalize_messages(messages)
        ctx = AttemptContext(number=1, messages=chat, original_messages=chat, score_messages=chat)
        attempt = Attempt(number=1, answer=answer)
        t1 = time.perf_counter()
        if result is None:
            try:
                result = self.scorer.score(chat, answer)
            except Exception as e:
                if is_stop_exception(e):
                    raise
                self._score_failed(attempt, e)
        attempt.timings["score_s"] = time.perf_counter() - t1
        if result is not None:
            self._judge(attempt, result)
        if attempt.action is Action.RETRY:
            return self._result(
                Action.RETRY, attempt, [attempt], t0, answer=attempt.answer or "", rule=attempt.rule
            )
        return self._finish_sync(attempt, [attempt], ctx, t0, metadata)

    async def acheck(
        self,
        messages: Messages,
        answer: str,
        *,
        result: ScoreResult | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> GuardResult:
        """Async :meth:`check`: scoring via ``scorer.ascore``, the review queue in a thread."""
        t0 = time.perf_counter()
        chat = normalize_messages(messages)
        ctx = AttemptContext(number=1, messages=chat, original_messages=chat, score_messages=chat)
        attempt = Attempt(number=1, answer=answer)
        t1 = time.perf_counter()
        if result is None:
            try:
                result = await self.scorer.ascore(chat, answer)
            except Exception as e:
                if is_stop_exception(e):
                    raise
                self._score_failed(attempt, e)
        attempt.timings["score_s"] = time.perf_counter() - t1
        if result is not None:
            self._judge(attempt, result)
        if attempt.action is Action.RETRY:
            return self._result(
                Action.RETRY, attempt, [attempt], t0, answer=attempt.answer or "", rule=attempt.rule
            )
        return await self._finish_async(attempt, [attempt], ctx, t0, metadata)

    def run(
        self,
        messages: Messages,
        generate_fn: GenerateFn | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> GuardResult:
        """Generate, score and decide; retry with the policy's strategies while the policy says 'retry'.

        Args:
            messages: The chat.
            generate_fn: ``generate_fn(messages, context) -> str | (str, ScoreResult)``; it must honour
                ``context.generate_kwargs`` (temperature, seed, ...). Default: the scorer's own
                ``generate`` (a :class:`GeneratingScorer`), whose scores are reused.
            metadata: Stored with a review item.

        Raises:
            AnswerRejectedError: A rule with action 'raise' fired.
            RetriesExhaustedError: Retries ran out and ``retry.on_exhausted`` is 'raise'.
            Exception: generate_fn's own error, once retries are exhausted (never retried: KeyboardInterrupt,
                CancelledError, LangGraph interrupts).
        """
        gen = self._generate_fn(generate_fn, asynchronous=False)
        t0 = time.perf_counter()
        chat = normalize_messages(messages)
        attempts: list[Attempt] = []
        contexts: list[AttemptContext] = []

        def one() -> Attempt:
            ctx = self._prepare_sync(len(attempts) + 1, chat, attempts)
            contexts.append(ctx)
            attempt = Attempt(number=ctx.number, strategy=ctx.strategy, changes=dict(ctx.changes))
            attempts.append(attempt)
            t1 = time.perf_counter()
            try:
                out = gen(ctx.messages, ctx)
            except BaseException as e:
                attempt.error, attempt.error_stage = f"{type(e).__name__}: {e}", "generate"
                raise
            finally:
                attempt.timings["generate_s"] = time.perf_counter() - t1
            answer, given = self._unpack(out, attempt)
            t2 = time.perf_counter()
            result = given if given is not None and ctx.score_messages == ctx.messages else None
            if result is None:
                try:
                    result = self.scorer.score(ctx.score_messages, answer)
                except Exception as e:
                    if is_stop_exception(e):
                        raise
                    self._score_failed(attempt, e)
            attempt.timings["score_s"] = time.perf_counter() - t2
            if result is not None:
                self._judge(attempt, result)
            return attempt

        outcome = self._retrying(asynchronous=False)(one)
        return self._after_run(outcome, attempts, contexts, t0, metadata, sync=True)  # type: ignore[return-value]

    async def arun(
        self,
        messages: Messages,
        generate_fn: GenerateFn | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> GuardResult:
        """Async :meth:`run`. ``generate_fn`` may be a coroutine function; a sync one runs in a thread."""
        gen = self._generate_fn(generate_fn, asynchronous=True)
        t0 = time.perf_counter()
        chat = normalize_messages(messages)
        attempts: list[Attempt] = []
        contexts: list[AttemptContext] = []

        async def one() -> Attempt:
            ctx = await self._prepare_async(len(attempts) + 1, chat, attempts)
            contexts.append(ctx)
            attempt = Attempt(number=ctx.number, strategy=ctx.strategy, changes=dict(ctx.changes))
            attempts.append(attempt)
            t1 = time.perf_counter()
            try:
                out = await gen(ctx.messages, ctx)
            except BaseException as e:
                attempt.error, attempt.error_stage = f"{type(e).__name__}: {e}", "generate"
                raise
            finally:
                attempt.timings["generate_s"] = time.perf_counter() - t1
            answer, given = self._unpack(out, attempt)
            t2 = time.perf_counter()
            result = given if given is not None and ctx.score_messages == ctx.messages else None
            if result is None:
                try:
                    result = await self.scorer.ascore(ctx.score_messages, answer)
                except Exception as e:
                    if is_stop_exception(e):
                        raise
                    self._score_failed(attempt, e)
            attempt.timings["score_s"] = time.perf_counter() - t2
            if result is not None:
                self._judge(attempt, result)
            return attempt

        outcome = await self._retrying(asynchronous=True)(one)
        final = self._after_run(outcome, attempts, contexts, t0, metadata, sync=False)
        assert inspect.isawaitable(final)
        return await final

    # ------------------------------------------------------------------ internals: steps
    def _generate_fn(self, generate_fn: GenerateFn | None, *, asynchronous: bool) -> Any:
        if generate_fn is None:
            scorer: Any = self.scorer
            if not (hasattr(scorer, "generate") and hasattr(scorer, "agenerate")):
                raise ConfigurationError(
                    f"run() without generate_fn needs a GeneratingScorer; {type(scorer).__name__} cannot generate"
                )
            if asynchronous:

                async def agen(messages: list[Message], ctx: AttemptContext) -> Any:
                    return await scorer.agenerate(messages, **ctx.generate_kwargs)

                return agen
            return lambda messages, ctx: scorer.generate(messages, **ctx.generate_kwargs)
        if not callable(generate_fn):
            raise ConfigurationError("generate_fn must be callable as generate_fn(messages, context)")
        if not asynchronous:
            if inspect.iscoroutinefunction(generate_fn):
                raise ConfigurationError("generate_fn is a coroutine function: use Guard.arun")
            return generate_fn
        if inspect.iscoroutinefunction(generate_fn):
            return generate_fn

        async def wrapped(messages: list[Message], ctx: AttemptContext) -> Any:
            out = await asyncio.to_thread(generate_fn, messages, ctx)
            if inspect.isawaitable(out):
                out = await out
            return out

        return wrapped

    @staticmethod
    def _unpack(out: Any, attempt: Attempt) -> tuple[str, ScoreResult | None]:
        given: ScoreResult | None = None
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], ScoreResult):
            out, given = out
        if not isinstance(out, str):
            raise ConfigurationError(
                f"generate_fn must return str or (str, ScoreResult), got {type(out).__name__}"
            )
        attempt.answer = out
        return out, given

    def _strategy_for(self, number: int) -> RetryStrategy | None:
        if number <= 1 or not self._strategies:
            return None
        names = self.policy.retry.strategies
        return self._strategies[names[(number - 2) % len(names)]]

    def _base_context(self, number: int, chat: list[Message], attempts: list[Attempt]) -> AttemptContext:
        return AttemptContext(
            number=number,
            messages=chat,
            original_messages=chat,
            score_messages=chat,
            previous=tuple(attempts),
        )

    def _prepare_sync(self, number: int, chat: list[Message], attempts: list[Attempt]) -> AttemptContext:
        ctx = self._base_context(number, chat, attempts)
        strategy = self._strategy_for(number)
        return strategy.prepare(ctx) if strategy is not None else ctx

    async def _prepare_async(
        self, number: int, chat: list[Message], attempts: list[Attempt]
    ) -> AttemptContext:
        ctx = self._base_context(number, chat, attempts)
        strategy = self._strategy_for(number)
        if strategy is None:
            return ctx
        aprepare = getattr(strategy, "aprepare", None)
        if aprepare is not None:
            out: AttemptContext = await aprepare(ctx)
            return out
        return strategy.prepare(ctx)

    def _score_failed(self, attempt: Attempt, exc: Exception) -> None:
        logger.warning(
            "scoring failed (%s: %s); policy on_error=%s", type(exc).__name__, exc, self.policy.on_error
        )
        attempt.error = f"{type(exc).__name__}: {exc}"
        attempt.error_stage = "score"
        attempt.action = self.policy.on_error
        attempt.rule = "on_error"

    def _judge(self, attempt: Attempt, result: ScoreResult) -> None:
        attempt.result = result
        if result.answer_start and attempt.answer is not None:
            # The scorer cut an echoed prompt off the front: return exactly the text it scored.
            attempt.answer = result.scored_text(attempt.answer)
        verdict = self.judge(result)
        attempt.confidence, attempt.action, attempt.rule = verdict.confidence, verdict.action, verdict.rule

    def _rank(self, attempt: Attempt) -> float:
        if self._rank_field == "confidence":
            return attempt.confidence if attempt.confidence is not None else float("-inf")
        assert attempt.result is not None
        return -float(getattr(attempt.result, self._rank_field))

    # ------------------------------------------------------------------ internals: retrying
    def _retrying(self, *, asynchronous: bool) -> Any:
        import tenacity

        settings = self.policy.retry
        user = settings.retrying
        attempts_possible = Action.RETRY in {r.action for r in self.policy.rules}

        def should_retry(state: tenacity.RetryCallState) -> bool:
            outcome = state.outcome
            assert outcome is not None
            if outcome.failed:
                exc = outcome.exception()
                if exc is None or is_stop_exception(exc) or isinstance(exc, ConfigurationError):
                    return False
                return bool(user.retry(state)) if user is not None else attempts_possible
            return bool(outcome.result().action is Action.RETRY)

        def exhausted(state: tenacity.RetryCallState) -> _Exhausted:
            outcome = state.outcome
            return _Exhausted(outcome.exception() if outcome is not None and outcome.failed else None)

        cls = tenacity.AsyncRetrying if asynchronous else tenacity.Retrying
        if user is not None:
            return cls(
                stop=user.stop,
                wait=user.wait,
                before=user.before,
                after=user.after,
                before_sleep=user.before_sleep,
                retry=should_retry,
                retry_error_callback=exhausted,
                reraise=True,
            )
        wait: Any = (
            tenacity.wait_exponential(multiplier=settings.wait, exp_base=settings.backoff)
            if settings.backoff > 1 and settings.wait > 0
            else tenacity.wait_fixed(settings.wait)
        )
        return cls(
            stop=tenacity.stop_after_attempt(settings.max_attempts),
            wait=wait,
            retry=should_retry,
            retry_error_callback=exhausted,
            reraise=True,
        )

    def _after_run(
        self,
        outcome: Attempt | _Exhausted,
        attempts: list[Attempt],
        contexts: list[AttemptContext],
        t0: float,
        metadata: Mapping[str, Any] | None,
        *,
        sync: bool,
    ) -> GuardResult | Awaitable[GuardResult]:
        if isinstance(outcome, Attempt) and outcome.action is not Action.RETRY:
            ctx = contexts[outcome.number - 1]
            return (self._finish_sync if sync else self._finish_async)(outcome, attempts, ctx, t0, metadata)
        # Retries ran out: the best-scoring attempt, then the policy's on_exhausted action.
        scored = [a for a in attempts if a.result is not None]
        if not scored:
            exc = outcome.exc if isinstance(outcome, _Exhausted) else None
            if exc is not None:
                raise exc
            raise RetriesExhaustedError(
                f"no attempt out of {len(attempts)} produced a scored answer", attempts=attempts
            )
        best = max(scored, key=self._rank)
        ctx = contexts[best.number - 1]
        action = self.policy.retry.on_exhausted
        if action is Action.RAISE:
            result = self._result(
                Action.RAISE, best, attempts, t0, answer=best.answer or "", rule="retry.on_exhausted"
            )
            err = RetriesExhaustedError(
                f"all {len(attempts)} attempts stayed below the policy's bar (best {self._rank_field}: "
                f"{self._rank(best):.4g})",
                attempts=attempts,
                last_result=attempts[-1].result,
            )
            err.guard_result = result  # type: ignore[attr-defined]
            raise err
        decision = best.model_copy(update={"action": action, "rule": "retry.on_exhausted"})
        return (self._finish_sync if sync else self._finish_async)(decision, attempts, ctx, t0, metadata)

    # ------------------------------------------------------------------ internals: final actions
    def _finish_sync(
        self,
        attempt: Attempt,
        attempts: list[Attempt],
        ctx: AttemptContext,
        t0: float,
        metadata: Mapping[str, Any] | None,
    ) -> GuardResult:
        if attempt.action is not Action.REVIEW:
            return self._final(attempt, attempts, t0)
        t1 = time.perf_counter()
        queue = self.review_queue
        item_id = queue.enqueue(
            ctx.score_messages,
            attempt.answer or "",
            result=attempt.result,
            confidence=attempt.confidence,
            rule=attempt.rule,
            metadata=self._review_metadata(attempt, attempts, metadata),
        )
        item = None
        if self.policy.review.wait is not None:
            try:
                item = queue.wait(
                    item_id, timeout=self.policy.review.wait, poll_interval=self.policy.review.poll_interval
                )
            except ReviewTimeoutError:
                item = None
        return self._review_result(attempt, attempts, t0, item_id, item, time.perf_counter() - t1)

    async def _finish_async(
        self,
        attempt: Attempt,
        attempts: list[Attempt],
        ctx: AttemptContext,
        t0: float,
        metadata: Mapping[str, Any] | None,
    ) -> GuardResult:
        if attempt.action is not Action.REVIEW:
            return self._final(attempt, attempts, t0)
        t1 = time.perf_counter()
        queue = self.review_queue
        item_id = await asyncio.to_thread(
            queue.enqueue,
            ctx.score_messages,
            attempt.answer or "",
            result=attempt.result,
            confidence=attempt.confidence,
            rule=attempt.rule,
            metadata=self._review_metadata(attempt, attempts, metadata),
        )
        item = None
        if self.policy.review.wait is not None:
            try:
                item = await queue.await_decision(
                    item_id, timeout=self.policy.review.wait, poll_interval=self.policy.review.poll_interval
                )
            except ReviewTimeoutError:
                item = None
        return self._review_result(attempt, attempts, t0, item_id, item, time.perf_counter() - t1)

    @staticmethod
    def _review_metadata(
        attempt: Attempt, attempts: list[Attempt], metadata: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        out: dict[str, Any] = dict(metadata or {})
        out.setdefault("attempt", attempt.number)
        out.setdefault("attempts", len(attempts))
        if attempt.error:
            out.setdefault("error", attempt.error)
        return out

    def _review_result(
        self,
        attempt: Attempt,
        attempts: list[Attempt],
        t0: float,
        item_id: int,
        item: ReviewItem | None,
        review_s: float,
    ) -> GuardResult:
        status = "pending" if item is None else item.status.value
        final = item.final_answer if item is not None else None
        answer = self.policy.answer_after_review(status, final, attempt.answer or "")
        result = self._result(Action.REVIEW, attempt, attempts, t0, answer=answer, rule=attempt.rule)
        result.review_id = item_id
        result.review_status = status
        result.timings["review_s"] = review_s
        result.timings["total_s"] = time.perf_counter() - t0
        return result

    def _final(self, attempt: Attempt, attempts: list[Attempt], t0: float) -> GuardResult:
        action = attempt.action
        assert action is not None
        message = self._rule_message(attempt.rule)
        annotation = None
        answer = (
            (message or self.policy.abstain_message) if action is Action.ABSTAIN else (attempt.answer or "")
        )
        if action is Action.ANNOTATE:
            annotation = message or self.policy.annotate_message
        result = self._result(action, attempt, attempts, t0, answer=answer, rule=attempt.rule)
        result.annotation = annotation
        if action is Action.RAISE:
            where = f"rule {attempt.rule!r}" if attempt.rule else "the policy"
            detail = f" ({attempt.error})" if attempt.error else ""
            raise AnswerRejectedError(f"{where} rejected the answer{detail}", guard_result=result)
        return result

    def _rule_message(self, name: str | None) -> str | None:
        for rule in self.policy.rules:
            if rule.name == name:
                return rule.message
        return None

    @staticmethod
    def _result(
        action: Action, attempt: Attempt, attempts: list[Attempt], t0: float, *, answer: str, rule: str | None
    ) -> GuardResult:
        timings = {
            "total_s": time.perf_counter() - t0,
            "generate_s": sum(a.timings.get("generate_s", 0.0) for a in attempts),
            "score_s": sum(a.timings.get("score_s", 0.0) for a in attempts),
        }
        errors = [
            a.error for a in attempts if a.error and a.error_stage == "score" and a.number == attempt.number
        ]
        return GuardResult(
            action=action,
            answer=answer,
            original_answer=attempts[0].answer if attempts else None,
            attempts=list(attempts),
            rule=rule,
            confidence=attempt.confidence,
            result=attempt.result,
            error=errors[0] if errors else attempt.error,
            timings=timings,
        )
