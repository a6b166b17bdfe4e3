"""exgrad in both modes against plain references; the anchor window against one pass per anchor."""

from __future__ import annotations

import pytest
from reference_semgrad import reference_exgrad_weight, reference_scores

from semgrad_guard import ModelProfile, SemGradScorer
from semgrad_guard.scoring.fastpath import ScoringInput, embeddings_are_tied, exgrad_weight, score_ids
from semgrad_guard.testing import tiny_chat_model

ARCHS = ["llama", "qwen2", "gemma2", "phi3"]
CHAT = [{"role": "user", "content": "Which gas do plants take in during photosynthesis?"}]
ANSWER = "Carbon dioxide, mostly through the stomata."


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("arch", ARCHS)
def test_weight_mode_matches_the_parameter_gradient(arch, tie):
    model, tok = tiny_chat_model(arch, tie_word_embeddings=tie)
    scorer = SemGradScorer(model, tok, model_id=f"tiny-{arch}")
    x, y = scorer.prompt_ids(CHAT), scorer.answer_ids(CHAT, ANSWER)
    assert embeddings_are_tied(model) is tie
    got = exgrad_weight(scorer.adapter, ScoringInput(x, y), vocab_chunk=1000)
    want = reference_exgrad_weight(model, x, y)
    assert got == pytest.approx(want, rel=1e-5)
    logits_only = reference_scores(model, x, y, scorer.profile.anchor_offset, scorer.profile.layers)["exgrad"]
    if tie:
        # The input-embedding path adds to the shared matrix: the two modes differ.
        assert abs(got - logits_only) > 1e-3 * logits_only
    else:
        assert got == pytest.approx(logits_only, rel=1e-5)


def test_window_gives_each_anchor_of_one_pass():
    model, tok = tiny_chat_model("qwen2", tie_word_embeddings=False, seed=2)
    scorer = SemGradScorer(model, tok, profile=ModelProfile(anchor_offset=-6, layers=[1, 2, 3]))
    x, y = scorer.prompt_ids(CHAT), scorer.answer_ids(CHAT, ANSWER)
    raw = score_ids(scorer.adapter, [ScoringInput(x, y)], anchor_offset=-6, layers=[1, 2, 3], window=True)[0]
    assert len(raw.window_semgrad) == 6
    for j, offset in enumerate(range(-6, 0)):
        alone = scorer.with_profile(ModelProfile(anchor_offset=offset, layers=[1, 2, 3]))
        (by_layer,) = alone.semgrad_by_layer([ScoringInput(x, y)])
        for i, layer in enumerate([1, 2, 3]):
            assert raw.window_semgrad[j][i] == pytest.approx(by_layer[layer], rel=1e-5)
        ref = reference_scores(model, x, y, offset, [1, 2, 3])["semgrad"]
        assert sum(raw.window_semgrad[j]) / 3 == pytest.approx(ref, rel=1e-5)
