"""ChatSemGrad's stream modes: observe, gate (judged sentences, a failing one ends the stream and
generation), hold; per-call override; a consumer that stops reading stops generation."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from langchain_semgrad import ChatSemGrad
from transformers import LogitsProcessorList

from semgrad_guard import ConfigurationError, ScorePayload
from semgrad_guard.scoring import streaming
from semgrad_guard.testing.streams import FailOn, ForcedAnswer, stub_score_span

ANSWER = "One. Two. Three. Four."


@pytest.fixture(autouse=True)
def _stub_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streaming, "score_span", stub_score_span)


def forced(tiny: Any, text: str = ANSWER, delay: float = 0.0) -> tuple[ForcedAnswer, dict[str, Any]]:
    force = ForcedAnswer(tiny, text, delay)
    return force, {"logits_processor": LogitsProcessorList([force])}


def test_gate_releases_judged_sentences_and_ends_at_a_failing_one(tiny: Any) -> None:
    chat = ChatSemGrad(scorer=tiny, max_tokens=40, stream_mode="gate", span_policy=FailOn("Three"))
    force, kw = forced(tiny)
    chunks = list(chat.stream("Count.", **kw))
    assert [c.content for c in chunks] == ["One.", " Two.", ""]
    payload = ScorePayload.read(chunks[-1].response_metadata)
    extra = payload.model_extra
    assert extra["stream_mode"] == "gate" and extra["stopped"]["text"] == "Three."
    assert extra["stopped"]["action"] == "abstain" and extra["stopped"]["generation_stopped"]
    assert "truncated" in payload.result.flags and force.steps < 9
    # invoke(streaming=True) gives what was shown, with the same payload
    chat.streaming = True
    _, kw = forced(tiny)
    message = chat.invoke("Count.", **kw)
    assert message.content == "One. Two." and ScorePayload.read(message.response_metadata) == payload


def test_hold_observe_and_the_per_call_override(tiny: Any) -> None:
    chat = ChatSemGrad(scorer=tiny, max_tokens=40, stream_mode="hold")
    _, kw = forced(tiny)
    (only,) = list(chat.stream("Count.", **kw))
    assert only.content == ANSWER
    assert ScorePayload.read(only.response_metadata).model_extra["stream_mode"] == "hold"
    _, kw = forced(tiny)
    assert len(list(chat.stream("Count.", stream_mode="observe", **kw))) > 3
    with pytest.raises(ConfigurationError, match="got 'live'"):
        list(chat.stream("Count.", stream_mode="live"))


async def test_async_gate_equals_sync_gate(tiny: Any) -> None:
    chat = ChatSemGrad(scorer=tiny, max_tokens=40, stream_mode="gate", span_policy=FailOn("Three"))
    _, kw = forced(tiny)
    got = [c async for c in chat.astream("Count.", **kw)]
    _, kw = forced(tiny)
    want = list(chat.stream("Count.", **kw))
    assert [c.content for c in got] == [c.content for c in want]
    assert ScorePayload.read(got[-1].response_metadata) == ScorePayload.read(want[-1].response_metadata)


def _wait_for_workers() -> None:
    for t in threading.enumerate():
        if t.name == "semgrad-stream":
            t.join(timeout=10)


def test_a_consumer_that_stops_reading_stops_generation(tiny: Any) -> None:
    chat = ChatSemGrad(scorer=tiny, max_tokens=60)
    force, kw = forced(tiny, " ".join(["word"] * 60), delay=0.01)
    stream = chat.stream("Count.", **kw)
    next(stream)
    stream.close()
    _wait_for_workers()
    assert force.steps < 30, f"generation ran {force.steps} of 60 steps after the consumer left"


async def test_a_cancelled_async_consumer_stops_generation(tiny: Any) -> None:
    chat = ChatSemGrad(scorer=tiny, max_tokens=60)
    force, kw = forced(tiny, " ".join(["word"] * 60), delay=0.01)
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in chat.astream("Count.", **kw):
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.to_thread(_wait_for_workers)
    assert force.steps < 30, f"generation ran {force.steps} of 60 steps after the consumer left"


def test_gate_is_refused_where_the_turn_is_generated_whole(tiny: Any) -> None:
    from semgrad_guard import MockScorer

    mock = ChatSemGrad(scorer=MockScorer(lambda m, a: 0.1, answers=[ANSWER]), stream_mode="gate")
    with pytest.raises(ConfigurationError, match="needs ChatSemGrad on a SemGradScorer"):
        list(mock.stream("Count."))
    chat = ChatSemGrad(scorer=tiny, stream_mode="gate", span_policy=FailOn("x"))
    with pytest.raises(ConfigurationError, match="without stop strings"):
        list(chat.stream("Count.", stop=["Four"]))
