"""Activation checkpointing of the scoring pass (long answers): the same scores as the reference, the
upper layers run twice, and the memory estimate's graph term grows by each layer's input alone."""

from __future__ import annotations

import pytest
import torch
from reference_semgrad import reference_scores
from test_parity import assert_close

from semgrad_guard import ModelProfile, SemGradScorer
from semgrad_guard.scoring import fastpath
from semgrad_guard.scoring.fastpath import ScoringInput, score_ids
from semgrad_guard.testing import tiny_chat_model

ARCHS = ["llama", "qwen2", "qwen3", "gemma2", "gemma3", "mistral", "phi3"]
CHAT = [{"role": "user", "content": "Which gas do plants take in during photosynthesis?"}]
ANSWER = "Carbon dioxide, which the leaves take in through their stomata during the day."


def _calls(module: torch.nn.Module) -> dict[str, int]:
    calls = {"n": 0}

    def hook(*_: object) -> None:
        calls["n"] += 1

    # A pre-hook: the rerun stops as soon as the backward has what it needs, before forward hooks fire.
    module.register_forward_pre_hook(hook)
    return calls


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpointed_scoring_matches_reference(arch):
    # gemma2/3 and mistral: sliding-window cache layers are put back before each rerun too.
    model, tok = tiny_chat_model(arch, tie_word_embeddings=False, num_hidden_layers=6)
    profile = ModelProfile(anchor_offset=-3, layers=[2, 4, 5])
    scorer = SemGradScorer(model, tok, profile=profile, model_id=arch)
    x, y = scorer.prompt_ids(CHAT), scorer.answer_ids(CHAT, ANSWER)
    below, first = _calls(scorer.adapter.layers[1].mlp), _calls(scorer.adapter.layers[2].mlp)
    raw = score_ids(scorer.adapter, [ScoringInput(x, y)], anchor_offset=-3, layers=[2, 4, 5], checkpoint=True)
    # The prefix and the suffix pass run each layer once; the backward reruns the upper ones only.
    assert below["n"] == 2 and first["n"] == 3
    assert_close(raw[0], reference_scores(model, x, y, -3, [2, 4, 5]))


def test_a_batch_and_generate_checkpoint_above_the_threshold_with_the_same_scores(monkeypatch):
    model, tok = tiny_chat_model("qwen2", tie_word_embeddings=False, num_hidden_layers=6, seed=1)
    profile = ModelProfile(anchor_offset=-2, layers=[3, 5])
    scorer = SemGradScorer(model, tok, profile=profile)
    pairs = [(CHAT, ANSWER), ("Why?", "Because.")]
    plain = scorer.score_batch(pairs)
    _, gen = scorer.generate(CHAT, max_new_tokens=12)
    monkeypatch.setattr(fastpath, "CHECKPOINT_BYTES", 0)  # every pass is "long"
    first = _calls(scorer.adapter.layers[3].mlp)
    ckpt = scorer.score_batch(pairs)
    assert first["n"] == 3  # one batch: the prefix, the suffix, then its rerun in the backward
    _, gen_ckpt = scorer.generate(CHAT, max_new_tokens=12)
    for a, b in [*zip(plain, ckpt, strict=True), (gen, gen_ckpt)]:
        for name in ("semgrad", "exgrad", "nll", "mean_entropy"):
            assert getattr(b, name) == pytest.approx(getattr(a, name), rel=1e-5), name


def test_the_estimate_switches_to_the_checkpointed_graph_above_the_threshold(monkeypatch):
    model, tok = tiny_chat_model("llama", tie_word_embeddings=False, num_hidden_layers=12)
    profile = ModelProfile(anchor_offset=-2, layers=list(range(4, 12)))
    scorer = SemGradScorer(model, tok, profile=profile, max_memory=None)
    adapter = scorer.adapter
    # The first answer length whose full graph is over the threshold.
    n = next(n for n in range(1, 10**7, 97) if fastpath.checkpoints(adapter, n + 1, 4))
    assert not fastpath.checkpoints(adapter, 2, 4)
    full, ckpt = fastpath._graph_bytes(adapter, n + 1, 4, 1)
    assert ckpt < full / 2  # about two layers' activations instead of eight
    # Crossing the threshold the estimate drops (the graph is recomputed) by exactly the graph saved.
    assert scorer.estimate_memory(20, n) < scorer.estimate_memory(20, n - 97)
    with_ckpt = scorer.estimate_memory(20, n)
    monkeypatch.setattr(fastpath, "CHECKPOINT_BYTES", 2**62)
    assert scorer.estimate_memory(20, n) - with_ckpt == full - ckpt


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpointed_span_scores_match_the_uncheckpointed_ones(arch, monkeypatch):
    # Spans take a batched backward (or one per span on the retained graph) through the rerun layers.
    model, tok = tiny_chat_model(arch, tie_word_embeddings=False, num_hidden_layers=6, seed=2)
    scorer = SemGradScorer(model, tok, profile=ModelProfile(anchor_offset=-3, layers=[2, 4, 5]))
    answer = ANSWER + " It is then turned into sugar. Oxygen goes out."
    want = scorer.score(CHAT, answer, spans="sentences")
    monkeypatch.setattr(fastpath, "CHECKPOINT_BYTES", 0)
    first = _calls(scorer.adapter.layers[2].mlp)
    batched = scorer.score(CHAT, answer, spans="sentences")
    assert first["n"] >= 3  # the prefix, the suffix and at least one rerun: it did checkpoint
    scorer.adapter.batched_grads = False
    looped = scorer.score(CHAT, answer, spans="sentences")
    assert want.spans is not None and len(want.spans) == 3
    for got in (batched, looped):
        assert got.spans is not None
        for a, b in zip(want.spans, got.spans, strict=True):
            for name in ("semgrad", "exgrad", "nll", "mean_entropy"):
                assert getattr(b, name) == pytest.approx(getattr(a, name), rel=1e-5), (arch, name)
