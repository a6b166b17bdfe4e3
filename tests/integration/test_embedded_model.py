"""The embedded SmolLM2-135M-Instruct end to end: fetch cache, shipped profile, generate, score, CLI."""

from __future__ import annotations

import json

import pytest

from semgrad_guard import fetch_default_model
from semgrad_guard.cli import main
from semgrad_guard.scoring.default_model import cache_is_valid

pytestmark = pytest.mark.integration


def test_default_cache_is_valid_and_fetch_is_a_no_op():
    path = fetch_default_model()
    assert cache_is_valid(path)
    assert (path / "model.safetensors").stat().st_size > 100_000_000
    assert fetch_default_model() == path


def test_shipped_profile_is_found_for_the_default_model(default_scorer):
    profile = default_scorer.profile
    assert profile.source == "supervised" and profile.model_id == default_scorer.model_id
    # Chosen by cross-validated AUROC, with the label-free SPS table kept beside it.
    assert profile.selection is not None and profile.selection["cv_auroc"] > 0.5
    assert profile.sps_table is not None and profile.selection["sps"]["offset"] == -1


def test_generate_scores_match_scoring_the_text(default_scorer):
    answer, from_cache = default_scorer.generate("What is the capital of France?", max_new_tokens=24)
    assert "Paris" in answer
    from_text = default_scorer.score("What is the capital of France?", answer)
    assert from_text.answer_tokens == from_cache.answer_tokens
    for name in ("semgrad", "exgrad", "hybridgrad", "nll", "mean_entropy"):
        assert getattr(from_text, name) == pytest.approx(getattr(from_cache, name), rel=1e-4), name


def test_a_wrong_answer_is_less_likely_than_the_models_own(default_scorer):
    # Detection quality is measured on data (benchmarks/results/sciq_eval), not asserted on one example;
    # here only the likelihood ordering, which must hold for the model's own greedy answer.
    own, r_own = default_scorer.generate("What is the capital of France?", max_new_tokens=24)
    wrong = default_scorer.score("What is the capital of France?", "The capital of France is Madrid.")
    assert wrong.nll > r_own.nll and wrong.mean_nll > r_own.mean_nll


def test_cli_score_json_on_the_default_model(capsys):
    assert (
        main(["score", "--prompt", "How many legs does a spider have?", "--answer", "Eight.", "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["answer_tokens"] >= 2 and out["semgrad"] > 0 and out["layers"]
