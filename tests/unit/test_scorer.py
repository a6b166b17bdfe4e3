"""SemGradScorer behaviour: errors, safety, concurrency, determinism."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from semgrad_guard import (
    ChatTemplateError,
    ContextLengthError,
    ModelProfile,
    NonFiniteGradientError,
    ProfileError,
    ScoringError,
    SemGradScorer,
    UnknownRoleError,
)
from semgrad_guard.testing import tiny_chat_model

Q = "What is the chemical symbol for gold?"


@pytest.fixture(scope="module")
def tiny():
    return tiny_chat_model("llama", tie_word_embeddings=False)


@pytest.fixture(scope="module")
def scorer(tiny):
    model, tok = tiny
    return SemGradScorer(model, tok, model_id="tiny-llama")


def test_string_prompt_is_one_user_message(scorer):
    assert scorer.score(Q, "Au.") == scorer.score([{"role": "user", "content": Q}], "Au.")


def test_empty_and_whitespace_answers_score_the_end_of_turn_token(scorer):
    for answer in ("", "   "):
        r = scorer.score(Q, answer)
        assert r.answer_tokens >= 1
        assert scorer.answer_ids(Q, answer)[-1] in scorer.eos_token_ids
        assert r.semgrad > 0 and r.exgrad > 0


def test_results_are_deterministic_and_in_input_order(scorer):
    answers = ["Au, from the Latin aurum.", "Ag.", "It is Au."]
    batch = scorer.score_batch([(Q, a) for a in answers])
    single = [scorer.score(Q, a) for a in answers]
    for b, s in zip(batch, single, strict=True):
        assert b.answer_tokens == s.answer_tokens
        assert b.semgrad == pytest.approx(s.semgrad, rel=1e-5)
    assert scorer.score(Q, answers[0]) == single[0]


def test_parameters_requires_grad_and_grads_are_untouched(tiny, scorer):
    model, _ = tiny
    before = {n: (p.detach().clone(), p.requires_grad, p.grad) for n, p in model.named_parameters()}
    scorer.score(Q, "Au.")
    scorer.generate(Q, max_new_tokens=4)
    for n, p in model.named_parameters():
        value, req, grad = before[n]
        assert torch.equal(p.detach(), value), n
        assert p.requires_grad == req and p.grad is None and grad is None, n


def test_frozen_model_still_scores(tiny):
    model, tok = tiny_chat_model("qwen2", seed=1)
    for p in model.parameters():
        p.requires_grad_(False)
    r = SemGradScorer(model, tok).score(Q, "Au.")
    assert r.semgrad > 0 and all(not p.requires_grad for p in model.parameters())


def test_threads_give_the_same_results_as_sequential_calls(scorer):
    pairs = [(Q, f"Answer number {i}: Au.") for i in range(8)]
    sequential = [scorer.score(*p) for p in pairs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda p: scorer.score(*p), pairs))
    assert parallel == sequential


async def test_ascore_does_not_block_the_event_loop(scorer, monkeypatch):
    real = scorer.score

    def slow(messages, answer):
        time.sleep(0.5)
        return real(messages, answer)

    monkeypatch.setattr(scorer, "score", slow)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    task = asyncio.create_task(ticker())
    r = await scorer.ascore(Q, "Au.")
    task.cancel()
    assert r.answer_tokens > 0
    assert ticks >= 10  # the loop ran while scoring slept in its worker thread


async def test_async_batch_matches_sync(scorer):
    pairs = [(Q, "Au."), (Q, "Gold is Au.")]
    assert await scorer.ascore_batch(pairs) == scorer.score_batch(pairs)


def test_generate_returns_text_and_scores(scorer):
    answer, r = scorer.generate(Q, max_new_tokens=6)
    assert isinstance(answer, str) and 1 <= r.answer_tokens <= 6
    sampled = [scorer.generate(Q, max_new_tokens=6, do_sample=True, seed=7)[0] for _ in range(2)]
    assert sampled[0] == sampled[1]  # seeded sampling is reproducible


def test_no_chat_template_is_a_clear_error(tiny):
    model, tok = tiny
    saved = tok.chat_template
    try:
        tok.chat_template = None
        with pytest.raises(ChatTemplateError, match="chat_template="):
            SemGradScorer(model, tok)
        # passing one fixes it
        assert SemGradScorer(model, tok, chat_template=saved).score(Q, "Au.").semgrad > 0
    finally:
        tok.chat_template = saved


def test_template_rejecting_a_role_is_a_chat_template_error():
    model, tok = tiny_chat_model("gemma2")
    scorer = SemGradScorer(model, tok)
    with pytest.raises(ChatTemplateError, match="System role not supported"):
        scorer.score([{"role": "system", "content": "Be brief."}, {"role": "user", "content": Q}], "Au.")


def test_unknown_role_and_malformed_messages(scorer):
    with pytest.raises(UnknownRoleError, match="'wizard'"):
        scorer.score([{"role": "wizard", "content": Q}], "Au.")
    with pytest.raises(ScoringError, match="role"):
        scorer.score([{"content": Q}], "Au.")
    with pytest.raises(ScoringError, match="empty"):
        scorer.score([], "Au.")


def test_prompt_longer_than_context_names_both_lengths(tiny):
    model, tok = tiny
    scorer = SemGradScorer(model, tok)
    scorer.context_window = 40
    with pytest.raises(ContextLengthError) as info:
        scorer.score("word " * 60, "Au.")
    e = info.value
    assert e.limit == 40 and e.prompt_tokens > 40
    assert str(e.prompt_tokens) in str(e) and "40" in str(e)
    assert isinstance(e, ValueError)


def test_profile_that_does_not_fit_the_model(tiny):
    model, tok = tiny
    with pytest.raises(ProfileError, match=r"\[4, 9\] do not exist"):
        SemGradScorer(model, tok, profile=ModelProfile(anchor_offset=-2, layers=[3, 4, 9]))
    scorer = SemGradScorer(model, tok, profile=ModelProfile(anchor_offset=-500, layers=[3]))
    with pytest.raises(ProfileError, match="before the start"):
        scorer.score(Q, "Au.")
    with pytest.raises(ProfileError):
        SemGradScorer(model, tok, profile={"anchor_offset": 2, "layers": [1]})


def test_non_finite_gradient_is_an_error_not_a_score():
    model, tok = tiny_chat_model("llama", seed=2)
    with torch.no_grad():
        model.model.layers[3].mlp.down_proj.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteGradientError, match="non-finite"):
        SemGradScorer(model, tok).score(Q, "Au.")


def test_default_profile_uses_first_token_of_generation_prompt():
    for arch, expected_first in [
        ("qwen2", "<|im_start|>"),
        ("llama", "<|start_header_id|>"),
        ("gemma2", "<start_of_turn>"),
        ("phi3", "<|assistant|>"),
    ]:
        model, tok = tiny_chat_model(arch)
        scorer = SemGradScorer(model, tok)
        x = scorer.prompt_ids(Q)
        assert scorer.profile.source == "default"
        assert tok.convert_ids_to_tokens(x[len(x) + scorer.profile.anchor_offset]) == expected_first, arch
        assert scorer.profile.layers == [2, 3]


def test_with_profile_shares_the_model(scorer):
    other = scorer.with_profile(ModelProfile(anchor_offset=-1, layers=[3]))
    assert other.model is scorer.model and other.profile.layers == [3]
    assert scorer.profile.layers == [2, 3]
    assert other.score(Q, "Au.").semgrad != scorer.score(Q, "Au.").semgrad
