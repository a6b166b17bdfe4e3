"""The span policy: bands over span confidence, the text the user gets, the guard carrying it out."""

from __future__ import annotations

import asyncio

import pytest

from semgrad_guard import Calibrator, Guard, GuardPolicy, MockScorer, ScorePayload
from semgrad_guard.errors import ConfigurationError
from semgrad_guard.guard.spans import SpanPolicy, default_span_calibrator

ANSWER = "Paris is the capital of France. The moon is made of cheese. It has 2.1 million people."


def score_fn(messages, text):
    # Low scores are confident: the cheese sentence is shaky, "million" half so.
    return 0.9 if "cheese" in text else 0.5 if "million" in text else 0.1


@pytest.fixture(scope="module")
def calibrator():
    # Isotonic on semgrad: 0.1 -> 1.0 (always right), 0.5 -> 0.6, 0.9 -> 0.0 (always wrong).
    scorer = MockScorer(score_fn)
    texts = ["Sure thing."] * 10 + ["It has 2.1 million people."] * 10 + ["The moon is made of cheese."] * 10
    labels = [True] * 10 + [True] * 6 + [False] * 4 + [False] * 10
    return Calibrator.fit(
        [scorer.score("q", t) for t in texts], labels, method="isotonic", features=["semgrad"]
    )


def policy(calibrator, **bands):
    return SpanPolicy(**bands).with_calibrator(calibrator)


def confidences(calibrator):
    s = MockScorer(score_fn)
    return [float(calibrator.confidence(s.score("q", t))) for t in ANSWER.split(". ")]


def test_drop_cuts_the_span_and_says_why(calibrator):
    r = MockScorer(score_fn).score("q", ANSWER, spans="sentences")
    out = policy(calibrator, drop_below=0.2).apply(ANSWER, r)
    assert [d.action for d in out.decisions] == ["keep", "drop", "keep"]
    assert out.text == "Paris is the capital of France. It has 2.1 million people."
    assert out.scored == ANSWER
    (removed,) = out.removed
    assert removed.text == "The moon is made of cheese." and removed.reason.endswith("< drop_below 0.2")
    assert ANSWER[removed.start : removed.end] == removed.text


def test_flag_marks_and_bands_take_the_most_severe(calibrator):
    r = MockScorer(score_fn).score("q", ANSWER, spans="sentences")
    c = confidences(calibrator)
    assert c[1] < c[2] < c[0]
    # Between the cheese and the million sentence's confidence: the first dropped, the second flagged.
    mid = (c[1] + c[2]) / 2
    hi = (c[2] + c[0]) / 2
    out = policy(calibrator, drop_below=mid, flag_below=hi, flag_format="{text} [?]").apply(ANSWER, r)
    assert [d.action for d in out.decisions] == ["keep", "drop", "flag"]
    assert out.text == "Paris is the capital of France. It has 2.1 million people. [?]"
    assert out.worst == "drop"


def test_bands_that_cannot_fire_are_refused():
    with pytest.raises(ConfigurationError, match="review_below .* can never fire: drop_below"):
        SpanPolicy(drop_below=0.5, review_below=0.3)
    with pytest.raises(ConfigurationError, match="needs at least one of"):
        SpanPolicy()
    with pytest.raises(ConfigurationError, match="must contain"):
        SpanPolicy(flag_below=0.3, flag_format="[?]")
    with pytest.raises(ConfigurationError, match="flag_below"):
        SpanPolicy(flag_below=1.5)


def test_apply_needs_span_scores(calibrator):
    r = MockScorer(score_fn).score("q", ANSWER)
    with pytest.raises(ConfigurationError, match="spans='sentences'"):
        policy(calibrator, drop_below=0.2).apply(ANSWER, r)
    with pytest.raises(ConfigurationError, match="no calibrator loaded"):
        SpanPolicy(drop_below=0.2).judge(MockScorer(score_fn).score("q", ANSWER, spans="sentences").spans[0])


def test_no_span_calibrator_for_an_unknown_model():
    with pytest.raises(ConfigurationError, match="no span calibrator is shipped for model 'nope'"):
        default_span_calibrator("nope")


GUARD_POLICY = {"rules": [{"field": "semgrad", "max": 0.95, "action": "accept"}, {"action": "abstain"}]}


def guard(calibrator, **bands):
    p = GuardPolicy.from_dict({**GUARD_POLICY, "spans": {"calibrator": "unused.json", **bands}})
    g = Guard(p, scorer=MockScorer(score_fn, answers=[ANSWER]))
    g._span_policy = p.spans.with_calibrator(calibrator)  # the calibrator of this test
    return g


def test_guard_returns_the_scored_answer_minus_dropped_spans(calibrator):
    g = guard(calibrator, drop_below=0.2)
    r = g.check("q", ANSWER)
    assert r.action.value == "accept"
    assert r.answer == "Paris is the capital of France. It has 2.1 million people."
    assert r.scored_answer == ANSWER and [d.text for d in r.removed_spans] == ["The moon is made of cheese."]
    assert r.result.spans is not None and len(r.result.spans) == 3
    payload = ScorePayload.of(r.result, r)
    back = ScorePayload.read({"semgrad": payload.to_json()})
    assert back.answer == ANSWER and [d.action for d in back.span_decisions] == ["keep", "drop", "keep"]
    assert back.result.spans == r.result.spans
    # run() generates with spans and gives the same.
    assert g.run("q").answer == r.answer
    assert asyncio.run(g.acheck("q", ANSWER)).answer == r.answer


def test_a_span_below_review_or_abstain_decides_for_the_answer(calibrator):
    r = guard(calibrator, abstain_below=0.2).check("q", ANSWER)
    assert (r.action.value, r.rule) == ("abstain", "spans.abstain_below")
    assert "cheese" not in r.answer
    r = guard(calibrator, review_below=0.2).check("q", ANSWER)
    assert (r.action.value, r.rule) == ("review", "spans.review_below")
    assert "cheese" not in r.answer  # pending: the pending message, not the unreviewed text


def test_a_policy_without_spans_leaves_the_answer_alone():
    g = Guard(GuardPolicy.from_dict(GUARD_POLICY), scorer=MockScorer(score_fn))
    r = g.check("q", ANSWER)
    assert r.answer == ANSWER and r.spans is None and r.scored_answer is None and r.result.spans is None


def test_policy_yaml_round_trips_its_span_section():
    p = GuardPolicy.from_yaml(
        "rules: [{action: accept}]\nspans: {calibrator: cal.json, drop_below: 0.2, flag_below: 0.4}\n"
    )
    assert p.spans.drop_below == 0.2 and GuardPolicy.from_yaml(p.to_yaml()).spans == p.spans


def test_the_embedded_models_span_calibrator_is_shipped():
    cal = default_span_calibrator("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert cal.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct" and cal.profile is not None
    assert "half 0" in (cal.data or "")  # fitted on one half of the span development set only
    policy = SpanPolicy(flag_below=0.5).resolve("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert policy.span_calibrator == cal
