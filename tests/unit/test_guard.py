"""Guard: every action through check/run, on_error, retries (tenacity), best attempt, stop exceptions, async."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import pytest
import tenacity

from semgrad_guard import (
    Action,
    AnswerRejectedError,
    Calibrator,
    CalibratorMismatchError,
    ConfigurationError,
    Guard,
    GuardPolicy,
    GuardResult,
    MockScorer,
    RetriesExhaustedError,
    ReviewQueue,
    ScoreResult,
    ScoringError,
    SQLiteReviewQueue,
    open_review_queue,
    register_stop_exception,
)

# semgrad of each answer: lower = more confident.
SCORES = {"Paris": 0.05, "Lyon": 0.3, "Marseille": 0.5, "Nice": 0.7, "Brest": 0.85, "Toulouse": 0.95}


def scorer() -> MockScorer:
    return MockScorer(lambda m, a: SCORES.get(a, 0.99))


def raw_policy(**extra) -> GuardPolicy:
    return GuardPolicy.from_dict(
        {
            "rules": [
                {"name": "sure", "field": "semgrad", "max": 0.2, "action": "accept"},
                {"name": "fair", "field": "semgrad", "max": 0.4, "action": "annotate", "message": "check me"},
                {"name": "unsure", "field": "semgrad", "max": 0.6, "action": "retry"},
                {"name": "doubt", "field": "semgrad", "max": 0.8, "action": "review"},
                {"name": "lost", "field": "semgrad", "max": 0.9, "action": "abstain"},
                {"name": "never", "action": "raise"},
            ],
            **extra,
        }
    )


@pytest.fixture
def queue(review_db):
    """The guard's review paths run against both backends (a SQLite file, a PostgreSQL database)."""
    q = open_review_queue(review_db)
    yield q
    q.close()


def test_check_accept_annotate_abstain(queue) -> None:
    guard = Guard(raw_policy(), scorer=scorer(), review_queue=queue)
    r = guard.check("Capital of France?", "Paris")
    assert (r.action, r.answer, r.rule, r.accepted, r.annotation) == (
        Action.ACCEPT,
        "Paris",
        "sure",
        True,
        None,
    )
    assert r.result is not None and r.result.semgrad == 0.05
    r = guard.check("Capital of France?", "Lyon")
    assert (r.action, r.answer, r.annotation, r.accepted) == (Action.ANNOTATE, "Lyon", "check me", True)
    r = guard.check("Capital of France?", "Brest")
    assert (r.action, r.accepted, r.original_answer) == (Action.ABSTAIN, False, "Brest")
    assert r.answer == "I'm not confident enough to answer that."
    assert len(queue) == 0


def test_check_review_enqueues_with_scores_and_rule(queue) -> None:
    guard = Guard(raw_policy(), scorer=scorer(), review_queue=queue)
    r = guard.check([{"role": "user", "content": "Capital of France?"}], "Nice", metadata={"run": "r1"})
    assert r.action is Action.REVIEW and r.review_status == "pending" and not r.accepted
    assert r.answer == guard.policy.review.pending_message  # fail closed: the unreviewed answer is not shown
    item = queue.get(r.review_id)
    assert (item.answer, item.rule, item.metadata["run"]) == ("Nice", "doubt", "r1")
    assert item.result is not None and item.result.semgrad == 0.7
    assert item.messages == [{"role": "user", "content": "Capital of France?"}]


def test_check_raise_carries_the_result() -> None:
    guard = Guard(raw_policy(), scorer=scorer())
    with pytest.raises(AnswerRejectedError, match="rule 'never'") as info:
        guard.check("q", "something unknown")
    assert isinstance(info.value.guard_result, GuardResult)
    assert info.value.guard_result.action is Action.RAISE


def test_check_retry_is_reported_to_the_caller() -> None:
    r = Guard(raw_policy(), scorer=scorer()).check("q", "Marseille")
    assert (r.action, r.answer, r.rule, r.accepted) == (Action.RETRY, "Marseille", "unsure", False)


def test_check_reuses_given_scores() -> None:
    s = scorer()
    given = s.score("q", "Paris")
    s.calls.clear()
    r = Guard(raw_policy(), scorer=s).check("q", "Brest", result=given)
    assert r.action is Action.ACCEPT and s.calls == []


class Boom(ScoringError):
    pass


def failing_scorer(exc: BaseException) -> MockScorer:
    def fn(m, a):
        raise exc

    return MockScorer(fn)


def test_scoring_failure_goes_to_review_by_default(queue) -> None:
    r = Guard(raw_policy(), scorer=failing_scorer(Boom("gradient is NaN")), review_queue=queue).check(
        "q", "Paris"
    )
    assert (r.action, r.rule, r.result) == (Action.REVIEW, "on_error", None)
    assert r.error == "Boom: gradient is NaN"
    item = queue.get(r.review_id)
    assert item.result is None and item.metadata["error"] == "Boom: gradient is NaN"


@pytest.mark.parametrize("on_error", ["abstain", "accept"])
def test_on_error_setting(on_error: str) -> None:
    r = Guard(raw_policy(on_error=on_error), scorer=failing_scorer(Boom("x"))).check("q", "Paris")
    assert r.action is Action(on_error) and r.rule == "on_error"


def test_on_error_raise() -> None:
    with pytest.raises(AnswerRejectedError, match="Boom: x"):
        Guard(raw_policy(on_error="raise"), scorer=failing_scorer(Boom("x"))).check("q", "Paris")


class GraphInterrupt(Exception):
    """Stands in for langgraph.errors.GraphInterrupt (the LangChain adapter registers the real one)."""


register_stop_exception(GraphInterrupt)


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), GraphInterrupt("pause"), asyncio.CancelledError()])
def test_stop_exceptions_from_the_scorer_propagate(exc: BaseException) -> None:
    with pytest.raises(type(exc)):
        Guard(raw_policy(), scorer=failing_scorer(exc)).check("q", "Paris")


def test_run_retries_until_accepted_with_resample_settings() -> None:
    seen = []
    answers = iter(["Marseille", "Marseille", "Paris"])

    def gen(messages, ctx):
        seen.append((ctx.number, ctx.strategy, dict(ctx.generate_kwargs)))
        return next(answers)

    r = Guard(raw_policy(retry={"max_attempts": 4, "strategy": "resample"}), scorer=scorer()).run("q", gen)
    assert (r.action, r.answer, r.original_answer) == (Action.ACCEPT, "Paris", "Marseille")
    assert [a.answer for a in r.attempts] == ["Marseille", "Marseille", "Paris"]
    assert [a.action for a in r.attempts] == [Action.RETRY, Action.RETRY, Action.ACCEPT]
    assert seen[0] == (1, None, {})
    assert seen[1][1] == "resample" and seen[1][2]["do_sample"] is True
    assert seen[1][2]["seed"] != seen[2][2]["seed"]
    assert seen[2][2]["temperature"] > seen[1][2]["temperature"]
    assert r.attempts[1].changes["seed"] == seen[1][2]["seed"]
    assert set(r.timings) >= {"total_s", "generate_s", "score_s"}


def test_run_exhausted_best_attempt_wins_then_on_exhausted(queue) -> None:
    answers = iter(["Marseille", "Marseille-ish", "Marseille"])
    SCORES["Marseille-ish"] = 0.45
    try:
        policy = raw_policy(retry={"max_attempts": 3, "on_exhausted": "annotate"})
        r = Guard(policy, scorer=scorer()).run("q", lambda m, c: next(answers))
    finally:
        del SCORES["Marseille-ish"]
    assert len(r.attempts) == 3
    assert (r.action, r.answer, r.rule) == (Action.ANNOTATE, "Marseille-ish", "retry.on_exhausted")
    assert r.result is not None and r.result.semgrad == 0.45
    assert r.best_attempt is not None and r.best_attempt.number == 2


def test_run_exhausted_defaults_to_review_of_best(queue) -> None:
    r = Guard(raw_policy(retry={"max_attempts": 2}), scorer=scorer(), review_queue=queue).run(
        "q", lambda m, c: "Marseille"
    )
    assert r.action is Action.REVIEW and r.rule == "retry.on_exhausted"
    assert queue.get(r.review_id).metadata["attempts"] == 2


def test_run_exhausted_raise() -> None:
    policy = raw_policy(retry={"max_attempts": 2, "on_exhausted": "raise"})
    with pytest.raises(RetriesExhaustedError, match="all 2 attempts") as info:
        Guard(policy, scorer=scorer()).run("q", lambda m, c: "Marseille")
    assert len(info.value.attempts) == 2 and info.value.last_result.semgrad == 0.5


def test_run_reconsider_sends_previous_answer_and_scores_against_the_original_chat() -> None:
    s = scorer()
    sent = []
    answers = iter(["Marseille", "Paris"])

    def gen(messages, ctx):
        sent.append(messages)
        return next(answers)

    r = Guard(raw_policy(retry={"strategy": "reconsider"}), scorer=s).run("Capital of France?", gen)
    assert r.answer == "Paris" and r.attempts[1].strategy == "reconsider"
    assert [m["role"] for m in sent[1]] == ["user", "assistant", "user"]
    assert sent[1][1]["content"] == "Marseille"
    assert s.calls[-1] == ([{"role": "user", "content": "Capital of France?"}], "Paris")


def test_run_widen_retrieval_hook_and_strategy_cycle() -> None:
    from semgrad_guard import WidenRetrievalStrategy

    calls = []

    def widen(messages, attempt):
        calls.append(attempt)
        return [{"role": "system", "content": f"top-{4 * attempt} documents"}, *messages]

    s = scorer()
    answers = iter(["Marseille", "Marseille", "Paris"])
    policy = raw_policy(retry={"max_attempts": 3, "strategy": ["widen_retrieval", "resample"]})
    guard = Guard(policy, scorer=s, strategies={"widen_retrieval": WidenRetrievalStrategy(widen)})
    r = guard.run("q", lambda m, c: next(answers))
    assert [a.strategy for a in r.attempts] == [None, "widen_retrieval", "resample"]
    assert calls == [2]
    assert s.calls[1][0][0] == {"role": "system", "content": "top-8 documents"}  # scored with its context


def test_widen_retrieval_without_a_hook_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="needs a hook"):
        Guard(raw_policy(retry={"strategy": "widen_retrieval"}), scorer=scorer())
    with pytest.raises(ConfigurationError, match="unknown"):
        Guard(raw_policy(retry={"strategy": "pray"}), scorer=scorer())


def test_generate_fn_returning_scores_is_not_rescored() -> None:
    s = scorer()
    pre = s.score("q", "Paris")
    s.calls.clear()
    r = Guard(raw_policy(), scorer=s).run("q", lambda m, c: ("whatever", pre))
    assert r.action is Action.ACCEPT and r.answer == "whatever" and s.calls == []


def test_run_without_generate_fn_uses_the_generating_scorer_with_strategy_kwargs() -> None:
    got = []

    def answers(messages, **kwargs):
        got.append(kwargs)
        return "Marseille" if len(got) == 1 else "Paris"

    s = MockScorer(lambda m, a: SCORES[a], answers=answers)
    r = Guard(raw_policy(), scorer=s).run("q")
    assert r.answer == "Paris" and got[0] == {} and got[1]["do_sample"] is True


def test_run_without_generate_fn_needs_a_generating_scorer() -> None:
    class ScoreOnly:
        def score(self, m, a): ...
        def score_batch(self, p): ...
        async def ascore(self, m, a): ...
        async def ascore_batch(self, p): ...

    with pytest.raises(ConfigurationError, match="GeneratingScorer"):
        Guard(raw_policy(), scorer=ScoreOnly()).run("q")


def test_generate_fn_bad_return_type() -> None:
    with pytest.raises(ConfigurationError, match="must return str"):
        Guard(raw_policy(), scorer=scorer()).run("q", lambda m, c: 42)


def test_transient_generation_errors_are_retried_and_recorded() -> None:
    calls = {"n": 0}

    def flaky(messages, ctx):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("backend hiccup")
        return "Paris"

    r = Guard(raw_policy(), scorer=scorer()).run("q", flaky)
    assert r.answer == "Paris" and len(r.attempts) == 2
    assert (
        r.attempts[0].error == "ConnectionError: backend hiccup" and r.attempts[0].error_stage == "generate"
    )


def test_generation_failing_every_time_reraises_the_error() -> None:
    def broken(messages, ctx):
        raise ConnectionError("down")

    with pytest.raises(ConnectionError, match="down"):
        Guard(raw_policy(retry={"max_attempts": 3}), scorer=scorer()).run("q", broken)


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, GraphInterrupt, GeneratorExit])
def test_stop_exceptions_are_never_retried(exc_type: type[BaseException]) -> None:
    calls = []

    def gen(messages, ctx):
        calls.append(ctx.number)
        raise exc_type()

    with pytest.raises(exc_type):
        Guard(raw_policy(retry={"max_attempts": 5}), scorer=scorer()).run("q", gen)
    assert calls == [1]


def test_subclasses_of_a_registered_stop_exception_stop_too() -> None:
    from semgrad_guard.guard.guard import is_stop_exception

    class NodeInterrupt(GraphInterrupt):
        pass

    class Unregistered(Exception):
        pass

    assert is_stop_exception(NodeInterrupt()) and is_stop_exception(asyncio.CancelledError())
    assert not is_stop_exception(ValueError()) and not is_stop_exception(Unregistered())
    with pytest.raises(ConfigurationError, match="needs an exception class"):
        register_stop_exception("GraphInterrupt")  # type: ignore[arg-type]


def test_users_own_tenacity_retrying_sets_stop_and_wait() -> None:
    policy = raw_policy(
        retry={"retrying": tenacity.Retrying(stop=tenacity.stop_after_attempt(2)), "on_exhausted": "abstain"}
    )
    r = Guard(policy, scorer=scorer()).run("q", lambda m, c: "Marseille")
    assert len(r.attempts) == 2 and r.action is Action.ABSTAIN


def test_wait_between_attempts() -> None:
    policy = raw_policy(retry={"max_attempts": 2, "wait": 0.2, "on_exhausted": "abstain"})
    t0 = time.perf_counter()
    Guard(policy, scorer=scorer()).run("q", lambda m, c: "Marseille")
    assert time.perf_counter() - t0 >= 0.2


def test_confidence_rules_need_a_compatible_calibrator() -> None:
    policy = GuardPolicy.from_dict({"rules": [{"min": 0.7, "action": "accept"}, {"action": "abstain"}]})
    with pytest.raises(ConfigurationError, match="no calibrator"):
        Guard(policy, scorer=scorer())
    s = scorer()
    results = [s.score("q", a) for a in ["Paris", "Toulouse"] * 10]
    cal = Calibrator.fit(results, [True, False] * 10, method="isotonic", features=["semgrad"])
    guard = Guard(policy, scorer=s, calibrator=cal)
    ok = guard.check("q", "Paris")
    assert ok.action is Action.ACCEPT and ok.confidence == pytest.approx(1.0)
    assert guard.check("q", "Toulouse").action is Action.ABSTAIN
    other = MockScorer(lambda m, a: 0.1, model_id="another-model")
    with pytest.raises(CalibratorMismatchError):
        Guard(policy, scorer=other, calibrator=cal)


def test_best_attempt_by_confidence_with_a_calibrator() -> None:
    s = scorer()
    results = [s.score("q", a) for a in ["Paris", "Lyon", "Marseille", "Nice", "Toulouse"] * 6]
    correct = [True, True, False, False, False] * 6
    cal = Calibrator.fit(results, correct, method="platt", features=["semgrad"])
    policy = GuardPolicy.from_dict(
        {
            "rules": [{"min": 0.99, "action": "accept"}, {"action": "retry"}],
            "retry": {"max_attempts": 3, "on_exhausted": "annotate"},
        }
    )
    answers = iter(["Nice", "Lyon", "Toulouse"])
    r = Guard(policy, scorer=s, calibrator=cal).run("q", lambda m, c: next(answers))
    assert r.answer == "Lyon" and r.action is Action.ANNOTATE
    assert r.confidence == max(a.confidence for a in r.attempts)


def test_review_wait_picks_up_the_human_decision(queue) -> None:
    policy = raw_policy(review={"wait": 10, "poll_interval": 0.05})
    guard = Guard(policy, scorer=scorer(), review_queue=queue)

    def reviewer():
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pending = queue.list("pending")
            if pending:
                queue.edit(pending[0].id, answer="Paris", reviewer="ana")
                return
            time.sleep(0.02)

    t = threading.Thread(target=reviewer)
    t.start()
    r = guard.check("Capital of France?", "Nice")
    t.join()
    assert (r.action, r.review_status, r.answer, r.accepted) == (Action.REVIEW, "edited", "Paris", True)


def test_review_wait_timeout_and_rejection(queue) -> None:
    policy = raw_policy(review={"wait": 0.1, "poll_interval": 0.02, "show_answer": True})
    guard = Guard(policy, scorer=scorer(), review_queue=queue)
    r = guard.check("q", "Nice")
    assert r.review_status == "pending" and r.answer == "Nice"  # show_answer: fail open on request
    queue.reject(r.review_id, reviewer="bo")
    # The same answer to the same chat again: decided as before at once, no one asked twice.
    r2 = Guard(policy, scorer=scorer(), review_queue=queue).check("q", "Nice")
    assert r2.review_status == "rejected" and r2.answer == policy.abstain_message
    item = queue.get(r2.review_id)
    assert item.repeat_of == r.review_id and item.reviewer == "bo"
    r3 = Guard(policy, scorer=scorer(), review_queue=queue).check("another q", "Nice")
    assert r3.review_status == "pending"  # the same answer to another chat: a person's call
    queue.reject(r3.review_id)
    assert queue.get(r3.review_id).status.value == "rejected"


async def test_a_repeat_of_a_judged_answer_gets_the_judgement_without_waiting(queue) -> None:
    """No review.wait: the first answer is held for review; once a person approved it, the same answer
    to the same chat is served at once (sync and async), and an edit serves the reviewer's text."""
    guard = Guard(raw_policy(), scorer=scorer(), review_queue=queue)
    first = guard.check("q", "Nice")
    assert first.review_status == "pending" and first.answer == guard.policy.review.pending_message
    queue.approve(first.review_id, reviewer="ana")
    again = guard.check("q", "Nice")
    assert (again.review_status, again.answer, again.original_answer) == ("approved", "Nice", "Nice")
    assert queue.get(again.review_id).repeat_of == first.review_id
    edited = guard.check("q2", "Nice")
    queue.edit(edited.review_id, answer="Nice, in France", reviewer="ana")
    later = await guard.acheck("q2", "Nice")
    assert (later.review_status, later.answer) == ("edited", "Nice, in France")


def test_default_review_queue_path_from_env(tmp_path, monkeypatch) -> None:
    db = tmp_path / "env-review.db"
    monkeypatch.setenv("SEMGRAD_GUARD_REVIEW_DB", str(db))
    guard = Guard(raw_policy(), scorer=scorer())
    r = guard.check("q", "Nice")
    assert db.exists() and guard.review_queue.get(r.review_id).answer == "Nice"
    guard.review_queue.close()  # type: ignore[attr-defined]


def test_guard_result_is_json_serialisable(queue) -> None:
    r = Guard(raw_policy(), scorer=scorer(), review_queue=queue).run("q", lambda m, c: "Paris")
    again = GuardResult.model_validate_json(r.model_dump_json())
    assert again == r and json.loads(r.model_dump_json())["action"] == "accept"


def test_policy_from_yaml_text_and_dict() -> None:
    g = Guard(
        "rules:\n  - {field: semgrad, max: 0.2, action: accept}\n  - {action: abstain}\n", scorer=scorer()
    )
    assert g.check("q", "Paris").accepted
    g = Guard({"rules": [{"action": "abstain"}]}, scorer=scorer())
    assert g.check("q", "Paris").action is Action.ABSTAIN
    with pytest.raises(ConfigurationError):
        Guard(42, scorer=scorer())  # type: ignore[arg-type]


# ---------------------------------------------------------------------- async
async def test_acheck_and_arun_with_async_generate_fn(queue) -> None:
    guard = Guard(raw_policy(retry={"strategy": "reconsider"}), scorer=scorer(), review_queue=queue)
    r = await guard.acheck("q", "Lyon")
    assert r.action is Action.ANNOTATE
    answers = iter(["Marseille", "Paris"])

    async def agen(messages, ctx):
        await asyncio.sleep(0)
        return next(answers)

    r = await guard.arun("q", agen)
    assert r.answer == "Paris" and [a.strategy for a in r.attempts] == [None, "reconsider"]
    r = await guard.acheck("q", "Nice")
    assert r.action is Action.REVIEW and queue.get(r.review_id).answer == "Nice"


async def test_arun_sync_generate_fn_runs_off_the_loop() -> None:
    loop_thread = threading.get_ident()
    threads = []

    def gen(messages, ctx):
        threads.append(threading.get_ident())
        return "Paris"

    r = await Guard(raw_policy(), scorer=scorer()).arun("q", gen)
    assert r.accepted and threads and threads[0] != loop_thread


async def test_arun_never_retries_cancellation() -> None:
    calls = []

    async def gen(messages, ctx):
        calls.append(1)
        raise asyncio.CancelledError()

    with pytest.raises(asyncio.CancelledError):
        await Guard(raw_policy(retry={"max_attempts": 4}), scorer=scorer()).arun("q", gen)
    assert calls == [1]


async def test_arun_exhausted_and_scorer_generate() -> None:
    s = MockScorer(lambda m, a: SCORES[a], answers=["Marseille", "Marseille"])
    r = await Guard(raw_policy(retry={"max_attempts": 2, "on_exhausted": "abstain"}), scorer=s).arun("q")
    assert r.action is Action.ABSTAIN and len(r.attempts) == 2


async def test_arun_widen_retrieval_async_hook() -> None:
    from semgrad_guard import WidenRetrievalStrategy

    async def widen(messages, attempt):
        return [{"role": "system", "content": "more docs"}, *messages]

    answers = iter(["Marseille", "Paris"])
    guard = Guard(
        raw_policy(retry={"strategy": "widen_retrieval"}),
        scorer=scorer(),
        strategies={"widen_retrieval": WidenRetrievalStrategy(widen)},
    )
    r = await guard.arun("q", lambda m, c: next(answers))
    assert r.answer == "Paris" and r.attempts[1].changes == {"widened": True}


def test_check_result_type() -> None:
    r = Guard(raw_policy(), scorer=scorer()).check("q", "Paris")
    assert isinstance(r.result, ScoreResult)


def test_judge_is_the_one_decision_every_path_uses() -> None:
    from semgrad_guard import Calibrator, MockScorer, Verdict, judge

    scorer = MockScorer(lambda m, a: 0.1 if a == "right" else 0.9)
    results = [scorer.score("q", a) for a in ["right", "wrong"] * 10]
    cal = Calibrator.fit(results, [True, False] * 10, method="isotonic", features=["semgrad"])
    policy = GuardPolicy.from_dict(
        {
            "rules": [{"name": "ok", "min": 0.5, "action": "accept"}, {"name": "no", "action": "abstain"}],
            "on_error": "review",
        }
    )
    guard = Guard(policy, scorer=scorer, calibrator=cal)
    good, bad = scorer.score("q", "right"), scorer.score("q", "wrong")
    assert (
        guard.judge(good)
        == judge(policy, good, cal)
        == policy.decide(good, 1.0).model_copy(update={"calibrator_version": cal.fingerprint})
    )
    assert (guard.judge(good).action.value, guard.judge(good).rule, guard.judge(good).confidence) == (
        "accept",
        "ok",
        1.0,
    )
    assert guard.judge(bad).action.value == "abstain" and guard.judge(bad).confidence == 0.0
    assert guard.judge(None) == Verdict(action="review", rule="on_error", calibrator_version=cal.fingerprint)
    # check() reports exactly the verdict
    r = guard.check("q", "right")
    assert (r.action, r.rule, r.confidence) == (Action.ACCEPT, "ok", 1.0)


# -- Guard(policy, scorer=None), Generated outcomes, one implementation for sync and async ---------------


def _given(answer: str) -> ScoreResult:
    return scorer().score([{"role": "user", "content": "q"}], answer)


def test_a_guard_without_scorer_judges_given_scores() -> None:
    guard = Guard(raw_policy())
    assert guard.scorer is None
    assert guard.check("q", "Paris", result=_given("Paris")).action is Action.ACCEPT
    answers = iter(["Marseille", "Paris"])
    r = guard.run("q", lambda m, c: (a := next(answers), _given(a)))
    assert [a.answer for a in r.attempts] == ["Marseille", "Paris"] and r.action is Action.ACCEPT


def test_a_guard_without_scorer_asked_to_score_is_a_wiring_error_not_on_error() -> None:
    guard = Guard(raw_policy(on_error="accept"))
    with pytest.raises(ConfigurationError, match="no scorer.*Guard\\(policy, scorer=...\\)"):
        guard.check("q", "Paris")
    with pytest.raises(ConfigurationError, match="no scorer"):
        guard.run("q", lambda m, c: "Paris")


async def test_a_guard_without_scorer_async() -> None:
    guard = Guard(raw_policy(on_error="accept"))
    r = await guard.acheck("q", "Lyon", result=_given("Lyon"))
    assert (r.action, r.annotation) == (Action.ANNOTATE, "check me")
    with pytest.raises(ConfigurationError, match="no scorer"):
        await guard.arun("q", lambda m, c: "Paris")


def test_generated_with_an_error_applies_on_error_without_scoring_again() -> None:
    from semgrad_guard import Generated

    calls = []
    s = MockScorer(lambda m, a: calls.append(a) or 0.05)
    r = Guard(raw_policy(on_error="abstain"), scorer=s).run(
        "q", lambda m, c: Generated("Paris", error=ScoringError("prompt too long to score"))
    )
    assert calls == []  # the answer was not re-scored against a chat it was not generated from
    assert (r.action, r.rule, r.error) == (
        Action.ABSTAIN,
        "on_error",
        "ScoringError: prompt too long to score",
    )
    with pytest.raises(ValueError, match="not both"):
        Generated("x", result=_given("Paris"), error=ScoringError("x"))


def test_generated_with_a_result_is_a_scored_answer() -> None:
    from semgrad_guard import Generated

    r = Guard(raw_policy()).run("q", lambda m, c: Generated("Lyon", result=_given("Lyon")))
    assert (r.action, r.rule, r.answer) == (Action.ANNOTATE, "fair", "Lyon")


@pytest.mark.parametrize(
    "answers", [["Marseille", "Paris"], ["Marseille", "Nice"], ["Marseille", "Marseille"]]
)
async def test_sync_and_async_give_the_same_result(tmp_path, answers) -> None:
    policy = raw_policy(retry={"max_attempts": 2, "strategy": "reconsider", "on_exhausted": "review"})

    def run(asynchronous: bool) -> GuardResult:
        q = SQLiteReviewQueue(tmp_path / f"{asynchronous}-{'-'.join(answers)}.db")
        it = iter(answers)
        guard = Guard(policy, scorer=scorer(), review_queue=q)
        if asynchronous:
            return asyncio.run(guard.arun("q", lambda m, c: next(it)))
        return guard.run("q", lambda m, c: next(it))

    sync = run(False)
    asyn = await asyncio.to_thread(run, True)
    strip = {"timings": True, "attempts": {"__all__": {"timings"}}}
    assert sync.model_dump(exclude=strip) == asyn.model_dump(exclude=strip)


def test_reviews_to_the_default_queue_say_where_they_go_once(tmp_path, monkeypatch, caplog) -> None:
    db = tmp_path / "default-review.db"
    monkeypatch.setenv("SEMGRAD_GUARD_REVIEW_DB", str(db))
    with caplog.at_level(logging.WARNING, logger="semgrad_guard.guard.guard"):
        for _ in range(2):
            guard = Guard(raw_policy(), scorer=scorer())
            assert guard.check("q", "Nice").review_id is not None
            guard.review_queue.close()
    said = [r.getMessage() for r in caplog.records if "review items go to" in r.getMessage()]
    assert len(said) == 1 and str(db) in said[0] and "semgrad-guard review list" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="semgrad_guard.guard.guard"):
        given = SQLiteReviewQueue(tmp_path / "given.db")
        Guard(raw_policy(), scorer=scorer(), review_queue=given).check("q", "Nice")
        given.close()
    assert not [r for r in caplog.records if "review items go to" in r.getMessage()]


def test_review_queue_named_by_a_url_a_path_the_policy_or_the_environment(
    postgres_url, tmp_path, monkeypatch
) -> None:
    from semgrad_guard import PostgresReviewQueue

    def queued_in(guard: Guard) -> ReviewQueue:
        r = guard.check("Capital of France?", "Nice")
        assert r.action is Action.REVIEW
        assert guard.review_queue.get(r.review_id).answer == "Nice"
        return guard.review_queue

    assert isinstance(
        queued_in(Guard(raw_policy(), scorer=scorer(), review_queue=postgres_url)), PostgresReviewQueue
    )
    path = tmp_path / "named.db"
    assert isinstance(queued_in(Guard(raw_policy(), scorer=scorer(), review_queue=path)), SQLiteReviewQueue)
    assert path.exists()
    policy = raw_policy(review={"path": postgres_url})
    assert isinstance(queued_in(Guard(policy, scorer=scorer())), PostgresReviewQueue)
    monkeypatch.setenv("SEMGRAD_GUARD_REVIEW_DB", postgres_url)
    assert isinstance(queued_in(Guard(raw_policy(), scorer=scorer())), PostgresReviewQueue)
    with open_review_queue(postgres_url) as q:
        assert len(q) == 3
