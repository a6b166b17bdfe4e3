"""Retry strategies: each changes something between attempts; users can plug in their own."""

from __future__ import annotations

from dataclasses import replace

import pytest

from semgrad_guard import (
    Action,
    Attempt,
    AttemptContext,
    ConfigurationError,
    Guard,
    GuardPolicy,
    MockScorer,
    ReconsiderStrategy,
    ResampleStrategy,
    RetryStrategy,
    WidenRetrievalStrategy,
)
from semgrad_guard.guard.strategies import resolve_strategies

CHAT = [{"role": "user", "content": "Capital of Australia?"}]


def ctx(number: int, previous: tuple[Attempt, ...] = ()) -> AttemptContext:
    return AttemptContext(
        number=number, messages=CHAT, original_messages=CHAT, score_messages=CHAT, previous=previous
    )


def test_resample_changes_seed_every_attempt_and_raises_temperature_up_to_a_cap() -> None:
    s = ResampleStrategy(temperature=0.5, temperature_step=0.5, max_temperature=1.2, top_p=None, seed=7)
    kw = [s.prepare(ctx(n)).generate_kwargs for n in (2, 3, 4)]
    assert [k["seed"] for k in kw] == [8, 9, 10]
    assert [k["temperature"] for k in kw] == [0.5, 1.0, 1.2]
    assert all(k["do_sample"] for k in kw) and "top_p" not in kw[0]
    with pytest.raises(ConfigurationError):
        ResampleStrategy(temperature=0)


def test_reconsider_uses_last_or_best_previous_answer() -> None:
    prev = (
        Attempt(number=1, answer="Sydney", confidence=0.4),
        Attempt(number=2, answer="Melbourne", confidence=0.2),
    )
    last = ReconsiderStrategy().prepare(ctx(3, prev))
    assert last.messages[1] == {"role": "assistant", "content": "Melbourne"}
    assert last.score_messages == CHAT and last.changes["reconsidered_attempt"] == 2
    best = ReconsiderStrategy("Think again.", which="best").prepare(ctx(3, prev))
    assert best.messages[1]["content"] == "Sydney" and best.messages[2] == {
        "role": "user",
        "content": "Think again.",
    }
    nothing = ReconsiderStrategy().prepare(ctx(2, (Attempt(number=1, error="boom"),)))
    assert nothing.messages == CHAT and nothing.changes == {"reconsider": False}
    with pytest.raises(ConfigurationError):
        ReconsiderStrategy("  ")


def test_widen_retrieval_hook_result_none_keeps_the_chat() -> None:
    s = WidenRetrievalStrategy(lambda messages, attempt: None)
    out = s.prepare(ctx(2))
    assert out.messages == CHAT and out.changes == {"widened": False}
    with pytest.raises(ConfigurationError):
        WidenRetrievalStrategy("not callable")  # type: ignore[arg-type]


def test_async_hook_in_sync_run_is_a_clear_error() -> None:
    async def hook(messages, attempt):
        return messages

    with pytest.raises(ConfigurationError, match="Guard.arun"):
        WidenRetrievalStrategy(hook).prepare(ctx(2))


class LongerAnswers:
    name = "longer"

    def prepare(self, context: AttemptContext) -> AttemptContext:
        n = 64 * context.number
        return replace(
            context, strategy=self.name, generate_kwargs={"max_new_tokens": n}, changes={"max_new_tokens": n}
        )


def test_user_strategy_plugs_in_by_name() -> None:
    assert isinstance(LongerAnswers(), RetryStrategy)
    seen = []

    def gen(messages, context):
        seen.append(context.generate_kwargs)
        return "short" if len(seen) == 1 else "a long and careful answer"

    scorer = MockScorer(lambda m, a: 0.1 if "long" in a else 0.9)
    policy = GuardPolicy.from_dict(
        {
            "rules": [{"field": "semgrad", "max": 0.5, "action": "accept"}, {"action": "retry"}],
            "retry": {"strategy": "longer"},
        }
    )
    r = Guard(policy, scorer=scorer, strategies={"longer": LongerAnswers()}).run("q", gen)
    assert r.action is Action.ACCEPT and seen == [{}, {"max_new_tokens": 128}]
    assert r.attempts[1].strategy == "longer"


def test_resolve_strategies_errors() -> None:
    assert isinstance(resolve_strategies(["resample"], None)["resample"], ResampleStrategy)
    with pytest.raises(ConfigurationError, match="strategies\\['x'\\]"):
        resolve_strategies(["x"], {"x": object()})  # type: ignore[dict-item]
