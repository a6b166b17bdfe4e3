"""The fast path gives the reference implementation's numbers (relative difference <= 1e-5, float32)."""

from __future__ import annotations

import pytest
import torch
from reference_semgrad import reference_scores

from semgrad_guard import ModelProfile, SemGradScorer
from semgrad_guard.testing import tiny_chat_model

ARCHS = ["llama", "qwen2", "qwen3", "gemma2", "gemma3", "mistral", "phi3"]
CHAT = [{"role": "user", "content": "Which gas do plants take in during photosynthesis?"}]
ANSWERS = [
    "Carbon dioxide.",
    "",
    "   ",
    "Oxygen, I think, but nitrogen is also absorbed in large amounts by most leaves.",
]
FIELDS = ("semgrad", "exgrad", "hybridgrad", "nll", "mean_nll", "mean_entropy")


def assert_close(result, ref, rtol=1e-5):
    for name in FIELDS:
        got, want = getattr(result, name), ref[name]
        assert want != 0.0, name
        assert abs(got - want) <= rtol * abs(want), f"{name}: fast {got!r} vs reference {want!r}"


@pytest.fixture(
    scope="module",
    params=[(a, tie) for a in ARCHS for tie in (True, False)],
    ids=lambda p: f"{p[0]}-{'tied' if p[1] else 'untied'}",
)
def scorer(request):
    arch, tie = request.param
    model, tok = tiny_chat_model(arch, tie_word_embeddings=tie)
    assert model.config.tie_word_embeddings is tie
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) is tie
    return SemGradScorer(model, tok, model_id=f"tiny-{arch}")


def test_single_answers_match_reference(scorer):
    for answer in ANSWERS[:2]:
        r = scorer.score(CHAT, answer)
        x = scorer.prompt_ids(CHAT)
        y = scorer.answer_ids(CHAT, answer)
        assert r.answer_tokens == len(y) and r.prompt_tokens == len(x)
        assert_close(
            r, reference_scores(scorer.model, x, y, scorer.profile.anchor_offset, scorer.profile.layers)
        )


def test_batch_of_different_lengths_matches_reference(scorer):
    chats = [
        CHAT,
        [{"role": "user", "content": "Name the largest planet in the solar system, please."}],
        "Why?",
    ]
    pairs = [(chats[i % 3], a) for i, a in enumerate(ANSWERS)]
    results = scorer.score_batch(pairs)
    assert len({r.answer_tokens for r in results}) > 1 and len({r.prompt_tokens for r in results}) > 1
    for (chat, answer), r in zip(pairs, results, strict=True):
        x, y = scorer.prompt_ids(chat), scorer.answer_ids(chat, answer)
        assert_close(
            r, reference_scores(scorer.model, x, y, scorer.profile.anchor_offset, scorer.profile.layers)
        )


def test_generate_scores_exactly_the_generated_ids(scorer):
    answer, r = scorer.generate(CHAT, max_new_tokens=12)
    x = scorer.prompt_ids(CHAT)
    with torch.no_grad():
        out = scorer.model.generate(
            input_ids=torch.tensor([x]),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=scorer.eos_token_ids,
            pad_token_id=scorer.eos_token_ids[0],
        )
    y = out[0, len(x) :].tolist()
    eos = [i for i, t in enumerate(y) if t in scorer.eos_token_ids]
    y = y[: eos[0] + 1] if eos else y
    assert r.answer_tokens == len(y)
    assert_close(r, reference_scores(scorer.model, x, y, scorer.profile.anchor_offset, scorer.profile.layers))


@pytest.mark.parametrize("offset,layers", [(-1, [3]), (-2, [0, 1, 2, 3]), (-6, [1, 3])])
def test_other_anchors_and_layer_sets_match_reference(offset, layers):
    model, tok = tiny_chat_model("qwen2", tie_word_embeddings=False, seed=3)
    scorer = SemGradScorer(model, tok, profile=ModelProfile(anchor_offset=offset, layers=layers))
    answer = "The mitochondria."
    r = scorer.score(CHAT, answer)
    assert (r.anchor_offset, r.layers) == (offset, layers)
    ref = reference_scores(model, scorer.prompt_ids(CHAT), scorer.answer_ids(CHAT, answer), offset, layers)
    assert_close(r, ref)


def _template_ids(tok, chat, *, add_generation_prompt):
    out = tok.apply_chat_template(chat, add_generation_prompt=add_generation_prompt, tokenize=True)
    ids = out["input_ids"] if hasattr(out, "keys") else out
    return list(ids[0] if ids and isinstance(ids[0], list) else ids)


def test_token_ids_match_the_chat_template_tokenised_on_its_own(scorer):
    # The reference above takes x and y from the scorer; here they come from the tokenizer alone.
    tok = scorer.tokenizer
    for answer in ["Carbon dioxide.", "Oxygen, I think, but nitrogen is also absorbed."]:
        x = _template_ids(tok, CHAT, add_generation_prompt=True)
        full = _template_ids(
            tok, [*CHAT, {"role": "assistant", "content": answer}], add_generation_prompt=False
        )
        assert scorer.prompt_ids(CHAT) == x
        y = scorer.answer_ids(CHAT, answer)
        if full[: len(x)] == x:
            rest = full[len(x) :]
            cut = next(i for i, t in enumerate(rest) if t in scorer.eos_token_ids)
            assert y == rest[: cut + 1]
        else:  # the template rewrites the history: the answer alone, then end of turn
            assert y == tok(answer, add_special_tokens=False)["input_ids"] + [scorer.eos_token_ids[0]]


def test_chunked_logits_match_reference(scorer):
    # A chunk of two vocabularies' worth of logits: the answer's positions go two at a time, and
    # exgrad is recomputed one narrow vocabulary slice at a time (the long-answer path).
    V = scorer.model.get_output_embeddings().weight.shape[0]
    chunked = SemGradScorer(scorer.model, scorer.tokenizer, model_id=scorer.model_id, logit_chunk=2 * V)
    chats = [CHAT, "Why?"]
    pairs = [(chats[i % 2], a) for i, a in enumerate(ANSWERS)]
    results = chunked.score_batch(pairs)
    assert max(r.answer_tokens for r in results) > 4  # several position chunks
    for (chat, answer), r in zip(pairs, results, strict=True):
        x, y = scorer.prompt_ids(chat), scorer.answer_ids(chat, answer)
        assert_close(
            r, reference_scores(scorer.model, x, y, scorer.profile.anchor_offset, scorer.profile.layers)
        )
    _, r = chunked.generate(CHAT, max_new_tokens=12)  # from generation's cache, chunked too
    _, want = scorer.generate(CHAT, max_new_tokens=12)
    assert_close(r, want.model_dump())
