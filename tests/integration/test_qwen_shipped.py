"""Qwen2.5-Coder-0.5B by registry name loads with its shipped profile and calibrator: no notice."""

from __future__ import annotations

import warnings

import pytest

from semgrad_guard import Calibrator, SemGradScorer
from semgrad_guard.scoring.hf_scorer import ProfileNotice

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_from_pretrained_by_name_has_a_shipped_profile_and_calibrator():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProfileNotice)
        scorer = SemGradScorer.from_pretrained("qwen2.5-coder-0.5b")
    assert scorer.profile.source == "supervised"
    calibrator = Calibrator.default_for(scorer.model_id)
    calibrator.check_compatible(scorer.model_id, scorer.profile)
    text, result = scorer.generate("What is the capital of France?", max_new_tokens=8)
    assert "Paris" in text
    (confidence,) = calibrator.predict([result])
    assert 0.0 <= confidence <= 1.0
