"""The one score payload: versioned, JSON round-trips, read back from any adapter's metadata."""

from __future__ import annotations

import json

import pytest

from semgrad_guard import ConfigurationError, GuardPolicy, ScoreResult, judge
from semgrad_guard.payload import PAYLOAD_KEY, PAYLOAD_VERSION, ScorePayload

RESULT = ScoreResult(
    semgrad=0.2, hybridgrad=0.3, exgrad=0.4, nll=3.0, mean_nll=0.5, mean_entropy=1.0,
    answer_tokens=6, anchor_offset=-7, layers=[1, 2],
)  # fmt: skip


def test_payload_from_a_verdict_carries_action_rule_and_confidence():
    policy = GuardPolicy.from_dict(
        {"rules": [{"name": "low", "field": "semgrad", "max": 0.5, "action": "accept"}]}
    )
    verdict = judge(policy, RESULT)
    p = ScorePayload.of(RESULT, verdict, source="guard", run_id=123)
    assert (p.action, p.rule, p.confidence, p.run_id) == ("accept", "low", None, "123")
    data = json.loads(json.dumps(p.to_json()))
    assert data["version"] == PAYLOAD_VERSION and data["scores"] == RESULT.scores()
    assert ScorePayload.read({PAYLOAD_KEY: data}) == p
    assert ScorePayload.read(data) == p  # the payload itself, not wrapped


def test_a_failed_score_is_a_payload_without_result():
    policy = GuardPolicy.from_dict({"rules": [{"action": "accept"}], "on_error": "abstain"})
    p = ScorePayload.of(None, judge(policy, None), source="callback")
    assert p.to_json()["scores"] is None and p.action == "abstain" and p.rule == "on_error"
    assert ScorePayload.read(p.to_json()) == p


def test_reading_metadata_without_a_payload_gives_none():
    assert ScorePayload.read({}) is None
    assert ScorePayload.read({"other": 1}) is None
    assert ScorePayload.read(None) is None


def test_an_unknown_version_is_refused_with_a_way_out():
    data = ScorePayload.of(RESULT).to_json() | {"version": 99}
    with pytest.raises(ConfigurationError, match="version 99.*upgrade semgrad-guard"):
        ScorePayload.read({PAYLOAD_KEY: data})
