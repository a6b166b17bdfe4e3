"""SemGradScorer.stream / astream: text as it is generated, then the score of exactly that text."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import LogitsProcessorList

from semgrad_guard import ConfigurationError, ContextLengthError, ModelProfile, SemGradScorer
from semgrad_guard.testing import tiny_chat_model

CHAT = [{"role": "user", "content": "Which gas do plants take in during photosynthesis?"}]
FIELDS = ("semgrad", "exgrad", "hybridgrad", "nll", "mean_nll", "mean_entropy")


@pytest.fixture(scope="module", params=["qwen2", "llama", "gemma2"])
def scorer(request):
    model, tok = tiny_chat_model(request.param, tie_word_embeddings=False, seed=1)
    return SemGradScorer(model, tok, profile=ModelProfile(anchor_offset=-3, layers=[2, 3]))


def test_stream_yields_text_then_one_scored_chunk_equal_to_generate(scorer):
    chunks = list(scorer.stream(CHAT, max_new_tokens=16))
    assert len(chunks) > 2  # streamed piece by piece
    *text_chunks, last = chunks
    assert all(c.result is None for c in text_chunks) and last.result is not None
    assert "".join(c.delta for c in chunks) == last.text
    assert all(a.text + b.delta == b.text for a, b in zip(chunks, chunks[1:], strict=False))
    answer, generated = scorer.generate(CHAT, max_new_tokens=16)
    assert last.text == answer
    for name in FIELDS:
        assert getattr(last.result, name) == getattr(generated, name), name


class _Force:
    """Logits processor making generation produce ``ids`` (sampling is forced, scoring sees the raw model)."""

    def __init__(self, ids: list[int], prompt_len: int) -> None:
        self.ids, self.prompt_len = ids, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_len
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.ids[min(step, len(self.ids) - 1)]] = 0.0
        return forced


@pytest.mark.parametrize("answer", ["Carbon dioxide, mostly.", "CO2"])
def test_streamed_final_score_equals_scoring_the_text(scorer, answer):
    # A random model's text rarely re-tokenises to the ids it generated, so generation is forced
    # to produce the ids of a known answer; score() then sees the same ids from the text alone.
    y = scorer.answer_ids(CHAT, answer)
    force = LogitsProcessorList([_Force(y, len(scorer.prompt_ids(CHAT)))])
    chunks = list(scorer.stream(CHAT, max_new_tokens=32, logits_processor=force))
    last = chunks[-1]
    assert last.text == answer and len(chunks) > 2
    assert last.result is not None and last.result.answer_tokens == len(y)
    again = scorer.score(CHAT, last.text)
    for name in FIELDS:
        got, want = getattr(last.result, name), getattr(again, name)
        assert got == pytest.approx(want, rel=1e-5), f"{name}: streamed {got} vs score() {want}"


def test_astream_matches_stream(scorer):
    async def collect():
        return [c async for c in scorer.astream(CHAT, max_new_tokens=12)]

    async_chunks = asyncio.run(collect())
    sync_chunks = list(scorer.stream(CHAT, max_new_tokens=12))
    assert [c.delta for c in async_chunks] == [c.delta for c in sync_chunks]
    assert async_chunks[-1].result == sync_chunks[-1].result


def test_errors_in_generation_reach_the_consumer(scorer):
    huge = "word " * 5000
    with pytest.raises(ContextLengthError):
        list(scorer.stream(huge))

    async def collect():
        return [c async for c in scorer.astream(huge)]

    with pytest.raises(ContextLengthError):
        asyncio.run(collect())
    with pytest.raises(ConfigurationError, match="streamer"):
        list(scorer.stream(CHAT, streamer=object()))
