"""GuardPolicy: band edges, rule order, every action, loading and validation errors that name the field."""

from __future__ import annotations

import json

import pytest
import tenacity
from pydantic import ValidationError

from semgrad_guard import Action, ConfigurationError, GuardPolicy, Rule, ScoreResult


def _result(**scores: float) -> ScoreResult:
    base = dict(semgrad=0.1, hybridgrad=0.1, exgrad=0.1, nll=1.0, mean_nll=0.5, mean_entropy=1.0)
    base.update(scores)
    return ScoreResult(**base, answer_tokens=3, anchor_offset=-1, layers=[1])


BANDS = GuardPolicy.from_dict(
    {
        "rules": [
            {"name": "high", "min": 0.9, "action": "accept"},
            {"name": "good", "min": 0.75, "max": 0.9, "action": "annotate"},
            {"name": "mid", "min": 0.5, "max": 0.75, "action": "retry"},
            {"name": "low", "min": 0.3, "max": 0.5, "action": "review"},
            {"name": "bad", "min": 0.1, "max": 0.3, "action": "abstain"},
            {"name": "worst", "max": 0.1, "action": "raise"},
        ]
    }
)


@pytest.mark.parametrize(
    ("confidence", "action", "rule"),
    [
        (1.0, Action.ACCEPT, "high"),
        (0.9, Action.ACCEPT, "high"),  # min is inclusive
        (0.8999, Action.ANNOTATE, "good"),  # max is exclusive
        (0.75, Action.ANNOTATE, "good"),
        (0.7499, Action.RETRY, "mid"),
        (0.5, Action.RETRY, "mid"),
        (0.4999, Action.REVIEW, "low"),
        (0.3, Action.REVIEW, "low"),
        (0.2999, Action.ABSTAIN, "bad"),
        (0.1, Action.ABSTAIN, "bad"),
        (0.0999, Action.RAISE, "worst"),
        (0.0, Action.RAISE, "worst"),
    ],
)
def test_every_action_and_band_edge(confidence: float, action: Action, rule: str) -> None:
    d = BANDS.decide(_result(), confidence)
    assert (d.action, d.rule, d.value) == (action, rule, confidence)


def test_first_matching_rule_wins_and_default_action_applies_when_none_matches() -> None:
    policy = GuardPolicy.from_dict(
        {
            "rules": [
                {"name": "a", "field": "semgrad", "max": 0.5, "action": "accept"},
                {"name": "b", "field": "semgrad", "max": 1.0, "action": "abstain"},
            ]
        }
    )
    assert policy.decide(_result(semgrad=0.2)).rule == "a"  # both match: the first decides
    assert policy.decide(_result(semgrad=0.7)).rule == "b"
    d = policy.decide(_result(semgrad=3.0))
    assert (d.action, d.rule) == (Action.REVIEW, None)  # fail closed


def test_raw_score_rules_need_no_calibrator_and_confidence_rules_do() -> None:
    raw = GuardPolicy.from_dict(
        {"rules": [{"field": "mean_nll", "max": 1.0, "action": "accept"}, {"action": "abstain"}]}
    )
    assert not raw.uses_confidence
    assert raw.decide(_result(mean_nll=0.3)).action is Action.ACCEPT
    assert raw.decide(_result(mean_nll=1.0)).action is Action.ABSTAIN
    assert BANDS.uses_confidence
    with pytest.raises(ConfigurationError, match="no confidence was given"):
        BANDS.decide(_result())


def test_unnamed_rules_get_positional_names_and_catch_all_needs_no_value() -> None:
    policy = GuardPolicy.from_dict({"rules": [{"min": 0.5, "action": "accept"}, {"action": "abstain"}]})
    assert [r.name for r in policy.rules] == ["rules[0]", "rules[1]"]
    assert policy.decide(None, 0.2).rule == "rules[1]"


@pytest.mark.parametrize(
    ("data", "field_path"),
    [
        ({"rules": [{"min": 0.5, "action": "acept"}]}, "rules.0.action"),
        ({"rules": [{"min": 0.5, "action": "accept", "colour": "red"}]}, "rules.0.colour"),
        ({"rules": [{"field": "semgradd", "action": "accept"}]}, "rules.0.field"),
        ({"rules": [{"min": 0.8, "max": 0.2, "action": "accept"}]}, "rules.0"),
        ({"rules": [{"min": 1.5, "action": "accept"}]}, "rules.0"),
        ({"rules": []}, "rules"),
        ({"rules": [{"name": "x", "action": "accept"}, {"name": "x", "action": "abstain"}]}, "rules"),
        ({"rules": [{"action": "accept"}], "on_error": "retry"}, "on_error"),
        ({"rules": [{"action": "accept"}], "on_error": "shrug"}, "on_error"),
        ({"rules": [{"action": "accept"}], "retry": {"max_attempts": 0}}, "retry.max_attempts"),
        ({"rules": [{"action": "accept"}], "retry": {"on_exhausted": "retry"}}, "retry.on_exhausted"),
        ({"rules": [{"action": "accept"}], "retry": {"wait": -1}}, "retry.wait"),
        ({"rules": [{"action": "accept"}], "retry": {"strategy": []}}, "retry.strategy"),
        ({"rules": [{"action": "accept"}], "review": {"wait": -2}}, "review.wait"),
        ({"rules": [{"action": "accept"}], "review": {"path": "x.db", "colour": 1}}, "review.colour"),
        ({"rules": [{"action": "accept"}], "rank_by": "vibes"}, "rank_by"),
        ({"rules": [{"action": "accept"}], "default_action": "retry"}, "default_action"),
        ({"rulez": []}, "rulez"),
    ],
)
def test_validation_errors_name_the_bad_field(data: dict, field_path: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        GuardPolicy.from_dict(data)
    assert f"{field_path}:" in str(info.value)
    with pytest.raises(ValidationError):  # the plain pydantic entry point raises pydantic's error
        GuardPolicy.model_validate(data)


def test_non_mapping_and_bad_yaml_and_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="must be a mapping"):
        GuardPolicy.from_yaml("- just\n- a list\n")
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        GuardPolicy.from_yaml("rules: [\n")
    with pytest.raises(ConfigurationError, match="does not exist"):
        GuardPolicy.from_yaml(tmp_path / "nope.yaml")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        GuardPolicy.from_json("{rules")


YAML = """
rules:
  - name: confident
    min: 0.8
    action: accept
  - name: unsure
    min: 0.5
    max: 0.8
    action: retry
  - name: doubtful
    min: 0.3
    max: 0.5
    action: review
  - name: lost
    action: abstain
    message: "I don't know."
retry:
  max_attempts: 3
  strategy: [reconsider, resample]
  on_exhausted: review
review:
  path: /tmp/review.db
abstain_message: "Sorry, I'm not sure."
"""


def test_yaml_file_text_json_and_dict_round_trips(tmp_path) -> None:
    from_text = GuardPolicy.from_yaml(YAML)
    path = tmp_path / "policy.yaml"
    path.write_text(YAML)
    assert GuardPolicy.from_yaml(path) == from_text
    assert GuardPolicy.from_yaml(str(path)) == from_text
    assert GuardPolicy.from_yaml(from_text.to_yaml()) == from_text
    assert GuardPolicy.from_json(from_text.to_json()) == from_text
    jpath = tmp_path / "policy.json"
    jpath.write_text(from_text.to_json())
    assert GuardPolicy.from_json(jpath) == from_text
    assert GuardPolicy.model_validate(json.loads(from_text.to_json())) == from_text
    assert from_text.retry.strategies == ["reconsider", "resample"]
    assert from_text.rules[3].message == "I don't know."
    assert from_text.actions == {Action.ACCEPT, Action.RETRY, Action.REVIEW, Action.ABSTAIN}


def test_retry_accepts_a_users_tenacity_retrying_and_rejects_anything_else() -> None:
    r = tenacity.Retrying(stop=tenacity.stop_after_attempt(5))
    policy = GuardPolicy.model_validate({"rules": [{"action": "accept"}], "retry": {"retrying": r}})
    assert policy.retry.retrying is r
    assert "retrying" not in policy.to_yaml()  # code-only setting, never serialised
    with pytest.raises(ConfigurationError, match="retry.retrying"):
        GuardPolicy.from_dict({"rules": [{"action": "accept"}], "retry": {"retrying": "five times"}})


def test_rule_matches_is_half_open() -> None:
    r = Rule(field="semgrad", min=1.0, max=2.0, action="accept")
    assert [r.matches(v) for v in (0.999, 1.0, 1.5, 2.0)] == [False, True, True, False]
    with pytest.raises(ConfigurationError, match="max: .*finite"):  # typed, not pydantic's own error
        Rule(field="semgrad", max=float("inf"), action="accept")


def test_from_threshold_builds_a_risk_controlled_policy() -> None:
    policy = GuardPolicy.from_threshold(0.83, below="abstain", annotate_above=0.6)
    assert policy.decide(None, 0.83).action is Action.ACCEPT
    assert policy.decide(None, 0.7).action is Action.ANNOTATE
    assert policy.decide(None, 0.2).action is Action.ABSTAIN


def test_a_missing_relative_policy_file_says_where_it_was_looked_for(tmp_path, monkeypatch) -> None:
    # The READMEs name cookbook/policies/default.yaml; run from integrations/<pkg>/ it is not there.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as info:
        GuardPolicy.from_yaml("cookbook/policies/default.yaml")
    assert (
        str(info.value)
        == f"policy file cookbook/policies/default.yaml does not exist (relative to {tmp_path})"
    )
    with pytest.raises(ConfigurationError) as info:
        GuardPolicy.from_yaml(tmp_path / "nope.yaml")
    assert str(info.value) == f"policy file {tmp_path / 'nope.yaml'} does not exist"  # absolute: as given
