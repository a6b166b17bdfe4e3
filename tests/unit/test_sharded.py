"""A model dispatched by accelerate over several places (some layers on the CPU, some offloaded to disk,
their weights on the meta device until each layer runs) scores as the same model in one piece."""

from __future__ import annotations

import pytest
import torch
from accelerate import dispatch_model

from semgrad_guard import ModelError, ModelProfile, SemGradScorer
from semgrad_guard.testing import tiny_chat_model

CHAT = [{"role": "user", "content": "Which gas do plants take in during photosynthesis?"}]
FIELDS = ("semgrad", "exgrad", "hybridgrad", "nll", "mean_nll", "mean_entropy")
PROFILE = ModelProfile(anchor_offset=-3, layers=[2, 3])
DEVICE_MAP = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",  # below min(S): step 4 must skip it, hooks and all
    "model.layers.2": "disk",  # min(S): the captured residuals enter here
    "model.layers.3": "cpu",
    "model.norm": "cpu",
    "lm_head": "cpu",
}


def _close(got, want):
    for name in FIELDS:
        assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-5), name


@pytest.mark.parametrize(
    "dispatch_first", [True, False], ids=["dispatched-then-scorer", "scorer-then-dispatched"]
)
def test_dispatched_model_scores_as_the_unsharded_one(tmp_path, dispatch_first):
    whole, tok = tiny_chat_model("llama", tie_word_embeddings=False)
    reference = SemGradScorer(whole, tok, profile=PROFILE)
    want_answer, want_generated = reference.generate(CHAT, max_new_tokens=10)
    want_scored = reference.score(CHAT, "Carbon dioxide, through the leaves.")

    model, _ = tiny_chat_model("llama", tie_word_embeddings=False)
    if not dispatch_first:
        scorer = SemGradScorer(model, tok, profile=PROFILE)
    model = dispatch_model(model, device_map=DEVICE_MAP, offload_dir=str(tmp_path))
    if dispatch_first:
        scorer = SemGradScorer(model, tok, profile=PROFILE)
    layers = scorer.adapter.layers
    assert next(layers[1].parameters()).device.type == "meta"  # really offloaded
    assert next(layers[3].parameters()).device.type == "cpu"
    calls = {"below": 0}
    layers[1].mlp.register_forward_hook(lambda *_: calls.__setitem__("below", calls["below"] + 1))

    answer, generated = scorer.generate(CHAT, max_new_tokens=10)
    assert answer == want_answer
    assert calls["below"] == generated.answer_tokens  # generation only: step 4 did not run it again
    _close(generated, want_generated)
    _close(scorer.score(CHAT, "Carbon dioxide, through the leaves."), want_scored)


def test_an_offloaded_output_projection_is_refused_with_the_fix(tmp_path):
    model, tok = tiny_chat_model("llama", tie_word_embeddings=False)
    model = dispatch_model(model, device_map={**DEVICE_MAP, "lm_head": "disk"}, offload_dir=str(tmp_path))
    scorer = SemGradScorer(model, tok, profile=PROFILE)
    with pytest.raises(ModelError, match="lm_head.*offloaded|offloaded.*lm_head"):
        scorer.score(CHAT, "Carbon dioxide.")
    assert torch.is_grad_enabled()
