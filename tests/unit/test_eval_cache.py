"""Generation cache: persistence, settings keys, interrupted runs, resume without regeneration."""

from __future__ import annotations

from pathlib import Path

import pytest

from semgrad_guard import MockScorer
from semgrad_guard.eval.cache import JsonlCache, settings_key
from semgrad_guard.eval.data import Question
from semgrad_guard.eval.runner import EvalConfig, choose_subset, generate_answers, random_order


def test_put_get_and_reload(tmp_path: Path) -> None:
    key = settings_key({"model": "m", "max_new_tokens": 8})
    c = JsonlCache(tmp_path / "g.jsonl", key)
    c.put("q1", {"answer": "Paris"})
    again = JsonlCache(tmp_path / "g.jsonl", key)
    assert "q1" in again and again.get("q1")["answer"] == "Paris"  # type: ignore[index]
    other = JsonlCache(tmp_path / "g.jsonl", settings_key({"model": "m", "max_new_tokens": 9}))
    assert len(other) == 0  # another setting: nothing reused


def test_settings_key_is_order_independent() -> None:
    assert settings_key({"a": 1, "b": [1, 2]}) == settings_key({"b": [1, 2], "a": 1})
    assert settings_key({"a": 1}) != settings_key({"a": 2})


def test_truncated_last_line_is_dropped_and_file_repaired(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    c = JsonlCache(path, "k")
    c.put("q1", {"answer": "a"})
    with path.open("a") as f:
        f.write('{"id": "q2", "key": "k", "ans')  # killed mid-write
    resumed = JsonlCache(path, "k")
    assert resumed.dropped_lines == 1 and "q2" not in resumed and "q1" in resumed
    resumed.put("q2", {"answer": "b"})
    assert JsonlCache(path, "k").get("q2")["answer"] == "b"  # type: ignore[index]


def _questions(n: int) -> list[Question]:
    return [Question(id=str(i), question=f"question {i}", references=["yes"]) for i in range(n)]


def test_generate_answers_resumes_without_regenerating(tmp_path: Path) -> None:
    qs = _questions(5)
    cfg = EvalConfig(methods=["nll"], max_new_tokens=4, plots=False)
    first = MockScorer(answers=lambda messages, **kw: "yes " + messages[-1]["content"])
    out1 = generate_answers(first, qs[:3], tmp_path, cfg, progress=False)
    assert len(first.calls) == 3
    second = MockScorer(answers=lambda messages, **kw: "different")
    out2 = generate_answers(second, qs, tmp_path, cfg, progress=False)
    assert len(second.calls) == 2  # only the two new questions were generated
    assert out2["0"]["answer"] == out1["0"]["answer"] == "yes question 0"
    assert out2["4"]["answer"] == "different"
    # a new max_new_tokens is another setting: everything is regenerated
    third = MockScorer(answers=["z"])
    generate_answers(third, qs, tmp_path, cfg.model_copy(update={"max_new_tokens": 5}), progress=False)
    assert len(third.calls) == 5


def test_random_subsets_are_nested_and_seeded() -> None:
    qs = _questions(50)
    small = choose_subset(qs, 10, seed=3)
    large = choose_subset(qs, 25, seed=3)
    assert {q.id for q in small} < {q.id for q in large}
    assert [q.id for q in small] == sorted((q.id for q in small), key=int)  # file order
    assert choose_subset(qs, 10, seed=4) != small
    assert random_order(qs[:20], 3)[:5] == [q for q in random_order(qs, 3) if int(q.id) < 20][:5]
    assert choose_subset(qs, None, seed=0) == qs


def test_a_profile_change_rescores_cached_answers_instead_of_regenerating(tmp_path: Path) -> None:
    qs = _questions(4)
    cfg = EvalConfig(methods=["semgrad"], max_new_tokens=4, plots=False)
    generate_answers(MockScorer(answers=["yes"], anchor_offset=-1), qs, tmp_path, cfg, progress=False)
    other = MockScorer(lambda m, a: 0.25, answers=["never generated"], anchor_offset=-3, layers=[2, 3])
    out = generate_answers(other, qs, tmp_path, cfg, progress=False)
    assert [a for _, a in other.calls] == ["yes"] * 4  # scored the cached answers, generated nothing
    assert all(o["answer"] == "yes" and o["scores"]["semgrad"] == 0.25 for o in out.values())
    assert all(o["anchor_offset"] == -3 and o["layers"] == [2, 3] for o in out.values())
    again = MockScorer(answers=["never generated"], anchor_offset=-3, layers=[2, 3])
    generate_answers(again, qs, tmp_path, cfg, progress=False)
    assert again.calls == []  # the re-scored records are the cache now


def test_rescored_answers_equal_scores_generated_under_the_new_profile(tmp_path: Path) -> None:
    # Exactness of the teacher-forced re-score, answers cut by max_new_tokens included.
    from semgrad_guard import ModelProfile
    from semgrad_guard.testing import tiny_scorer

    qs = _questions(3)
    cfg = EvalConfig(methods=["semgrad"], max_new_tokens=5, plots=False)
    scorer = tiny_scorer("llama")
    new = scorer.with_profile(ModelProfile(anchor_offset=-2, layers=[1], source="user"))
    generate_answers(scorer, qs, tmp_path / "a", cfg, progress=False)
    rescored = generate_answers(new, qs, tmp_path / "a", cfg, progress=False)
    direct = generate_answers(new, qs, tmp_path / "b", cfg, progress=False)
    for q in qs:
        assert rescored[q.id]["answer"] == direct[q.id]["answer"]
        for field, value in direct[q.id]["scores"].items():
            assert rescored[q.id]["scores"][field] == pytest.approx(value, rel=1e-5), field
