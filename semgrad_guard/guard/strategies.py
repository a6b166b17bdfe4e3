"""Retry strategies: what changes between attempts, so that a retry is not the same greedy answer again.

A strategy is anything with a ``name`` and ``prepare(context) -> AttemptContext``: it receives
the context of the next attempt (its number, the original chat, the previous attempts) and
returns it with its changes: other generation settings (temperature, seed), other messages
(ask the model to reconsider), or a wider retrieval (a user hook). ``generate_fn(messages,
context)`` receives the changed context and must honour ``context.generate_kwargs``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from ..errors import ConfigurationError
from ..messages import Message, Messages, normalize_messages

if TYPE_CHECKING:
    from .outcomes import Attempt


@dataclass(frozen=True)
class AttemptContext:
    """What one attempt runs with. ``generate_fn(context.messages, context)`` produces its answer.

    Attributes:
        number: 1 for the first attempt, 2 for the first retry, ...
        messages: The chat to send to the model for this attempt.
        original_messages: The chat the guard was called with.
        score_messages: The chat the answer is scored against (the original question, except
            when a strategy changed the question itself, e.g. widened retrieval).
        generate_kwargs: Generation settings to use (e.g. ``do_sample``, ``temperature``, ``seed``).
        strategy: Name of the strategy that prepared it (None for the first attempt).
        changes: What the strategy changed, for logs and results.
        previous: Earlier attempts of this run.
    """

    number: int
    messages: list[Message]
    original_messages: list[Message]
    score_messages: list[Message]
    generate_kwargs: dict[str, Any] = field(default_factory=dict)
    strategy: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    previous: tuple[Attempt, ...] = ()


@runtime_checkable
class RetryStrategy(Protocol):
    """Prepares a retry: returns the next attempt's context with its changes.

    Example:
        >>> from dataclasses import replace
        >>> class LongerAnswers:
        ...     name = "longer"
        ...     def prepare(self, context):
        ...         return replace(context, generate_kwargs={"max_new_tokens": 256}, changes={"max_new_tokens": 256})
        >>> isinstance(LongerAnswers(), RetryStrategy)
        True
    """

    name: str

    def prepare(self, context: AttemptContext) -> AttemptContext: ...


class ResampleStrategy:
    """Sample instead of greedy decoding: temperature (rising per retry), top-p and a new seed per attempt.

    Example:
        >>> ctx = AttemptContext(number=2, messages=[], original_messages=[], score_messages=[])
        >>> ResampleStrategy(temperature=0.7, seed=10).prepare(ctx).generate_kwargs
        {'do_sample': True, 'temperature': 0.7, 'top_p': 0.95, 'seed': 11}
    """

    name = "resample"

    def __init__(
        self,
        temperature: float = 0.7,
        *,
        temperature_step: float = 0.2,
        max_temperature: float = 1.3,
        top_p: float | None = 0.95,
        seed: int = 0,
    ) -> None:
        if temperature <= 0 or max_temperature < temperature:
            raise ConfigurationError("temperature must be > 0 and max_temperature >= temperature")
        self.temperature = temperature
        self.temperature_step = temperature_step
        self.max_temperature = max_temperature
        self.top_p = top_p
        self.seed = seed

    def prepare(self, context: AttemptContext) -> AttemptContext:
        retry_index = max(0, context.number - 2)
        temperature = round(
            min(self.temperature + self.temperature_step * retry_index, self.max_temperature), 6
        )
        kwargs: dict[str, Any] = {"do_sample": True, "temperature": temperature}
        if self.top_p is not None:
            kwargs["top_p"] = self.top_p
        kwargs["seed"] = self.seed + context.number - 1
        return replace(
            context,
            generate_kwargs={**context.generate_kwargs, **kwargs},
            strategy=self.name,
            changes={**context.changes, **kwargs},
        )


DEFAULT_RECONSIDER_PROMPT = "Your previous answer may be wrong. Reconsider the question carefully and answer it again, briefly and accurately."


class ReconsiderStrategy:
    """Ask the model to reconsider: the previous answer goes back as an assistant turn, then a user turn asks again.

    The new answer is scored against the original chat (not the reconsider chat), so that its
    confidence is comparable with the first attempt's and with the calibration data.

    Example:
        >>> from semgrad_guard.guard.outcomes import Attempt
        >>> chat = [{"role": "user", "content": "Capital of Australia?"}]
        >>> prev = Attempt(number=1, answer="Sydney")
        >>> ctx = AttemptContext(number=2, messages=chat, original_messages=chat, score_messages=chat, previous=(prev,))
        >>> [m["role"] for m in ReconsiderStrategy().prepare(ctx).messages]
        ['user', 'assistant', 'user']
    """

    name = "reconsider"

    def __init__(
        self, prompt: str = DEFAULT_RECONSIDER_PROMPT, *, which: Literal["last", "best"] = "last"
    ) -> None:
        if not prompt.strip():
            raise ConfigurationError("ReconsiderStrategy prompt must not be empty")
        self.prompt = prompt
        self.which = which

    def prepare(self, context: AttemptContext) -> AttemptContext:
        answered = [a for a in context.previous if a.answer is not None]
        if not answered:  # nothing to reconsider (the first attempt failed to generate)
            return replace(context, strategy=self.name, changes={**context.changes, "reconsider": False})
        if self.which == "best":
            prev = max(answered, key=lambda a: a.confidence if a.confidence is not None else -1.0)
        else:
            prev = answered[-1]
        messages = [
            *context.original_messages,
            {"role": "assistant", "content": prev.answer},
            {"role": "user", "content": self.prompt},
        ]
        return replace(
            context,
            messages=messages,
            score_messages=list(context.original_messages),
            strategy=self.name,
            changes={**context.changes, "reconsider": True, "reconsidered_attempt": prev.number},
        )


WidenHook = Callable[[list[Message], int], "Messages | None | Awaitable[Messages | None]"]


class WidenRetrievalStrategy:
    """For RAG: call a user hook that rebuilds the chat with wider retrieval (more or other documents).

    ``hook(original_messages, attempt_number)`` returns the new chat (or None to keep it). The
    answer is scored against the new chat, since the retrieved context is part of the question.
    The hook may be a coroutine function; :meth:`aprepare` awaits it.

    Example:
        >>> def widen(messages, attempt):
        ...     k = 4 * attempt  # e.g. top-k grows with each retry
        ...     return [{"role": "system", "content": f"Context: <top {k} documents>"}, *messages]
        >>> chat = [{"role": "user", "content": "q"}]
        >>> ctx = AttemptContext(number=2, messages=chat, original_messages=chat, score_messages=chat)
        >>> WidenRetrievalStrategy(widen).prepare(ctx).messages[0]["content"]
        'Context: <top 8 documents>'
    """

    name = "widen_retrieval"

    def __init__(self, hook: WidenHook) -> None:
        if not callable(hook):
            raise ConfigurationError("WidenRetrievalStrategy needs a callable hook(messages, attempt_number)")
        self.hook = hook

    def prepare(self, context: AttemptContext) -> AttemptContext:
        out = self.hook(list(context.original_messages), context.number)
        if inspect.isawaitable(out):
            if asyncio.iscoroutine(out):
                out.close()
            raise ConfigurationError("the widen_retrieval hook is async: use Guard.arun, not Guard.run")
        return self._apply(context, out)

    async def aprepare(self, context: AttemptContext) -> AttemptContext:
        if inspect.iscoroutinefunction(self.hook):
            out = await self.hook(list(context.original_messages), context.number)
        else:
            out = await asyncio.to_thread(self.hook, list(context.original_messages), context.number)
            if inspect.isawaitable(out):
                out = await out
        return self._apply(context, out)

    def _apply(self, context: AttemptContext, out: Any) -> AttemptContext:
        if out is None:
            return replace(context, strategy=self.name, changes={**context.changes, "widened": False})
        messages = normalize_messages(out)
        return replace(
            context,
            messages=messages,
            score_messages=messages,
            strategy=self.name,
            changes={**context.changes, "widened": True},
        )


BUILTIN_STRATEGIES: Mapping[str, Callable[[], RetryStrategy]] = {
    "resample": ResampleStrategy,
    "reconsider": ReconsiderStrategy,
}
"""Strategies the guard can build by name without arguments (widen_retrieval needs a hook)."""


def resolve_strategies(
    names: list[str], given: Mapping[str, RetryStrategy] | None
) -> dict[str, RetryStrategy]:
    """Map each strategy name to an instance: the user's ``given`` ones first, then the built-ins.

    Raises:
        ConfigurationError: A name is neither given nor built in (widen_retrieval must be given).
    """
    given = dict(given or {})
    for key, strategy in given.items():
        if not isinstance(strategy, RetryStrategy):
            raise ConfigurationError(
                f"strategies[{key!r}] must have a 'name' and prepare(context); got {type(strategy).__name__}"
            )
    out: dict[str, RetryStrategy] = {}
    for name in names:
        if name in given:
            out[name] = given[name]
        elif name in BUILTIN_STRATEGIES:
            out[name] = BUILTIN_STRATEGIES[name]()
        elif name == WidenRetrievalStrategy.name:
            raise ConfigurationError(
                "policy retry.strategy 'widen_retrieval' needs a hook: "
                "Guard(..., strategies={'widen_retrieval': WidenRetrievalStrategy(my_hook)})"
            )
        else:
            raise ConfigurationError(
                f"policy retry.strategy {name!r} is unknown; built in: resample, reconsider, widen_retrieval, "
                f"or pass Guard(strategies={{{name!r}: ...}})"
            )
    return out
