"""bfloat16 / float16 models: logits, entropy and the loss in float32, finite gradients, close to float32.

Tolerances as measured on these tiny random models: the hidden-state gradient (semgrad) of a
bfloat16 model is within 1-7% of its float32 copy (bfloat16 keeps 8 bits of mantissa), of a float16
model within 0.3%; exgrad and the likelihood scores, computed from float32 logits, within 0.1%.
"""

from __future__ import annotations

import math

import pytest
import torch

from semgrad_guard import ModelProfile, SemGradScorer
from semgrad_guard.testing import tiny_chat_model

CHAT = [{"role": "user", "content": "Which gas do plants take in during photosynthesis?"}]
ANSWER = "Carbon dioxide, through the stomata of their leaves."
TOLERANCE = {
    torch.bfloat16: {"semgrad": 0.1, "hybridgrad": 0.1, "exgrad": 0.005, "nll": 0.005, "mean_entropy": 0.005},
    torch.float16: {
        "semgrad": 0.01,
        "hybridgrad": 0.01,
        "exgrad": 0.005,
        "nll": 0.005,
        "mean_entropy": 0.005,
    },
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
def test_half_precision_scores_are_finite_and_close_to_float32(arch, dtype):
    model, tok = tiny_chat_model(arch, tie_word_embeddings=False)
    profile = ModelProfile(anchor_offset=-3, layers=[2, 3])
    reference = SemGradScorer(model, tok, profile=profile, model_id=arch).score(CHAT, ANSWER)
    half_model, _ = tiny_chat_model(arch, tie_word_embeddings=False)
    half_model.load_state_dict(model.state_dict())
    half = SemGradScorer(half_model.to(dtype), tok, profile=profile, model_id=arch)
    result = half.score(CHAT, ANSWER)
    answer, generated = half.generate(CHAT, max_new_tokens=8)
    for name, rel in TOLERANCE[dtype].items():
        got, want = getattr(result, name), getattr(reference, name)
        assert math.isfinite(got) and math.isfinite(getattr(generated, name))
        assert got == pytest.approx(want, rel=rel), f"{name}: {dtype} {got} vs float32 {want}"
    # The model's own parameters were never touched.
    assert all(p.dtype == dtype and p.grad is None for p in half_model.parameters())
