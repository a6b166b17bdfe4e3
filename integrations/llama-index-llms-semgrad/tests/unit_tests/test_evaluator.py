"""SemGradEvaluator: passing by policy, score = confidence, feedback explains; works with RetryQueryEngine."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core.callbacks import CallbackManager
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetryQueryEngine
from llama_index.llms.semgrad.evaluation import SemGradEvaluator, default_qa_messages
from llama_index.llms.semgrad.handlers import SemGradCallbackHandler

from semgrad_guard import Calibrator, ConfigurationError, ContextLengthError, GuardPolicy, MockScorer

from .helpers import ScriptedLLM, library_index

POLICY = GuardPolicy(
    rules=[
        {"name": "sure", "field": "semgrad", "max": 0.3, "action": "accept"},
        {"name": "meh", "field": "semgrad", "max": 0.6, "action": "annotate"},
        {"name": "unsure", "action": "retry"},
    ],
)


def scorer() -> MockScorer:
    return MockScorer(lambda m, a: {"Paris.": 0.1, "Paris?": 0.5}.get(a, 0.9))


@pytest.mark.parametrize(
    ("answer", "passing", "rule"),
    [("Paris.", True, "sure"), ("Paris?", True, "meh"), ("Lyon.", False, "unsure")],
)
def test_passing_follows_the_policy(answer: str, passing: bool, rule: str) -> None:
    result = SemGradEvaluator(scorer(), POLICY).evaluate(
        query="Capital of France?", response=answer, contexts=["Paris is the capital of France."]
    )
    assert result.passing is passing
    assert f"rule {rule!r}" in (result.feedback or "")
    assert "semgrad=" in (result.feedback or "")
    assert result.score is None  # no calibrator: no confidence


def test_score_is_the_calibrated_confidence() -> None:
    s = scorer()
    cal = Calibrator.fit(
        [s.score("q", a) for a in ["Paris.", "Lyon."] * 10],
        [True, False] * 10,
        method="isotonic",
        features=["semgrad"],
    )
    policy = GuardPolicy(rules=[{"min": 0.8, "action": "accept"}, {"action": "abstain"}])
    ev = SemGradEvaluator(s, policy, calibrator=cal)
    good = ev.evaluate(query="q", response="Paris.")
    bad = ev.evaluate(query="q", response="Lyon.")
    assert good.passing and good.score == pytest.approx(1.0)
    assert not bad.passing and bad.score == pytest.approx(0.0)
    assert "confidence 1.000" in (good.feedback or "")


def test_the_scored_chat_is_the_default_qa_prompt() -> None:
    s = scorer()
    SemGradEvaluator(s, POLICY).evaluate(query="Capital?", response="Paris.", contexts=["ctx one", "ctx two"])
    messages, answer = s.calls[-1]
    assert messages == default_qa_messages("Capital?", ["ctx one", "ctx two"])
    assert "ctx one\n\nctx two" in messages[-1]["content"] and messages[0]["role"] == "system"
    assert default_qa_messages("Capital?", None) == [{"role": "user", "content": "Capital?"}]


def test_a_handler_record_is_reused_instead_of_rescoring() -> None:
    recorded = MockScorer(lambda m, a: 0.05)
    handler = SemGradCallbackHandler(recorded)
    llm = MockLLM(max_tokens=2, callback_manager=CallbackManager([handler]))
    llm.complete("the exact prompt")
    fresh = scorer()
    result = SemGradEvaluator(fresh, POLICY, handler=handler).evaluate(query="q", response="text text")
    assert result.passing and "recorded by handler" in (result.feedback or "")
    assert fresh.calls == []


async def test_aevaluate_matches_evaluate() -> None:
    ev = SemGradEvaluator(scorer(), POLICY)
    a = await ev.aevaluate(query="q", response="Lyon.", contexts=["c"])
    b = ev.evaluate(query="q", response="Lyon.", contexts=["c"])
    assert (a.passing, a.score, a.feedback) == (b.passing, b.score, b.feedback)


def test_scoring_errors_follow_on_error() -> None:
    def too_long(m: Any, a: str) -> float:
        raise ContextLengthError(9000, 5, 2048)

    review = SemGradEvaluator(MockScorer(too_long), POLICY).evaluate(query="q", response="a")
    assert review.passing is False and review.invalid_result and "2048" in (review.invalid_reason or "")
    strict = GuardPolicy(rules=POLICY.rules, on_error="raise")
    with pytest.raises(ContextLengthError):
        SemGradEvaluator(MockScorer(too_long), strict).evaluate(query="q", response="a")


def test_confidence_rules_need_a_calibrator() -> None:
    with pytest.raises(ConfigurationError, match="no calibrator"):
        SemGradEvaluator(scorer(), GuardPolicy(rules=[{"min": 0.5, "action": "accept"}]))
    with pytest.raises(ValueError, match="needs the response"):
        SemGradEvaluator(scorer(), POLICY).evaluate(query="q")


def test_retry_query_engine_retries_until_the_evaluator_passes() -> None:
    # The LLM answers badly until the query carries the evaluator's feedback.
    llm = ScriptedLLM(
        answer_fn=lambda p: "Paris." if "Evaluation" in p or "feedback" in p.lower() else "Lyon."
    )
    engine = library_index().as_query_engine(llm=llm, similarity_top_k=1)
    retry = RetryQueryEngine(engine, SemGradEvaluator(scorer(), POLICY), max_retries=2)
    response = retry.query("Capital of France?")
    assert str(response) == "Paris."
    assert len(llm.prompts) == 2


@pytest.mark.parametrize("form", ["dict", "yaml", "yaml-file", "json-file"])
def test_every_policy_form_is_accepted_like_the_query_engine(form: str, tmp_path) -> None:
    data = POLICY.model_dump(mode="json", exclude_none=True)
    if form == "dict":
        policy: Any = data
    elif form == "yaml":
        policy = POLICY.to_yaml()
    elif form == "yaml-file":
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY.to_yaml())
    else:
        policy = str(tmp_path / "policy.json")
        (tmp_path / "policy.json").write_text(POLICY.to_json())
    ev = SemGradEvaluator(scorer(), policy)
    assert ev.policy == POLICY
    assert ev.evaluate(query="Capital of France?", response="Lyon.").passing is False


def test_a_policy_of_another_type_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="policy must be a GuardPolicy, a dict, YAML text"):
        SemGradEvaluator(scorer(), 42)
