"""Step 4 of the fast path: scoring after ``generate`` starts at layer min(S) from the residual states
captured during generation; the layers below it never run again, and the numbers are the reference's."""

from __future__ import annotations

import pytest
import torch
from reference_semgrad import reference_scores
from test_parity import assert_close

from semgrad_guard import ModelProfile, SemGradScorer
from semgrad_guard.errors import ModelError
from semgrad_guard.scoring.fastpath import ResidualRecorder, ScoringInput, crop_cache, score_ids
from semgrad_guard.testing import tiny_chat_model

ARCHS = ["llama", "qwen2", "qwen3", "gemma2", "gemma3", "mistral", "phi3"]
CHAT = [{"role": "user", "content": "Which gas do plants take in during photosynthesis?"}]


def _greedy_ids(scorer: SemGradScorer, x: list[int], max_new_tokens: int) -> tuple[list[int], int]:
    """The answer ids greedy generation produces (cut after the first end-of-turn) and how many it made."""
    with torch.no_grad():
        out = scorer.model.generate(
            input_ids=torch.tensor([x]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=scorer.eos_token_ids,
            pad_token_id=scorer.eos_token_ids[0],
        )
    generated = out[0, len(x) :].tolist()
    eos = [i for i, t in enumerate(generated) if t in scorer.eos_token_ids]
    return (generated[: eos[0] + 1] if eos else generated), len(generated)


def _count_calls(module: torch.nn.Module) -> dict[str, int]:
    calls = {"n": 0}

    def hook(*_: object) -> None:
        calls["n"] += 1

    module.register_forward_hook(hook)
    return calls


@pytest.mark.parametrize(
    "arch,tie", [(a, False) for a in ARCHS] + [("llama", True), ("qwen3", True), ("gemma3", True)]
)
def test_generate_scores_from_captured_residuals_and_matches_reference(arch, tie):
    model, tok = tiny_chat_model(arch, tie_word_embeddings=tie, num_hidden_layers=6)
    profile = ModelProfile(anchor_offset=-2, layers=[3, 4, 5])
    scorer = SemGradScorer(model, tok, profile=profile, model_id=arch)
    x = scorer.prompt_ids(CHAT)
    y, made = _greedy_ids(scorer, x, 10)
    below = _count_calls(scorer.adapter.layers[2].mlp)  # the last layer below min(S)
    first = _count_calls(scorer.adapter.layers[3].mlp)  # min(S) itself
    _, r = scorer.generate(CHAT, max_new_tokens=10)
    # Generation runs every layer once per step (the prefill, then each token but the last); scoring
    # adds one pass from min(S) up and none below it.
    assert below["n"] == made
    assert first["n"] == made + 1
    assert r.answer_tokens == len(y)
    assert_close(r, reference_scores(model, x, y, profile.anchor_offset, profile.layers))


@pytest.mark.parametrize("offset,layers", [(-1, [0, 1, 2, 3]), (-6, [1, 3]), (-3, [3])])
def test_step4_with_other_anchors_and_layer_sets(offset, layers):
    model, tok = tiny_chat_model("qwen2", tie_word_embeddings=False, seed=5)
    scorer = SemGradScorer(model, tok, profile=ModelProfile(anchor_offset=offset, layers=layers))
    x = scorer.prompt_ids(CHAT)
    y, _ = _greedy_ids(scorer, x, 8)
    _, r = scorer.generate(CHAT, max_new_tokens=8)
    assert_close(r, reference_scores(model, x, y, offset, layers))


def test_step4_equals_the_suffix_pass_through_every_layer():
    model, tok = tiny_chat_model("llama", tie_word_embeddings=False, num_hidden_layers=6, seed=2)
    profile = ModelProfile(anchor_offset=-4, layers=[3, 5])
    scorer = SemGradScorer(model, tok, profile=profile)
    x = scorer.prompt_ids(CHAT)
    y, _ = _greedy_ids(scorer, x, 9)
    _, step4 = scorer.generate(CHAT, max_new_tokens=9)
    full = score_ids(scorer.adapter, [ScoringInput(x, y)], anchor_offset=-4, layers=[3, 5])[0]
    for name in ("semgrad", "exgrad", "nll", "mean_entropy"):
        assert getattr(step4, name) == pytest.approx(getattr(full, name), rel=1e-5), name


def test_recorder_refuses_what_is_not_one_prompt_then_one_token_per_step():
    rec = ResidualRecorder(layer=1, keep_from=3)
    rec.add(torch.zeros(1, 5, 4))  # prefill of 5: keeps positions 3, 4
    rec.add(torch.ones(1, 1, 4))
    assert rec.residuals(fed=6, length=3) is not None
    assert rec.residuals(fed=6, length=3).shape == (1, 3, 4)  # type: ignore[union-attr]
    assert rec.residuals(fed=7, length=3) is None  # a position it did not see (assisted decoding)
    assert rec.residuals(fed=6, length=4) is None  # asks for more than was recorded
    beams = ResidualRecorder(layer=1, keep_from=0)
    beams.add(torch.zeros(2, 5, 4))
    assert beams.residuals(fed=5, length=1) is None


def test_residuals_that_do_not_fit_the_suffix_are_refused():
    model, tok = tiny_chat_model("llama", tie_word_embeddings=False)
    scorer = SemGradScorer(model, tok, profile=ModelProfile(anchor_offset=-2, layers=[2, 3]))
    x = scorer.prompt_ids(CHAT)
    example = ScoringInput(x, [5, 6, scorer.eos_token_ids[0]])
    with torch.no_grad():
        cache = model(torch.tensor([x]), use_cache=True).past_key_values
    assert crop_cache(cache, len(x) - 2)
    wrong = torch.zeros(1, 3, model.config.hidden_size)  # the suffix has 2 + 3 - 1 = 4 positions
    with pytest.raises(ModelError, match="suffix has 4 positions"):
        score_ids(
            scorer.adapter, [example], anchor_offset=-2, layers=[2, 3], prefix_cache=cache, residuals=wrong
        )
    with pytest.raises(ModelError, match="need a prefix cache"):
        score_ids(scorer.adapter, [example], anchor_offset=-2, layers=[2, 3], residuals=wrong)


def test_closing_the_last_scorer_restores_the_layers_forward():
    model, tok = tiny_chat_model("qwen2")
    scorer = SemGradScorer(model, tok, profile=ModelProfile(anchor_offset=-2, layers=[2, 3]))
    layers = scorer.adapter.layers
    with scorer.adapter.hooked():  # wrapped only while a pass needs it
        assert all("forward" in vars(layer) for layer in layers)
    assert not any("forward" in vars(layer) for layer in layers)
    with scorer.adapter.hooked():
        scorer.close()  # the last scorer going removes them even mid-block
        assert not any("forward" in vars(layer) for layer in layers)
    assert not any("forward" in vars(layer) for layer in layers)
    assert model(torch.tensor([[1, 2, 3]])).logits.shape[1] == 3


@pytest.mark.parametrize("chunk", [7, 1000])
def test_exgrad_chunks_that_do_not_divide_the_vocabulary_match_the_reference(chunk):
    model, tok = tiny_chat_model("qwen2", tie_word_embeddings=False)
    profile = ModelProfile(anchor_offset=-2, layers=[2, 3])
    scorer = SemGradScorer(model, tok, profile=profile, vocab_chunk=chunk)
    assert model.config.vocab_size % chunk != 0
    pairs = [(CHAT, "Carbon dioxide."), ("Why?", "Because the leaves need it to make sugar.")]
    for (chat, answer), r in zip(pairs, scorer.score_batch(pairs), strict=True):
        x, y = scorer.prompt_ids(chat), scorer.answer_ids(chat, answer)
        assert_close(r, reference_scores(model, x, y, -2, [2, 3]))


def _count_output_products(monkeypatch, scorer: SemGradScorer) -> dict[str, int]:
    """Counts calls of the output projection's product (the lm_head module's and the fast path's)."""
    weight = scorer.adapter.output_weight
    calls = {"n": 0}
    linear = torch.nn.functional.linear

    def counting(x, w, *rest):
        if w.data_ptr() == weight.data_ptr() and w.shape == weight.shape:
            calls["n"] += 1
        return linear(x, w, *rest)

    monkeypatch.setattr(torch.nn.functional, "linear", counting)
    return calls


@pytest.mark.parametrize("arch,tie", [("llama", False), ("gemma2", False), ("qwen3", True)])
def test_generate_scores_from_generations_own_logits(monkeypatch, arch, tie):
    # gemma2: the recorded logits are raw (before soft-capping), as the fast path's own product.
    model, tok = tiny_chat_model(arch, tie_word_embeddings=tie, num_hidden_layers=6)
    profile = ModelProfile(anchor_offset=-2, layers=[3, 4, 5])
    scorer = SemGradScorer(model, tok, profile=profile, model_id=arch)
    x = scorer.prompt_ids(CHAT)
    y, made = _greedy_ids(scorer, x, 10)
    products = _count_output_products(monkeypatch, scorer)
    _, r = scorer.generate(CHAT, max_new_tokens=10)
    # One product per generation step; scoring adds none (it reuses them; exgrad is G^T H).
    assert products["n"] == made
    assert_close(r, reference_scores(model, x, y, profile.anchor_offset, profile.layers))


def test_an_answer_longer_than_the_recorded_logits_recomputes_the_rest_and_matches_reference(monkeypatch):
    model, tok = tiny_chat_model("qwen2", tie_word_embeddings=False, num_hidden_layers=6, seed=3)
    V = model.get_output_embeddings().weight.shape[0]
    profile = ModelProfile(anchor_offset=-3, layers=[2, 5])
    # Logits of 3 steps are kept; the answer is processed in chunks of 3 positions.
    scorer = SemGradScorer(model, tok, profile=profile, logit_chunk=3 * V)
    x = scorer.prompt_ids(CHAT)
    y, _ = _greedy_ids(scorer, x, 10)
    assert len(y) > 3
    _, r = scorer.generate(CHAT, max_new_tokens=10)
    assert_close(r, reference_scores(model, x, y, profile.anchor_offset, profile.layers))


@pytest.mark.parametrize("rows", [1, 2, 5])
def test_logits_given_for_the_first_answer_steps_give_the_same_scores(rows):
    model, tok = tiny_chat_model("llama", tie_word_embeddings=False, seed=4)
    scorer = SemGradScorer(model, tok, profile=ModelProfile(anchor_offset=-2, layers=[2, 3]))
    x = scorer.prompt_ids(CHAT)
    y = scorer.answer_ids(CHAT, "Carbon dioxide, mostly.")
    with torch.no_grad():
        raw = model(torch.tensor([x + y[:-1]])).logits[:, len(x) - 1 : len(x) - 1 + rows]
    example = ScoringInput(x, y)
    plain = score_ids(scorer.adapter, [example], anchor_offset=-2, layers=[2, 3])[0]
    # A chunk of 2 positions: the given rows end inside a chunk too (rows=5), and after it (rows=1).
    given = score_ids(
        scorer.adapter, [example], anchor_offset=-2, layers=[2, 3], logits=raw, logit_chunk=2 * raw.shape[-1]
    )[0]
    for name in ("semgrad", "exgrad", "nll", "mean_entropy"):
        assert getattr(given, name) == pytest.approx(getattr(plain, name), rel=1e-5), name
    with pytest.raises(ModelError, match="logits of shape"):
        score_ids(scorer.adapter, [example], anchor_offset=-2, layers=[2, 3], logits=raw[..., :-1])


def test_recorded_logits_are_refused_unless_one_position_ran_per_step():
    rec = ResidualRecorder(layer=1, keep_from=0, logit_rows=4)
    rec.add_logits(torch.zeros(1, 5, 7))  # prefill without logits_to_keep: its last position
    rec.add_logits(torch.ones(1, 1, 7))
    got = rec.logits(steps=2, length=9)
    assert got is not None and got.shape == (1, 2, 7) and got[0, 1].eq(1).all() and got[0, 0].eq(0).all()
    assert rec.logits(steps=3, length=9) is None  # a step it did not see
    rec.add_logits(torch.ones(1, 2, 7))  # assisted decoding: two positions in one step
    assert rec.logits(steps=3, length=9) is None
    beams = ResidualRecorder(layer=1, keep_from=0, logit_rows=4)
    beams.add_logits(torch.zeros(2, 1, 7))
    assert beams.logits(steps=1, length=1) is None


def test_generation_calls_two_hooks_per_step_not_one_per_layer():
    model, tok = tiny_chat_model("qwen2", num_hidden_layers=6)
    scorer = SemGradScorer(model, tok, profile=ModelProfile(anchor_offset=-2, layers=[3, 4, 5]))
    layers = scorer.adapter.layers
    head = model.get_output_embeddings()
    with scorer.adapter.recording(3, keep_from=0, logit_rows=2):
        assert [len(layer._forward_pre_hooks) for layer in layers] == [0, 0, 0, 1, 0, 0]
        assert len(head._forward_hooks) == 1
        assert not any("forward" in vars(layer) for layer in layers)  # no step-4 wrappers
        with scorer.adapter.recording(3, keep_from=0):  # another thread's recording shares them
            assert len(layers[3]._forward_pre_hooks) == 1 and len(head._forward_hooks) == 1
        assert len(layers[3]._forward_pre_hooks) == 1 and len(head._forward_hooks) == 1
    assert sum(len(layer._forward_pre_hooks) for layer in layers) == 0 and not head._forward_hooks
