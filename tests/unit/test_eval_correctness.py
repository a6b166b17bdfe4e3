"""Correctness rules: normalisation, containment, token F1, ROUGE-L, embedding similarity."""

from __future__ import annotations

import pytest

from semgrad_guard.errors import ConfigurationError
from semgrad_guard.eval.correctness import (
    check_rule,
    contains,
    embedding_similarity,
    is_correct,
    normalize,
    rouge_l,
    rouge_l_pair,
    rule_values,
    token_f1,
)


def test_normalize_squad_style() -> None:
    assert normalize("  The Sun's  RAYS, mostly!") == "suns rays mostly"
    assert normalize("An apple a day") == "apple day"


def test_contains_whole_words_only() -> None:
    assert contains("It was Charles Darwin.", ["darwin"])
    assert contains("heated by the Sun", ["the sun"])  # articles dropped on both sides
    assert not contains("carbonate rocks", ["carbon"])  # not a whole word
    assert contains("x", ["no", "X"])  # any reference
    assert not contains("anything", [""])  # an empty reference never matches


def test_token_f1_hand_computed() -> None:
    # pred [carbon, dioxide, gas] vs ref [carbon, dioxide]: P = 2/3, R = 1, F1 = 0.8
    assert token_f1("carbon dioxide gas", ["carbon dioxide"]) == pytest.approx(0.8)
    assert token_f1("oxygen", ["carbon dioxide", "oxygen"]) == 1.0
    assert token_f1("nitrogen", ["oxygen"]) == 0.0


def test_rouge_l_hand_computed() -> None:
    # LCS of [cats, eat, fish, daily] and [cats, like, fish] = [cats, fish]: P = 2/4, R = 2/3
    assert rouge_l_pair("cats eat fish daily", "cats like fish") == pytest.approx(
        2 * 0.5 * (2 / 3) / (0.5 + 2 / 3)
    )
    assert rouge_l("fish", ["dog", "fish"]) == 1.0
    assert rouge_l_pair("", "") == 1.0
    assert rouge_l_pair("a", "dog") == 0.0  # 'a' normalises to nothing


def test_embedding_similarity_orders_meanings() -> None:
    same = embedding_similarity("Carbon dioxide", ["CO2", "carbon dioxide gas"])
    other = embedding_similarity("Mitochondria", ["carbon dioxide gas"])
    assert same > 0.8 > other


def test_rule_values_and_is_correct() -> None:
    v = rule_values("It is carbon dioxide", ["carbon dioxide"], with_embedding=False)
    assert set(v) == {"contains", "f1", "rougeL"}
    assert v["contains"] == 1.0
    assert v["f1"] == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert is_correct(v, "contains", 0.5)
    assert not is_correct(v, "f1", 0.7)
    with pytest.raises(ConfigurationError, match="was not computed"):
        is_correct(v, "embedding", 0.7)
    with pytest.raises(ConfigurationError, match="no reference"):
        rule_values("x", [])


def test_check_rule_errors() -> None:
    assert check_rule("f1", None) == 0.5
    assert check_rule("embedding", 0.9) == 0.9
    with pytest.raises(ConfigurationError, match="unknown correctness rule 'bem'"):
        check_rule("bem", None)
    with pytest.raises(ConfigurationError, match=r"threshold must be in \(0, 1\]"):
        check_rule("f1", 1.5)
