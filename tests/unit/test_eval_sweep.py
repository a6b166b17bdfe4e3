"""--sweep-anchor: held-out paraphrase groups and the AUROC-per-anchor table on a tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semgrad_guard.errors import ConfigurationError
from semgrad_guard.eval.data import PromptTemplate, Question
from semgrad_guard.eval.sweep import held_out_groups, layer_bands, sweep_anchor


def _paraphrases(path: Path, n: int) -> Path:
    rows = [
        {"query": f"What is item {i}?", "paraphrases": [f"Tell me item {i}.", f"Item {i} is what?"]}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_layer_bands() -> None:
    bands = layer_bands(8)
    assert bands["upper half"] == [4, 5, 6, 7]
    assert bands["lower half"] == [1, 2, 3]
    assert bands["top quarter"] == [6, 7]
    assert bands["all"] == list(range(1, 8))


def test_held_out_groups_exclude_evaluated_questions(tmp_path: Path) -> None:
    path = _paraphrases(tmp_path / "p.jsonl", 6)
    evaluated = [Question(id="0", question="what is ITEM 1?", references=["x"])]
    groups = held_out_groups(path, evaluated, limit=10, per_group=2)
    assert len(groups) == 5 and all(len(g) == 2 for g in groups)
    assert all("item 1?" not in g[0].lower() for g in groups)
    everything = [Question(id=str(i), question=f"What is item {i}?", references=["x"]) for i in range(5)]
    with pytest.raises(ConfigurationError, match="fewer than 2 paraphrase groups"):
        held_out_groups(path, everything, limit=10)


def test_sweep_anchor_on_tiny_model(tmp_path: Path) -> None:
    from semgrad_guard.testing import tiny_scorer

    scorer = tiny_scorer("qwen2")
    path = _paraphrases(tmp_path / "p.jsonl", 8)
    questions = [
        Question(id=str(i), question=f"Name colour number {i}.", references=["red"]) for i in range(6)
    ]
    generations = {q.id: {"answer": "red" if int(q.id) % 2 else "a blue thing"} for q in questions}
    correct = {q.id: int(q.id) % 2 == 1 for q in questions}
    out = sweep_anchor(
        scorer,
        questions,
        generations,
        correct,
        template=PromptTemplate(system=None),
        sps_data=path,
        sps_groups=4,
        window=3,
        bands={"upper": [2, 3], "top": [3]},
    )
    assert [r["offset"] for r in out["rows"]] == [-1, -2, -3]
    assert out["sps_groups"] == 4 and out["n"] == 6
    assert out["sps_offset"] in (-1, -2, -3)
    from semgrad_guard import ModelProfile
    from semgrad_guard.eval.metrics import auroc

    errors = [not correct[q.id] for q in questions]
    for row in out["rows"]:
        assert set(row["auroc"]) == {"upper", "top"}
        # Each AUROC is the one of that band's semgrad, scored on its own.
        for band, layers in {"upper": [2, 3], "top": [3]}.items():
            alone = scorer.with_profile(ModelProfile(anchor_offset=row["offset"], layers=layers))
            values = [alone.score(q.question, generations[q.id]["answer"]).semgrad for q in questions]
            assert row["auroc"][band] == pytest.approx(auroc(values, errors))
        assert all(-2.0 <= v <= 2.0 for v in row["sps"].values())
    # the SPS pick is the offset with the best mean SPS over the profile's layers
    best = max(
        out["rows"],
        key=lambda r: sum(out["sps_table"][str(r["offset"])][layer] for layer in out["sps_layers"]),
    )
    assert best["offset"] == out["sps_offset"]


def test_a_bands_semgrad_from_one_pass_equals_scoring_the_band_alone() -> None:
    from semgrad_guard import ModelProfile
    from semgrad_guard.scoring.fastpath import ScoringInput
    from semgrad_guard.testing import tiny_scorer

    scorer = tiny_scorer("llama")
    pairs = [("Name a colour.", "red"), ("What is two plus two?", "four, I think"), ("Hi", "Hello there!")]
    examples = []
    for chat, answer in pairs:
        x = scorer.prompt_ids(chat)
        examples.append(ScoringInput(x, scorer.answer_ids(chat, answer, prompt_ids=x)))
    by_layer = scorer.with_profile(
        ModelProfile(anchor_offset=-2, layers=[1, 2, 3], source="user")
    ).semgrad_by_layer(examples)
    for band in ([1], [2, 3], [1, 2, 3]):
        alone = scorer.with_profile(ModelProfile(anchor_offset=-2, layers=band, source="user"))
        for v, r in zip(by_layer, alone.score_token_ids(examples), strict=True):
            assert sum(v[layer] for layer in band) / len(band) == pytest.approx(r.semgrad, rel=1e-5)


def test_sweep_prints_progress_lines_for_sps_and_the_sweep_when_not_on_a_terminal(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    from semgrad_guard.testing import tiny_scorer

    monkeypatch.setenv("SEMGRAD_GUARD_PROGRESS_INTERVAL", "0")  # every step, to see them in a short test
    scorer = tiny_scorer("qwen2")
    path = _paraphrases(tmp_path / "p.jsonl", 8)
    questions = [
        Question(id=str(i), question=f"Name colour number {i}.", references=["red"]) for i in range(4)
    ]
    generations = {q.id: {"answer": "red" if int(q.id) % 2 else "a blue thing"} for q in questions}
    correct = {q.id: int(q.id) % 2 == 1 for q in questions}
    sweep_anchor(
        scorer,
        questions,
        generations,
        correct,
        template=PromptTemplate(system=None),
        sps_data=path,
        sps_groups=3,
        window=2,
        bands={"top": [3]},
        progress=True,
    )
    err = capsys.readouterr().err.splitlines()
    assert "progress: SPS on 3 held-out paraphrase groups: started" in err[0]
    assert any(
        line.startswith("progress: SPS on 3 held-out paraphrase groups:") and "(100%)" in line for line in err
    )
    assert any(line.startswith("progress: sweep 2 anchors x 4 answers: 8/8 (100%)") for line in err)


def test_sweep_sps_groups_are_bounded(tmp_path: Path) -> None:
    import inspect

    from semgrad_guard.eval.sweep import DEFAULT_SPS_GROUPS, MAX_SPS_GROUPS

    assert inspect.signature(sweep_anchor).parameters["sps_groups"].default == DEFAULT_SPS_GROUPS <= 64
    for bad in (0, 1, MAX_SPS_GROUPS + 1):
        with pytest.raises(ConfigurationError, match="sps_groups must be between 2 and"):
            sweep_anchor(
                None,
                [],
                {},
                {},
                template=PromptTemplate(system=None),
                sps_data=tmp_path / "x",
                sps_groups=bad,
            )


def test_line_progress_prints_periodically_and_at_the_end() -> None:
    import io

    from semgrad_guard.progress import LineProgress

    out = io.StringIO()
    with LineProgress(out, interval=3600) as bar:
        task = bar.add_task("score", total=10)
        for _ in range(9):
            bar.advance(task)
        assert out.getvalue().count("\n") == 1  # started; the interval has not passed
        bar.advance(task)
    lines = out.getvalue().splitlines()
    assert lines[0] == "progress: score: started (10 steps)"
    assert lines[1].startswith("progress: score: 10/10 (100%), ") and "elapsed 0:00:0" in lines[1]
    out = io.StringIO()
    with pytest.raises(RuntimeError), LineProgress(out, interval=3600) as bar:
        bar.advance(bar.add_task("gen", total=5), 2)
        raise RuntimeError("stop")
    assert out.getvalue().splitlines()[-1].startswith("progress: gen: 2/5 (40%)")  # where it ended
