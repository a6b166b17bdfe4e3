"""SemGradLLM: generate-and-score in one pass, scores in additional_kwargs, streaming, async."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.llms.semgrad import SemGradLLM, score_from_response

from semgrad_guard import PAYLOAD_KEY, ConfigurationError, MockScorer, ScorePayload, ScoreResult

QUESTION = [
    ChatMessage(role=MessageRole.SYSTEM, content="Answer briefly."),
    ChatMessage(role="user", content="Why is the sky blue?"),
]
CHAT = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Why is the sky blue?"}]


def test_chat_scores_exactly_what_the_scorer_generates(tiny: Any) -> None:
    llm = SemGradLLM(tiny, max_new_tokens=6)
    response = llm.chat(QUESTION)
    answer, expected = tiny.generate(CHAT, max_new_tokens=6)
    assert response.message.content == answer
    assert response.message.role == MessageRole.ASSISTANT
    got = score_from_response(response)
    assert isinstance(response.additional_kwargs[PAYLOAD_KEY], dict)  # JSON-safe, Cleanlab's convention
    payload = ScorePayload.read(response.additional_kwargs)  # the one schema every adapter writes
    assert payload is not None and (payload.version, payload.source, payload.result) == (1, "llm", expected)
    assert got == expected
    assert got.answer_tokens <= 6


def test_complete_is_one_user_message(tiny: Any) -> None:
    llm = SemGradLLM(tiny, max_new_tokens=5)
    response = llm.complete("Name a primary colour.")
    answer, expected = tiny.generate(
        [{"role": "user", "content": "Name a primary colour."}], max_new_tokens=5
    )
    assert response.text == answer
    assert score_from_response(response) == expected


def test_metadata_reports_the_models_context_window(tiny: Any) -> None:
    llm = SemGradLLM(tiny, max_new_tokens=33)
    meta = llm.metadata
    assert meta.context_window == tiny.context_window
    assert meta.num_output == 33
    assert meta.is_chat_model is True
    assert meta.model_name == tiny.model_id


def test_stream_chat_puts_the_score_on_the_last_chunk_only(tiny: Any) -> None:
    llm = SemGradLLM(tiny, max_new_tokens=8)
    chunks = list(llm.stream_chat(QUESTION))
    assert len(chunks) >= 2
    assert all(PAYLOAD_KEY not in c.additional_kwargs for c in chunks[:-1])
    final = chunks[-1]
    assert "".join(c.delta or "" for c in chunks) == final.message.content
    # Greedy decoding: the streamed answer and its score are the non-streamed ones.
    plain = llm.chat(QUESTION)
    assert final.message.content == plain.message.content
    assert score_from_response(final) == score_from_response(plain)


async def test_astream_complete_matches_complete(tiny: Any) -> None:
    llm = SemGradLLM(tiny, max_new_tokens=6)
    chunks = [c async for c in await llm.astream_complete("Say something.")]
    plain = await llm.acomplete("Say something.")
    assert chunks[-1].text == plain.text
    assert "".join(c.delta or "" for c in chunks) == plain.text
    assert score_from_response(chunks[-1]) == score_from_response(plain)
    assert all(score_from_response(c) is None for c in chunks[:-1])


def test_stream_error_in_generation_is_raised_to_the_consumer(tiny: Any) -> None:
    llm = SemGradLLM(tiny, max_new_tokens=4)
    huge = "word " * (tiny.context_window + 10)
    with pytest.raises(Exception, match="exceeds the model's context"):
        list(llm.stream_complete(huge))


def test_sampling_settings_reach_the_scorer() -> None:
    seen: list[dict[str, Any]] = []

    def answer(messages: Any, **kwargs: Any) -> str:
        seen.append(kwargs)
        return "ok"

    llm = SemGradLLM(
        MockScorer(lambda m, a: 0.1, answers=answer), temperature=0.7, top_p=0.9, seed=3, max_new_tokens=9
    )
    llm.complete("hi")
    llm.complete("hi", temperature=0.0, max_new_tokens=2)
    assert seen[0] == {"max_new_tokens": 9, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "seed": 3}
    assert seen[1] == {"max_new_tokens": 2, "do_sample": False, "seed": 3}


def test_generate_kwargs_reach_the_scorer_and_per_call_values_win() -> None:
    seen: list[dict[str, Any]] = []

    def answer(messages: Any, **kwargs: Any) -> str:
        seen.append(kwargs)
        return "ok"

    llm = SemGradLLM(
        MockScorer(lambda m, a: 0.1, answers=answer),
        max_new_tokens=9,
        generate_kwargs={"repetition_penalty": 1.3, "no_repeat_ngram_size": 3},
    )
    llm.complete("hi")
    llm.chat([ChatMessage(role="user", content="hi")], repetition_penalty=1.0, formatted=True)
    assert seen[0] == {
        "max_new_tokens": 9,
        "do_sample": False,
        "repetition_penalty": 1.3,
        "no_repeat_ngram_size": 3,
    }
    # Per-call wins; keywords LlamaIndex adds on its own (formatted, tools) never reach generate().
    assert seen[1] == {
        "max_new_tokens": 9,
        "do_sample": False,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 3,
    }


def test_generate_kwargs_change_what_the_model_generates(tiny: Any) -> None:
    import torch

    plain = SemGradLLM(tiny, max_new_tokens=8).complete("Tell me a story.")
    prompt = torch.tensor([tiny.prompt_ids("Tell me a story.")])
    with torch.no_grad():
        first = int(tiny.model(prompt).logits[0, -1].argmax())  # the greedy answer's first token
    # Forbidding that token must change the answer, and its score with it.
    changed = SemGradLLM(tiny, max_new_tokens=8, generate_kwargs={"suppress_tokens": [first]}).complete(
        "Tell me a story."
    )
    assert changed.text != plain.text
    assert score_from_response(changed) != score_from_response(plain)


def test_a_scorer_that_cannot_generate_is_refused() -> None:
    class ScoreOnly:
        def score(self, messages: Any, answer: str) -> ScoreResult:  # pragma: no cover - never called
            raise AssertionError

    with pytest.raises(ConfigurationError, match="GeneratingScorer"):
        SemGradLLM(ScoreOnly())


class _SlowScorer(MockScorer):
    """generate() takes a while, as a real backward pass does; records the threads it ran on."""

    def __init__(self, delay: float) -> None:
        super().__init__(
            lambda m, a: float(len(a)) / 100, answers=lambda messages, **kw: messages[-1]["content"][::-1]
        )
        self.delay = delay
        self.threads: set[int] = set()

    def generate(self, messages: Any, **kwargs: Any) -> tuple[str, ScoreResult]:
        self.threads.add(threading.get_ident())
        time.sleep(self.delay)
        return super().generate(messages, **kwargs)


async def test_achat_does_not_block_the_event_loop() -> None:
    scorer = _SlowScorer(0.3)
    llm = SemGradLLM(scorer)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    response = await llm.achat([ChatMessage(role="user", content="abc")])
    task.cancel()
    assert response.message.content == "cba"
    assert ticks >= 10, "the event loop stalled while the answer was generated and scored"
    assert threading.get_ident() not in scorer.threads


async def test_parallel_async_calls_give_the_sequential_answers_and_scores(tiny: Any) -> None:
    llm = SemGradLLM(tiny, max_new_tokens=5)
    prompts = ["What is rain?", "Name a planet.", "What is 2 + 2?", "Who wrote Hamlet?"]
    sequential = [llm.complete(p) for p in prompts]
    parallel = await asyncio.gather(*(llm.acomplete(p) for p in prompts))
    assert [r.text for r in parallel] == [r.text for r in sequential]
    for a, b in zip(parallel, sequential, strict=True):
        ra, rb = score_from_response(a), score_from_response(b)
        assert ra is not None and rb is not None
        assert ra.scores() == pytest.approx(rb.scores(), rel=1e-6)


def test_generation_precedence_is_defaults_then_call_then_guard_overrides() -> None:
    # The same order as ChatSemGrad's (semgrad_guard.generation): a retry can resample a greedy call.
    from semgrad_guard import generation_overrides

    seen: list[dict[str, Any]] = []

    def answer(messages: Any, **kwargs: Any) -> str:
        seen.append(kwargs)
        return "ok"

    llm = SemGradLLM(MockScorer(lambda m, a: 0.1, answers=answer), temperature=0.2, seed=3, max_new_tokens=5)
    llm.complete("hi", temperature=0.0, seed=4)
    with generation_overrides(do_sample=True, temperature=0.9, seed=7):
        llm.complete("hi", temperature=0.0, seed=4)
    assert seen == [
        {"max_new_tokens": 5, "do_sample": False, "seed": 4},
        {"max_new_tokens": 5, "do_sample": True, "temperature": 0.9, "seed": 7},
    ]


def test_unknown_override_settings_are_refused() -> None:
    from semgrad_guard import generation_overrides

    with pytest.raises(ConfigurationError, match="unknown generation settings \\['beam_width'\\]"):
        generation_overrides(beam_width=4).__enter__()
