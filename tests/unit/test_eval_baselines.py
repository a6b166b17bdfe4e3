"""Sampling baselines: clustering, semantic entropy, lexical similarity, and the HF sampler."""

from __future__ import annotations

import math

import pytest

from semgrad_guard.errors import ConfigurationError
from semgrad_guard.eval.baselines import (
    HFSampler,
    cluster_by_meaning,
    discrete_semantic_entropy,
    lexical_dissimilarity,
    sampling_scores,
)


def test_discrete_semantic_entropy_hand_computed() -> None:
    assert discrete_semantic_entropy([0, 0, 0, 0]) == 0.0
    assert discrete_semantic_entropy([0, 1]) == pytest.approx(math.log(2))
    # frequencies 2/4, 1/4, 1/4
    assert discrete_semantic_entropy([0, 0, 1, 2]) == pytest.approx(
        -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    )


def test_lexical_dissimilarity_hand_computed() -> None:
    assert lexical_dissimilarity(["the sun", "Sun", "sun!"]) == pytest.approx(0.0)
    # pairs: (x y, x z) = 0.5, (x y, q) = 0, (x z, q) = 0 -> 1 - 0.5/3
    assert lexical_dissimilarity(["x y", "x z", "q"]) == pytest.approx(1 - 0.5 / 3)
    with pytest.raises(ConfigurationError, match="at least 2"):
        lexical_dissimilarity(["one"])


def test_cluster_by_meaning_groups_paraphrases() -> None:
    answers = [
        "Carbon dioxide",
        "carbon dioxide.",
        "CO2 gas, carbon dioxide",
        "Mitochondria",
        "the mitochondria",
    ]
    ids = cluster_by_meaning(answers, threshold=0.75)
    assert ids[0] == ids[1] == ids[2]
    assert ids[3] == ids[4] != ids[0]
    # a threshold of 1 keeps only normalised-identical texts together
    strict = cluster_by_meaning(answers, threshold=1.0)
    assert strict[0] == strict[1] and strict[3] == strict[4] and len(set(strict)) == 3
    with pytest.raises(ConfigurationError, match="empty"):
        cluster_by_meaning([])


def test_sampling_scores_consistent_answers_score_lower() -> None:
    agree = sampling_scores(["Paris", "Paris.", "paris", "It is Paris"])
    disagree = sampling_scores(["Paris", "Lyon", "A banana", "Seven"])
    for key in ("semantic_entropy", "lexical_similarity", "num_meanings"):
        assert agree[key] < disagree[key], key
    assert disagree["num_meanings"] == 4.0
    assert disagree["semantic_entropy"] == pytest.approx(math.log(4))


def test_hf_sampler_on_tiny_model_is_seeded_and_counts_cost() -> None:
    from semgrad_guard.testing import tiny_scorer

    scorer = tiny_scorer("qwen2")
    sampler = HFSampler(scorer)
    a = sampler.sample("Name a colour.", k=4, max_new_tokens=5, seed=1)
    b = sampler.sample("Name a colour.", k=4, max_new_tokens=5, seed=1)
    c = sampler.sample("Name a colour.", k=4, max_new_tokens=5, seed=2)
    assert len(a.answers) == 4 and a.answers == b.answers and a.answers != c.answers
    assert len(set(a.answers)) > 1  # temperature 1 over a random model: the samples differ
    assert 1 <= a.model_calls <= 5
    assert 4 <= a.generated_tokens <= 4 * 5
    assert a.seconds > 0
    with pytest.raises(ConfigurationError, match=">= 1"):
        sampler.sample("x", k=0)
    with pytest.raises(ConfigurationError, match="> 0"):
        sampler.sample("x", k=2, temperature=0)
