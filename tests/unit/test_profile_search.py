"""Choosing the profile by cross-validated AUROC on labelled answers (API and `profile --labels`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from semgrad_guard import ConfigurationError, ModelProfile, SemGradScorer
from semgrad_guard.cli import main
from semgrad_guard.eval.profile_search import (
    Candidate,
    candidate_values,
    layer_bands,
    select_from_window,
    select_profile,
)
from semgrad_guard.scoring.fastpath import ScoringInput
from semgrad_guard.testing import tiny_chat_model


def test_select_from_window_finds_the_informative_anchor_and_cross_validates():
    rng = np.random.default_rng(0)
    n, offsets, L = 300, [-4, -3, -2, -1], 8
    errors = rng.uniform(size=n) < 0.4
    window = rng.lognormal(-7, 1, size=(n, 4, L))
    # Only offset -3 in the upper layers carries the signal.
    window[:, 1, 4:] *= np.where(errors, 3.0, 1.0)[:, None]
    best, table, cv, folds = select_from_window(
        window, errors, offsets=offsets, bands=layer_bands(L), folds=5
    )
    assert best.offset == -3 and set(best.layers) <= set(range(4, 8))
    assert len(table) == 4 * len(layer_bands(L)) and len(folds) == 5
    assert all(f["chosen"].startswith("-3/") for f in folds)
    assert cv > 0.75
    noise = next(r for r in table if r["offset"] == -1 and r["band"] == "upper half")
    assert noise["low"] < 0.5 < noise["high"]
    with pytest.raises(ConfigurationError, match="at least 2 right and 2 wrong"):
        select_from_window(window[:5], [True] * 5, offsets=offsets, bands=layer_bands(L))


@pytest.fixture(scope="module")
def scorer():
    model, tok = tiny_chat_model("qwen2", tie_word_embeddings=False)
    return SemGradScorer(model, tok, model_id="tiny", profile=ModelProfile(anchor_offset=-2, layers=[2, 3]))


def _labelled(scorer, n=24):
    qs = [f"What is {i} plus {i}?" for i in range(n)]
    # A label the tiny random model's SemGrad can see: answers whose SemGrad at -1 is above the median.
    rows = [(q, f"{2 * i}" if i % 2 else f"maybe {i}", True) for i, q in enumerate(qs)]
    values = [
        scorer.with_profile(ModelProfile(anchor_offset=-1, layers=[1, 2, 3])).score(q, a).semgrad
        for q, a, _ in rows
    ]
    med = float(np.median(values))
    return [(q, a, v <= med) for (q, a, _), v in zip(rows, values, strict=True)]


def test_select_profile_matches_per_anchor_scoring(scorer):
    labelled = _labelled(scorer)
    sel = select_profile(scorer, labelled, window=4, folds=3)
    assert sel.profile.source == "supervised" and sel.n == 24 and sel.n_errors == 12
    assert sel.profile.selection["cv_auroc"] == sel.cv_auroc
    # The chosen candidate's values are the scorer's own semgrad under that profile.
    chosen = scorer.with_profile(sel.profile)
    for q, a, _ in labelled[:3]:
        x = chosen.prompt_ids(q)
        (by_layer,) = chosen.semgrad_by_layer([ScoringInput(x, chosen.answer_ids(q, a, prompt_ids=x))])
        assert chosen.score(q, a).semgrad == pytest.approx(np.mean(list(by_layer.values())), rel=1e-5)
    # The label was built from offset -1 over layers 1-3: that candidate must score a perfect AUROC.
    row = next(r for r in sel.table if r["offset"] == -1 and r["band"] == "all")
    assert row["auroc"] == 1.0 and sel.chosen.offset == -1
    sps = select_profile(
        scorer, labelled, window=4, folds=3, sps_profile=ModelProfile(anchor_offset=-3, layers=[3])
    )
    assert sps.sps is not None and sps.sps["offset"] == -3 and 0.0 <= sps.sps["low"] <= sps.sps["high"] <= 1.0


def test_cli_profile_from_labels(tmp_path, scorer, capsys):
    model, tok = scorer.model, scorer.tokenizer
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    labels = tmp_path / "labelled.jsonl"
    labels.write_text(
        "".join(
            json.dumps({"question": q, "answer": a, "correct": c}) + "\n" for q, a, c in _labelled(scorer)
        )
    )
    out = tmp_path / "profile.json"
    assert (
        main(
            [
                "profile",
                "--model",
                str(tmp_path / "m"),
                "--labels",
                str(labels),
                "--window",
                "4",
                "--folds",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    prof = ModelProfile.load(out)
    assert prof.source == "supervised" and prof.anchor_offset == -1
    text = capsys.readouterr().out
    assert "cross-validated AUROC" in text and "profile (supervised)" in text
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a", "correct": "yes"}\n')
    assert main(["profile", "--model", str(tmp_path / "m"), "--labels", str(bad), "--out", str(out)]) == 2
    assert "'correct' (true/false)" in capsys.readouterr().err


def test_candidate_values_average_the_band():
    window = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    v = candidate_values(window, [-3, -2, -1], Candidate(-2, "x", [1, 3]))
    assert v.tolist() == [(5 + 7) / 2, (17 + 19) / 2]
