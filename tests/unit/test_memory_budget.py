"""Bounded scoring memory: the estimate, the budget refused before scoring, the 413, and truncation flags."""

from __future__ import annotations

import httpx
import pytest

from semgrad_guard import SemGradScorer
from semgrad_guard.errors import ConfigurationError, InputTooLargeError, RequestTooLargeError
from semgrad_guard.scoring.fastpath import parse_bytes
from semgrad_guard.serve import create_app
from semgrad_guard.testing import tiny_chat_model

CHAT = [{"role": "user", "content": "Which gas do plants take in during photosynthesis?"}]


@pytest.fixture(scope="module")
def parts():
    return tiny_chat_model("llama", tie_word_embeddings=False)


def scorer_with(parts, **kwargs):
    model, tok = parts
    return SemGradScorer(model, tok, model_id="tiny-llama", **kwargs)


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (4096, 4096),
        ("4GB", 4 * 10**9),
        ("4GiB", 4 * 2**30),
        ("512 MiB", 512 * 2**20),
        ("1.5g", 1_500_000_000),
    ],
)
def test_memory_sizes_parse_in_decimal_and_binary_units(value, want):
    assert parse_bytes(value) == want


@pytest.mark.parametrize("value", ["lots", "4 GW", "-1GB", "0", 0, True, ""])
def test_bad_memory_sizes_are_configuration_errors_saying_the_form(parts, value):
    with pytest.raises(ConfigurationError, match="max_memory must be"):
        scorer_with(parts, max_memory=value)


def test_the_vocabulary_term_of_the_estimate_does_not_grow_with_the_answer(parts):
    model, tok = parts
    small, big = scorer_with(parts, logit_chunk=2**12), scorer_with(parts, logit_chunk=2**14)
    V = model.get_output_embeddings().weight.shape[0]
    lengths = [2**14 // V + 1, 1000, 4000]  # every one over both chunks
    gaps = [big.estimate_memory(20, n) - small.estimate_memory(20, n) for n in lengths]
    assert gaps[0] > 0 and len(set(gaps)) == 1  # the chunk's cost, the same at every length
    e = [small.estimate_memory(20, n) for n in (1000, 2000, 4000)]
    assert e[0] < e[1] < e[2] and small.estimate_memory(20, 10, batch=4) > small.estimate_memory(20, 10)


def test_a_request_over_the_budget_is_refused_before_scoring(parts, monkeypatch):
    s = scorer_with(parts)
    need = s.estimate_memory(len(s.prompt_ids(CHAT)), len(s.answer_ids(CHAT, "Carbon dioxide.")))
    tight = scorer_with(parts, max_memory=need - 1)

    def never(*a, **k):
        raise AssertionError("scored despite the budget")

    monkeypatch.setattr(tight, "score_token_ids", never)
    with pytest.raises(InputTooLargeError, match=r"over the memory budget of .* raise max_memory") as err:
        tight.score(CHAT, "Carbon dioxide.")
    assert isinstance(err.value, RequestTooLargeError)
    assert scorer_with(parts, max_memory=need).score(CHAT, "Carbon dioxide.").answer_tokens > 0


def test_the_budget_bounds_the_answer_length_generation_may_reach(parts):
    s = scorer_with(parts)
    x = len(s.prompt_ids(CHAT))
    budget = s.estimate_memory(x, 6)
    tight = scorer_with(parts, max_memory=budget)
    assert tight.max_answer_tokens(x) == 6
    assert scorer_with(parts, max_memory=None).max_answer_tokens(x) == s.context_window - x
    _, r = tight.generate(CHAT, max_new_tokens=50, min_new_tokens=50)
    assert r.answer_tokens == 6 and "truncated" in r.flags


def test_an_answer_cut_at_max_new_tokens_is_flagged_truncated(parts):
    s = scorer_with(parts)
    _, r = s.generate(CHAT, max_new_tokens=5, min_new_tokens=5)
    assert r.answer_tokens == 5 and r.flags == ["truncated"]
    chunks = list(s.stream(CHAT, max_new_tokens=5, min_new_tokens=5))
    assert chunks[-1].result.flags == ["truncated"]
    eos = s.eos_token_ids[0]
    # An answer that ends with end-of-turn is not truncated (forced: the random model rarely stops).
    _, done = s.generate(CHAT, max_new_tokens=5, forced_eos_token_id=eos)
    assert done.answer_tokens == 5 and "truncated" not in done.flags


async def test_the_service_answers_413_for_an_answer_over_the_budget(parts):
    s = scorer_with(parts, max_memory=scorer_with(parts).estimate_memory(40, 8))
    app = create_app(s)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post("/v1/score", json={"messages": CHAT, "answer": "carbon dioxide " * 60})
        ok = await c.post("/v1/score", json={"messages": CHAT, "answer": "CO2."})
    assert r.status_code == 413, r.text
    assert r.json()["type"] == "InputTooLargeError" and "memory budget" in r.json()["message"]
    assert ok.status_code == 200
