"""SemGradLLM's stream modes: observe, gate (judged sentences, a failing one ends the stream and
generation), hold; per-call override; a consumer that stops reading stops generation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage
from llama_index.llms.semgrad import SemGradLLM
from transformers import LogitsProcessorList

from semgrad_guard import PAYLOAD_KEY, ConfigurationError, ScorePayload
from semgrad_guard.scoring import streaming
from semgrad_guard.testing.streams import FailOn, ForcedAnswer, stub_score_span

ANSWER = "One. Two. Three. Four."


@pytest.fixture(autouse=True)
def _stub_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streaming, "score_span", stub_score_span)


def llm(tiny: Any, text: str = ANSWER, delay: float = 0.0, **kw: Any) -> tuple[SemGradLLM, ForcedAnswer]:
    force = ForcedAnswer(tiny, text, delay)
    out = SemGradLLM(
        tiny, max_new_tokens=40, generate_kwargs={"logits_processor": LogitsProcessorList([force])}, **kw
    )
    return out, force


def test_gate_releases_judged_sentences_and_ends_at_a_failing_one(tiny: Any) -> None:
    model, force = llm(tiny, stream_mode="gate", span_policy=FailOn("Three"))
    chunks = list(model.stream_complete("Count."))
    assert [c.delta for c in chunks] == ["One.", " Two."]
    final = chunks[-1]
    assert final.text == "One. Two."  # what was shown; the payload says why it ended
    payload = ScorePayload.read(final.additional_kwargs)
    extra = payload.model_extra
    assert extra["stream_mode"] == "gate" and extra["stopped"]["text"] == "Three."
    assert extra["stopped"]["action"] == "abstain" and extra["stopped"]["generation_stopped"]
    assert "truncated" in payload.result.flags and force.steps < 9


def test_hold_and_the_per_call_override(tiny: Any) -> None:
    model, _ = llm(tiny, stream_mode="hold")
    (only,) = list(model.stream_chat([ChatMessage(role="user", content="Count.")]))
    assert only.delta == ANSWER == only.message.content
    assert ScorePayload.read(only.additional_kwargs).model_extra["stream_mode"] == "hold"
    model, _ = llm(tiny)  # observe by default
    chunks = list(model.stream_complete("Count.", stream_mode="hold"))
    assert len(chunks) == 1 and PAYLOAD_KEY in chunks[0].additional_kwargs
    model, _ = llm(tiny)
    assert len(list(model.stream_complete("Count."))) > 2


async def test_async_gate_equals_sync_gate(tiny: Any) -> None:
    model, _ = llm(tiny, stream_mode="gate", span_policy=FailOn("Three"))
    got = [c async for c in await model.astream_complete("Count.")]
    model, _ = llm(tiny, stream_mode="gate", span_policy=FailOn("Three"))
    want = list(model.stream_complete("Count."))
    assert [c.delta for c in got] == [c.delta for c in want]
    assert got[-1].additional_kwargs == want[-1].additional_kwargs


def test_a_bad_mode_is_refused(tiny: Any) -> None:
    with pytest.raises(ConfigurationError, match="got 'live'"):
        SemGradLLM(tiny, stream_mode="live")
    model, _ = llm(tiny)
    with pytest.raises(ConfigurationError, match="got 'live'"):
        list(model.stream_complete("Count.", stream_mode="live"))


def test_a_consumer_that_stops_reading_stops_generation(tiny: Any) -> None:
    model, force = llm(tiny, " ".join(["word"] * 60), delay=0.01)
    model.max_new_tokens = 60
    gen = model.stream_complete("Count.")
    next(gen)
    gen.close()
    _wait_for_workers()
    assert force.steps < 30, f"generation ran {force.steps} of 60 steps after the consumer left"


async def test_a_cancelled_async_consumer_stops_generation(tiny: Any) -> None:
    model, force = llm(tiny, " ".join(["word"] * 60), delay=0.01)
    model.max_new_tokens = 60
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in await model.astream_complete("Count."):
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.to_thread(_wait_for_workers)
    assert force.steps < 30, f"generation ran {force.steps} of 60 steps after the consumer left"


def _wait_for_workers() -> None:
    import threading

    for t in threading.enumerate():
        if t.name == "semgrad-stream":
            t.join(timeout=10)


def test_gate_is_refused_on_a_scorer_that_generates_whole_answers() -> None:
    from semgrad_guard import MockScorer

    model = SemGradLLM(MockScorer(lambda m, a: 0.1, answers=[ANSWER]), stream_mode="gate")
    with pytest.raises(ConfigurationError, match="needs a scorer that streams tokens"):
        list(model.stream_complete("Count."))
