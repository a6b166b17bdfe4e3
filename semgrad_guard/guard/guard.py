"""The guard: score an answer, calibrate, apply the policy, retry, abstain or send it to human review.

Framework-free: the LangChain and LlamaIndex adapters translate their objects and call
:meth:`Guard.check` / :meth:`Guard.run` (or the async variants). Abstain and review are results,
not exceptions; only a rule with action ``raise`` (or ``on_exhausted: raise``) raises.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import threading
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
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
from .outcomes import Attempt, Generated, GuardResult
from .policy import Action, GuardPolicy, Verdict, judge
from .spans import SpanPolicy
from .strategies import AttemptContext, RetryStrategy, resolve_strategies

if TYPE_CHECKING:
    from ..review.queue import ReviewItem, ReviewQueue

logger = logging.getLogger(__name__)

__all__ = ["GenerateFn", "Guard", "is_stop_exception", "register_stop_exception"]

GenerateFn = Callable[[list[Message], AttemptContext], Any]
"""``generate_fn(messages, context) -> str | (str, ScoreResult) | Generated``, or a coroutine function returning that."""

_STOP_EXCEPTIONS: set[type[BaseException]] = set()
_ANNOUNCED_QUEUES: set[str] = set()


def _announce_default_queue(path: str | Path) -> None:
    # Reviews are durable data: a user who gave no queue must learn where they went, once per path.
    key = str(path)
    if key not in _ANNOUNCED_QUEUES:
        _ANNOUNCED_QUEUES.add(key)
        logger.warning(
            "review items go to %s (no review queue given: pass review_queue=..., set review.path in the "
            "policy, or SEMGRAD_GUARD_REVIEW_DB); work through them with 'semgrad-guard review list'",
            path,
        )


def register_stop_exception(cls: type[BaseException]) -> None:
    """Make a guard treat ``cls`` (and its subclasses) as "stop", never as a failed attempt to retry.

    For a framework's control-flow exceptions: the LangChain adapter registers LangGraph's ``GraphBubbleUp``
    (the base of ``GraphInterrupt`` and ``ParentCommand``) when it is imported. Register yours when you run a
    Guard inside such a framework without its adapter.
    """
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        raise ConfigurationError(f"register_stop_exception needs an exception class, got {cls!r}")
    _STOP_EXCEPTIONS.add(cls)


def is_stop_exception(exc: BaseException) -> bool:
    """True for exceptions that must never be retried or swallowed.

    KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError (any non-``Exception``), and
    the classes given to :func:`register_stop_exception` (LangGraph's interrupts, once the LangChain adapter
    is imported).
    """
    if not isinstance(exc, Exception):
        return True
    return isinstance(exc, tuple(_STOP_EXCEPTIONS))


class _Exhausted:
    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc


# Effects: the only places where the guard waits on something. The guard's logic is written once, as
# generators that yield these; Guard._sync and Guard._async carry them out (as httpx's BaseClient does for
# its two clients), so check/acheck and run/arun differ only in the one line that drives them.
@dataclass
class _Score:
    messages: list[Message]
    answer: str
    spans: str | None = None  # "sentences" when the policy judges spans


@dataclass
class _Generate:
    fn: Any
    messages: list[Message]
    ctx: AttemptContext


@dataclass
class _Prepare:
    strategy: RetryStrategy
    ctx: AttemptContext


@dataclass
class _Enqueue:
    messages: list[Message]
    answer: str
    fields: dict[str, Any]


@dataclass
class _Wait:
    item_id: int
    timeout: float  # 0: one look (a repeat the queue decided on arrival), no waiting


_Steps = Generator[Any, Any, Any]


@dataclass
class _Run:
    """One run's state, shared by its attempts."""

    chat: list[Message]
    t0: float = field(default_factory=time.perf_counter)
    attempts: list[Attempt] = field(default_factory=list)
    contexts: list[AttemptContext] = field(default_factory=list)


class Guard:
    """Scores answers, applies a :class:`GuardPolicy`, retries with strategies, abstains or escalates to review.

    Args:
        policy: A :class:`GuardPolicy`, a dict, YAML text, or a YAML/JSON file path (see :meth:`GuardPolicy.coerce`).
        scorer: Any :class:`Scorer` (``SemGradScorer``, ``RemoteScorer``, ``MockScorer``, ...). Optional: a guard
            that is always handed scores (``check(..., result=...)``, or a ``generate_fn`` returning them) needs none.
        calibrator: Maps scores to confidence; required when a rule is over ``confidence``.
        review_queue: Where 'review' items go: a :class:`ReviewQueue`, a SQLite file path or a
            ``postgresql://`` URL (default: ``policy.review.path``, else ``$SEMGRAD_GUARD_REVIEW_DB``,
            else a SQLite file in the user data dir; opened on first use, see :func:`open_review_queue`).
        strategies: Retry strategies by name, added to (or overriding) the built-in ones.

    Example:
        >>> from semgrad_guard import MockScorer
        >>> scorer = MockScorer(lambda m, a: 0.9 if a == "Sydney" else 0.1)
        >>> policy = GuardPolicy.from_dict({
        ...     "rules": [{"field": "semgrad", "max": 0.5, "action": "accept"}, {"action": "retry"}],
        ...     "retry": {"max_attempts": 2, "strategy": "reconsider", "on_exhausted": "abstain"}})
        >>> answers = iter(["Sydney", "Canberra"])
        >>> r = Guard(policy, scorer=scorer).run("Capital of Australia?", lambda messages, ctx: next(answers))
        >>> r.answer, [a.answer for a in r.attempts], r.attempts[1].strategy
        ('Canberra', ['Sydney', 'Canberra'], 'reconsider')
    """

    def __init__(
        self,
        policy: GuardPolicy | Mapping[str, Any] | str | Path,
        *,
        scorer: Scorer | None = None,
        calibrator: Calibrator | None = None,
        review_queue: ReviewQueue | str | Path | None = None,
        strategies: Mapping[str, RetryStrategy] | None = None,
    ) -> None:
        self.policy = GuardPolicy.coerce(policy)
        if self.policy.uses_confidence and calibrator is None:
            raise ConfigurationError(
                "the policy has rules over 'confidence' but no calibrator was given: pass "
                "calibrator=Calibrator.load(...) (or Calibrator.default_for(model_id)), or write the rules over a raw score; "
                "a model without a calibrator starts with GuardPolicy.first_day() (serve and audit), then "
                "'semgrad-guard calibrate --from-reviews DB --base none' fits its first one"
            )
        if calibrator is not None and scorer is not None:
            calibrator.check_compatible(getattr(scorer, "model_id", None), getattr(scorer, "profile", None))
        self.scorer = scorer
        self.calibrator = calibrator
        self._queue: ReviewQueue | None = None
        self._queue_spec: str | Path | None = self.policy.review.path
        if isinstance(review_queue, (str, Path)):
            self._queue_spec = review_queue
        else:
            self._queue = review_queue
        self._strategies: dict[str, RetryStrategy] = {}
        if Action.RETRY in self.policy.actions:
            self._strategies = resolve_strategies(self.policy.retry.strategies, strategies)
        self._audit_lock = threading.Lock()
        audit = self.policy.audit
        self._audit_rng = random.Random(audit.seed if audit is not None else None)
        self._policy_version = self.policy.fingerprint
        self._watch_drift(calibrator)
        self._listeners: list[Callable[[Calibrator], Any]] = []
        self._refit_base = calibrator
        self._refit_lock = threading.Lock()
        self._new_labels = 0
        if self.policy.review.refit_every is not None:
            self.review_queue.on_resolved(self._on_decision)
        first = self.policy.rules[0].field
        self._span_policy: SpanPolicy | None = None
        self._rank_field = self.policy.rank_by or ("confidence" if calibrator is not None else first)
        if self._rank_field == "confidence" and calibrator is None:
            self._rank_field = "semgrad"

    # ------------------------------------------------------------------ public API
    def judge(self, result: ScoreResult | None) -> Verdict:
        """Confidence, action and rule for one scored answer (``None``: scoring failed -> ``on_error``).

        No retry, no review, no I/O: what every adapter asks when it already holds the scores.
        """
        return judge(self.policy, result, self.calibrator)

    def _watch_drift(self, calibrator: Calibrator | None) -> None:
        drift = calibrator.drift if calibrator is not None else None
        queues = (
            self._queue is not None or Action.REVIEW in self.policy.actions or self.policy.audit is not None
        )
        if drift is not None and drift.labels is None and queues:

            def labels() -> tuple[str, int]:
                from ..review.labels import label_counts

                queue = self.review_queue
                return str(getattr(queue, "location", "REVIEW_DB")), label_counts(queue).labelled

            drift.labels = labels

    def set_calibrator(self, calibrator: Calibrator) -> Calibrator | None:
        """Swap in another calibrator (e.g. one refitted from review labels); returns the old one.

        Atomic: each answer is judged by one calibrator, read once, never by half of each (the
        version it records says which). The new one must fit the scorer's model and profile.

        Raises:
            CalibratorMismatchError: It was fitted on another model or profile.
        """
        if self.scorer is not None:
            calibrator.check_compatible(
                getattr(self.scorer, "model_id", None), getattr(self.scorer, "profile", None)
            )
        self._watch_drift(calibrator)
        old, self.calibrator = self.calibrator, calibrator
        for listener in list(self._listeners):
            listener(calibrator)
        return old

    def on_calibrator_change(self, listener: Callable[[Calibrator], Any]) -> None:
        """Call ``listener(calibrator)`` after every swap (:meth:`set_calibrator`, automatic refits)."""
        self._listeners.append(listener)

    def _on_decision(self, item: ReviewItem) -> None:
        """Count a person's decisions; every ``review.refit_every`` of them, refit on all labels and swap
        it in (a repeat decided on arrival adds a label but no judgement)."""
        every = self.policy.review.refit_every
        if (
            every is None
            or item.repeat_of is not None
            or item.status.value not in ("approved", "rejected", "edited")
        ):
            return
        with self._refit_lock:
            self._new_labels += 1
            if self._new_labels < every:
                return
            self._new_labels = 0
            from ..review.labels import labelled
            from .recalibrate import recalibrate

            try:
                rec = recalibrate(self._refit_base, labelled(self.review_queue))
                self.set_calibrator(rec.calibrator)
            except Exception as e:  # keep the current calibrator; the next batch of labels tries again
                logger.warning("automatic refit skipped (%s: %s)", type(e).__name__, e)
                return
        logger.info(
            "automatic refit: %s on %d labels (%s); out-of-fold ECE %.3f",
            rec.calibrator.fingerprint,
            rec.n_labels,
            rec.chosen,
            rec.ece_after,
        )

    @property
    def review_queue(self) -> ReviewQueue:
        """The review queue (opened on first use)."""
        if self._queue is None:
            from ..review.queue import SQLiteReviewQueue, open_review_queue

            self._queue = open_review_queue(self._queue_spec)
            if self._queue_spec is None and isinstance(self._queue, SQLiteReviewQueue):
                _announce_default_queue(self._queue.path)  # a URL is not echoed: it may hold credentials
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
        out: GuardResult = self._sync(self._check(messages, answer, result, metadata))
        return out

    async def acheck(
        self,
        messages: Messages,
        answer: str,
        *,
        result: ScoreResult | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> GuardResult:
        """Async :meth:`check`: scoring via ``scorer.ascore``, the review queue in a thread."""
        out: GuardResult = await self._async(self._check(messages, answer, result, metadata))
        return out

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
            generate_fn: ``generate_fn(messages, context) -> str | (str, ScoreResult) | Generated``; it must
                honour ``context.generate_kwargs`` (temperature, seed, ...). Return a :class:`Generated` with
                ``error=`` when it scored the answer itself and scoring failed (the policy's ``on_error``
                applies; the guard does not score again). Default: the scorer's own ``generate``
                (a :class:`GeneratingScorer`), whose scores are reused.
            metadata: Stored with a review item.

        Raises:
            AnswerRejectedError: A rule with action 'raise' fired.
            RetriesExhaustedError: Retries ran out and ``retry.on_exhausted`` is 'raise'.
            Exception: generate_fn's own error, once retries are exhausted (never retried: KeyboardInterrupt,
                CancelledError, LangGraph interrupts).
        """
        gen = self._generate_fn(generate_fn, asynchronous=False)
        run = _Run(normalize_messages(messages))
        outcome = self._retrying(asynchronous=False)(lambda: self._sync(self._attempt(run, gen)))
        out: GuardResult = self._sync(self._after_run(outcome, run, metadata))
        return out

    async def arun(
        self,
        messages: Messages,
        generate_fn: GenerateFn | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> GuardResult:
        """Async :meth:`run`. ``generate_fn`` may be a coroutine function; a sync one runs in a thread."""
        gen = self._generate_fn(generate_fn, asynchronous=True)
        run = _Run(normalize_messages(messages))

        async def attempt() -> Attempt:  # a coroutine function: tenacity awaits it only if it is one
            out: Attempt = await self._async(self._attempt(run, gen))
            return out

        outcome = await self._retrying(asynchronous=True)(attempt)
        out: GuardResult = await self._async(self._after_run(outcome, run, metadata))
        return out

    # ------------------------------------------------------------------ internals: the two drivers
    def _sync(self, steps: _Steps) -> Any:
        """Carry out a generator's effects synchronously; its return value is the result."""
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = steps.throw(error) if error is not None else steps.send(value)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            try:
                if isinstance(effect, _Score):
                    scorer = self._need_scorer()
                    value = (
                        scorer.score(effect.messages, effect.answer, spans=effect.spans)  # type: ignore[call-arg]
                        if effect.spans
                        else scorer.score(effect.messages, effect.answer)
                    )
                elif isinstance(effect, _Generate):
                    value = effect.fn(effect.messages, effect.ctx)
                elif isinstance(effect, _Prepare):
                    value = effect.strategy.prepare(effect.ctx)
                elif isinstance(effect, _Enqueue):
                    value = self.review_queue.enqueue(effect.messages, effect.answer, **effect.fields)
                else:
                    value = self.review_queue.wait(
                        effect.item_id, timeout=effect.timeout, poll_interval=self.policy.review.poll_interval
                    )
            except BaseException as e:
                error = e

    async def _async(self, steps: _Steps) -> Any:
        """Carry out a generator's effects asynchronously (blocking queue calls in a thread)."""
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = steps.throw(error) if error is not None else steps.send(value)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            try:
                if isinstance(effect, _Score):
                    scorer = self._need_scorer()
                    value = await (
                        scorer.ascore(effect.messages, effect.answer, spans=effect.spans)  # type: ignore[call-arg]
                        if effect.spans
                        else scorer.ascore(effect.messages, effect.answer)
                    )
                elif isinstance(effect, _Generate):
                    value = await effect.fn(effect.messages, effect.ctx)
                elif isinstance(effect, _Prepare):
                    aprepare = getattr(effect.strategy, "aprepare", None)
                    value = await aprepare(effect.ctx) if aprepare else effect.strategy.prepare(effect.ctx)
                elif isinstance(effect, _Enqueue):
                    value = await asyncio.to_thread(
                        self.review_queue.enqueue, effect.messages, effect.answer, **effect.fields
                    )
                else:
                    value = await self.review_queue.await_decision(
                        effect.item_id, timeout=effect.timeout, poll_interval=self.policy.review.poll_interval
                    )
            except BaseException as e:
                error = e

    def _need_scorer(self) -> Scorer:
        if self.scorer is None:
            raise ConfigurationError(
                "this guard has no scorer and was asked to score: pass Guard(policy, scorer=...), or give it the "
                "scores (check(..., result=...); a generate_fn returning (answer, ScoreResult) or Generated)"
            )
        return self.scorer

    # ------------------------------------------------------------------ internals: the logic, written once
    def _check(
        self, messages: Messages, answer: str, result: ScoreResult | None, metadata: Mapping[str, Any] | None
    ) -> _Steps:
        run = _Run(normalize_messages(messages))
        ctx = self._base_context(1, run.chat, [])
        attempt = Attempt(number=1, answer=answer)
        run.attempts.append(attempt)
        run.contexts.append(ctx)
        if result is None:
            self._need_scorer()  # a wiring error, not a scoring failure: never on_error
        yield from self._score(attempt, ctx, answer, result)
        if attempt.action is Action.RETRY:
            return self._result(
                Action.RETRY, attempt, run.attempts, run.t0, answer=attempt.answer or "", rule=attempt.rule
            )
        return (yield from self._finish(attempt, run, ctx, metadata))

    def _attempt(self, run: _Run, gen: Any) -> _Steps:
        number = len(run.attempts) + 1
        ctx = self._base_context(number, run.chat, run.attempts)
        strategy = self._strategy_for(number)
        if strategy is not None:
            ctx = yield _Prepare(strategy, ctx)
        run.contexts.append(ctx)
        attempt = Attempt(number=ctx.number, strategy=ctx.strategy, changes=dict(ctx.changes))
        run.attempts.append(attempt)
        t1 = time.perf_counter()
        try:
            out = yield _Generate(gen, ctx.messages, ctx)
        except BaseException as e:
            attempt.error, attempt.error_stage = f"{type(e).__name__}: {e}", "generate"
            raise
        finally:
            attempt.timings["generate_s"] = time.perf_counter() - t1
        generated = self._unpack(out)
        attempt.answer = generated.answer
        if ctx.score_messages != ctx.messages:
            generated = Generated(generated.answer)  # scored against other messages: the guard scores it
        elif generated.error is not None:
            self._score_failed(attempt, generated.error)  # the generate_fn's own scoring failed: on_error
            return attempt
        given = generated.result
        yield from self._score(attempt, ctx, generated.answer, given)
        return attempt

    def _score(self, attempt: Attempt, ctx: AttemptContext, answer: str, given: ScoreResult | None) -> _Steps:
        t = time.perf_counter()
        result = given
        spans = "sentences" if self.policy.spans is not None else None
        if result is None or (spans and result.spans is None):
            # A given score without spans is scored again with them, when the policy judges spans.
            try:
                result = yield _Score(ctx.score_messages, answer, spans)
            except Exception as e:
                if is_stop_exception(e) or (isinstance(e, ConfigurationError) and self.scorer is None):
                    raise
                self._score_failed(attempt, e)
        attempt.timings["score_s"] = time.perf_counter() - t
        if result is not None:
            self._judge(attempt, result)

    def _finish(
        self, attempt: Attempt, run: _Run, ctx: AttemptContext, metadata: Mapping[str, Any] | None
    ) -> _Steps:
        if attempt.action is not Action.REVIEW:
            audit_id = yield from self._audit(attempt, run, ctx, metadata)
            final = self._final(attempt, run.attempts, run.t0)
            final.audit_id = audit_id
            return final
        t1 = time.perf_counter()
        fields = {
            "result": attempt.result,
            "confidence": attempt.confidence,
            "rule": attempt.rule,
            "metadata": self._review_metadata(attempt, run.attempts, metadata),
            "calibrator_version": attempt.calibrator_version,
            "policy_version": self._policy_version,
        }
        item_id = yield _Enqueue(ctx.score_messages, attempt.answer or "", fields)
        try:
            # Without review.wait, still one look: the queue decides a repeat of a judged answer on arrival.
            item = yield _Wait(item_id, self.policy.review.wait or 0.0)
        except ReviewTimeoutError:
            item = None
        return self._review_result(attempt, run.attempts, run.t0, item_id, item, time.perf_counter() - t1)

    def _audit(
        self, attempt: Attempt, run: _Run, ctx: AttemptContext, metadata: Mapping[str, Any] | None
    ) -> _Steps:
        """Maybe copy a served answer to the queue as an audit item; never changes what the user gets."""
        audit = self.policy.audit
        if audit is None or attempt.result is None or attempt.action not in audit.actions:
            return None
        with self._audit_lock:
            picked = self._audit_rng.random() < audit.rate
        if not picked:
            return None
        fields = {
            "result": attempt.result,
            "confidence": attempt.confidence,
            "rule": attempt.rule,
            "metadata": {
                **self._review_metadata(attempt, run.attempts, metadata),
                "served": str(attempt.action),
            },
            "kind": "audit",
            "inclusion_probability": audit.rate,
            "calibrator_version": attempt.calibrator_version,
            "policy_version": self._policy_version,
        }
        try:
            item_id: int = yield _Enqueue(ctx.score_messages, attempt.answer or "", fields)
        except Exception as e:  # an audit copy is best effort: the user's answer must not depend on it
            logger.warning(
                "audit sample not queued (%s: %s); the answer is served as decided", type(e).__name__, e
            )
            return None
        return item_id

    def _after_run(
        self, outcome: Attempt | _Exhausted, run: _Run, metadata: Mapping[str, Any] | None
    ) -> _Steps:
        attempts = run.attempts
        if isinstance(outcome, Attempt) and outcome.action is not Action.RETRY:
            return (yield from self._finish(outcome, run, run.contexts[outcome.number - 1], metadata))
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
        action = self.policy.retry.on_exhausted
        if action is Action.RAISE:
            result = self._result(
                Action.RAISE, best, attempts, run.t0, answer=best.answer or "", rule="retry.on_exhausted"
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
        return (yield from self._finish(decision, run, run.contexts[best.number - 1], metadata))

    # ------------------------------------------------------------------ internals: pieces
    def _generate_fn(self, generate_fn: GenerateFn | None, *, asynchronous: bool) -> Any:
        if generate_fn is None:
            scorer: Any = self.scorer
            if not (hasattr(scorer, "generate") and hasattr(scorer, "agenerate")):
                raise ConfigurationError(
                    f"run() without generate_fn needs a GeneratingScorer; {type(scorer).__name__} cannot generate"
                )
            if asynchronous:

                async def agen(messages: list[Message], ctx: AttemptContext) -> Any:
                    return await scorer.agenerate(messages, **self._span_kwargs(), **ctx.generate_kwargs)

                return agen
            return lambda messages, ctx: scorer.generate(
                messages, **self._span_kwargs(), **ctx.generate_kwargs
            )
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
    def _unpack(out: Any) -> Generated:
        if isinstance(out, Generated):
            return out
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], ScoreResult):
            out, given = out
        else:
            given = None
        if not isinstance(out, str):
            raise ConfigurationError(
                f"generate_fn must return str, (str, ScoreResult) or Generated, got {type(out).__name__}"
            )
        return Generated(out, result=given)

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

    def _score_failed(self, attempt: Attempt, exc: Exception) -> None:
        logger.warning(
            "scoring failed (%s: %s); policy on_error=%s", type(exc).__name__, exc, self.policy.on_error
        )
        attempt.error = f"{type(exc).__name__}: {exc}"
        attempt.error_stage = "score"
        attempt.action = self.policy.on_error
        attempt.rule = "on_error"

    def _span_kwargs(self) -> dict[str, Any]:
        return {"spans": "sentences"} if self.policy.spans is not None else {}

    def span_policy(self, model_id: str | None = None) -> SpanPolicy | None:
        """The policy's span policy with its calibrator loaded (None when the policy has no ``spans``)."""
        if self.policy.spans is None:
            return None
        if self._span_policy is None:
            model = getattr(self.scorer, "model_id", None) or model_id
            self._span_policy = self.policy.spans.resolve(model)
        return self._span_policy

    def _judge(self, attempt: Attempt, result: ScoreResult) -> None:
        attempt.result = result
        if result.answer_start and attempt.answer is not None:
            # The scorer cut an echoed prompt off the front: return exactly the text it scored.
            attempt.answer = result.scored_text(attempt.answer)
            if result.spans is not None:
                # Span offsets index the text given to the scorer; the answer now starts where scoring did.
                cut = result.answer_start
                result = result.model_copy(
                    update={
                        "spans": [
                            s.model_copy(update={"start": s.start - cut, "end": s.end - cut})
                            for s in result.spans
                        ]
                    }
                )
                attempt.result = result
        verdict = self.judge(result)
        attempt.confidence, attempt.action, attempt.rule = verdict.confidence, verdict.action, verdict.rule
        attempt.calibrator_version = verdict.calibrator_version
        spans = self.span_policy(result.model_id)
        if spans is not None and result.spans is not None and attempt.answer is not None:
            outcome = spans.apply(attempt.answer, result)
            attempt.spans = outcome.decisions
            attempt.delivered = outcome.text if outcome.text != attempt.answer else None
            worst = outcome.worst
            if attempt.action in (Action.ACCEPT, Action.ANNOTATE) and worst in ("abstain", "review"):
                # A sentence below the abstain or review band decides for the whole answer.
                attempt.action = Action.ABSTAIN if worst == "abstain" else Action.REVIEW
                attempt.rule = f"spans.{worst}_below"

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

    @staticmethod
    def _review_metadata(
        attempt: Attempt, attempts: list[Attempt], metadata: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        out: dict[str, Any] = dict(metadata or {})
        out.setdefault("attempt", attempt.number)
        out.setdefault("attempts", len(attempts))
        if attempt.spans is not None:  # what the span policy said of each sentence, for the reviewer
            out.setdefault("span_decisions", [d.model_dump(mode="json") for d in attempt.spans])
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
        delivered = attempt.delivered if attempt.delivered is not None else attempt.answer
        answer = (message or self.policy.abstain_message) if action is Action.ABSTAIN else (delivered or "")
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
            calibrator_version=attempt.calibrator_version,
            spans=attempt.spans,
            scored_answer=attempt.answer if attempt.delivered is not None else None,
        )
