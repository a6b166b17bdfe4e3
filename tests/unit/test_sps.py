"""SPS on a toy problem whose answer is known, and its input validation."""

from __future__ import annotations

import json

import pytest
import torch

from semgrad_guard import ConfigurationError, SemGradScorer, compute_sps
from semgrad_guard.scoring.sps import load_paraphrase_groups
from semgrad_guard.testing import tiny_chat_model


def test_identical_questions_in_a_group_have_maximal_within_group_similarity():
    model, tok = tiny_chat_model("qwen2")
    scorer = SemGradScorer(model, tok)
    # Groups of literally identical prompts: within-group cosine is 1 at every offset and layer >= 1.
    groups = [
        ["What is the boiling point of water?"] * 3,
        ["Who wrote Hamlet, the play?"] * 3,
        ["Name a large planet now."] * 3,
    ]
    result = compute_sps(scorer, groups, window=3)
    assert set(result.table) == {-1, -2, -3}
    n = 4  # hidden-state indices 0..3
    for o in (-1, -2, -3):
        assert len(result.table[o]) == n
    # At offset -4 onwards the prompts differ, so only the template-tail offsets are compared here:
    # the tail tokens are the same for all prompts, yet their hidden states (layers >= 1) see the question.
    assert all(v > 0.5 for v in result.table[-1][1:])
    assert result.profile.anchor_offset in (-1, -2, -3) and result.profile.layers == [2, 3]
    assert result.n_prompts == 9 and result.anchor_tokens[-1] == "\n"


def test_sps_matches_a_direct_computation():
    model, tok = tiny_chat_model("llama", seed=4)
    scorer = SemGradScorer(model, tok)
    groups = [
        ["Why is the sky blue?", "What makes the sky blue?"],
        ["How do magnets work?", "Why do magnets attract?"],
        ["What is DNA?", "Explain DNA."],
    ]
    result = compute_sps(scorer, groups, window=2)
    vecs, gid = [], []
    for g, qs in enumerate(groups):
        for q in qs:
            ids = torch.tensor([scorer.prompt_ids(q)])
            with torch.no_grad():
                hs = model.model(input_ids=ids, output_hidden_states=True).hidden_states
            vecs.append(hs[3][0, -2])
            gid.append(g)
    v = torch.stack(vecs)
    v = v - v.mean(0)
    v = v / v.norm(dim=1, keepdim=True)
    cos = v @ v.T
    same = [(i, j) for i in range(6) for j in range(6) if i != j and gid[i] == gid[j]]
    diff = [(i, j) for i in range(6) for j in range(6) if gid[i] != gid[j]]
    expected = (
        torch.stack([cos[i, j] for i, j in same]).mean() - torch.stack([cos[i, j] for i, j in diff]).mean()
    )
    assert result.table[-2][3] == pytest.approx(float(expected), abs=1e-4)


def test_bad_groups_are_rejected(tmp_path):
    model, tok = tiny_chat_model("qwen2")
    with pytest.raises(ConfigurationError, match="at least 2 groups"):
        compute_sps(SemGradScorer(model, tok), [["a", "b"]])
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ConfigurationError, match="paraphrases"):
        load_paraphrase_groups(f)


def test_sps_can_choose_the_band_too():
    from semgrad_guard.scoring.sps import best_cell

    model, tok = tiny_chat_model("qwen2")
    scorer = SemGradScorer(model, tok)
    groups = [["What is DNA?", "Explain DNA."], ["Why is the sky blue?", "What makes the sky blue?"]]
    bands = {"top": [3], "upper half": [2, 3], "lower": [1]}
    result = compute_sps(scorer, groups, window=2, bands=bands)
    offset, name, layers, sps = best_cell(result.table, bands)
    assert (result.profile.anchor_offset, result.profile.layers) == (offset, layers)
    means = {
        (o, b): sum(result.table[o][i] for i in ls) / len(ls) for o in result.table for b, ls in bands.items()
    }
    assert sps == max(means.values()) == means[(offset, name)]


def test_best_cell_refuses_bands_outside_the_table():
    from semgrad_guard.scoring.sps import best_cell

    with pytest.raises(ConfigurationError, match="outside the table's 2"):
        best_cell({-1: [0.1, 0.2]}, {"far": [5]})
    with pytest.raises(ConfigurationError, match="non-empty"):
        best_cell({-1: [0.1]}, {"none": []})
