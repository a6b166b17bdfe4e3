"""Stream modes (observe, gate, hold) and stopping: the core that the service and both adapters use."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import pytest
from transformers import LogitsProcessorList

from semgrad_guard import ConfigurationError, ModelProfile, SemGradScorer, check_stream_mode
from semgrad_guard.scoring.streaming import score_span
from semgrad_guard.testing import tiny_chat_model
from semgrad_guard.testing.streams import ForcedAnswer

CHAT = [{"role": "user", "content": "Count to four."}]
ANSWER = "One. Two. Three. Four."
FIELDS = ("semgrad", "exgrad", "hybridgrad", "nll", "mean_nll", "mean_entropy")


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def scorer(request):
    model, tok = tiny_chat_model(request.param, tie_word_embeddings=False, seed=1)
    return SemGradScorer(model, tok, profile=ModelProfile(anchor_offset=-3, layers=[2, 3]))


def forced(scorer, text: str = ANSWER, delay: float = 0.0) -> tuple[ForcedAnswer, dict]:
    force = ForcedAnswer(scorer, text, delay)
    return force, {"logits_processor": LogitsProcessorList([force]), "max_new_tokens": 40}


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str = ""
    confidence: float = 0.5


class Judge:
    """A span policy stub: ``actions`` by the sentence's text (default keep); records what it saw."""

    def __init__(self, **actions: str) -> None:
        self.actions = actions
        self.seen: list[Span] = []

    def judge(self, span: Span) -> Decision:
        self.seen.append(span)
        return Decision(self.actions.get(span.text.rstrip(".").strip(), "keep"))


def stub_spans(messages, answer: str, span: tuple[int, int]) -> Span:
    return Span(span[0], span[1], answer[span[0] : span[1]])


def test_an_unknown_mode_is_refused_with_the_modes_named(scorer):
    with pytest.raises(ConfigurationError, match="'observe', 'gate' or 'hold', got 'live'"):
        check_stream_mode("live")
    with pytest.raises(ConfigurationError, match="got 'live'"):
        list(scorer.stream(CHAT, mode="live"))
    with pytest.raises(ConfigurationError, match="gate mode needs a span policy"):
        list(scorer.stream(CHAT, mode="gate", max_new_tokens=4))


def test_gate_says_when_the_scorer_has_no_span_scores():
    class Plain:
        def score(self, messages, answer):
            raise AssertionError("not reached")

    with pytest.raises(ConfigurationError, match="gate mode needs span scores"):
        score_span(Plain(), CHAT, "One.", (0, 4))


def test_hold_gives_one_chunk_with_the_whole_scored_answer(scorer):
    force, kw = forced(scorer)
    (only,) = list(scorer.stream(CHAT, mode="hold", **kw))
    _, kw = forced(scorer)
    text, want = scorer.generate(CHAT, **kw)
    assert only.delta == only.text == text == ANSWER and only.mode == "hold"
    assert only.result == want


def test_observe_streams_tokens_and_equals_generate(scorer):
    _, kw = forced(scorer)
    chunks = list(scorer.stream(CHAT, mode="observe", **kw))
    assert len(chunks) > 4 and all(c.result is None for c in chunks[:-1])
    assert "".join(c.delta for c in chunks) == ANSWER == chunks[-1].text


def test_gate_releases_whole_sentences_after_judging_each(scorer):
    judge = Judge()
    _, kw = forced(scorer)
    chunks = list(scorer.stream(CHAT, mode="gate", span_judge=judge, span_scorer=stub_spans, **kw))
    assert [c.delta for c in chunks] == ["One.", " Two.", " Three.", " Four.", ""]
    assert [s.text for s in judge.seen] == ["One.", "Two.", "Three.", "Four."]
    last = chunks[-1]
    assert last.text == ANSWER and last.released and last.stopped is None
    _, kw = forced(scorer)
    assert last.result == scorer.generate(CHAT, **kw)[1]


def test_a_real_scoring_pass_inside_generation_changes_neither_score(scorer):
    # Gate mode scores from a stopping criterion, between decode steps, on the generating thread: the
    # nested pass must not be recorded as generation's residuals (the fast path's final score would
    # then be wrong), and must equal the same score computed on its own.
    nested = {}

    def real_scores(messages, answer, span):
        nested[answer] = scorer.score(messages, answer)
        return stub_spans(messages, answer, span)

    _, kw = forced(scorer)
    last = list(scorer.stream(CHAT, mode="gate", span_judge=Judge(), span_scorer=real_scores, **kw))[-1]
    _, kw = forced(scorer)
    want = scorer.generate(CHAT, **kw)[1]
    for name in FIELDS:
        assert getattr(last.result, name) == pytest.approx(getattr(want, name), rel=1e-6), name
    assert list(nested) == ["One.", "One. Two.", "One. Two. Three.", ANSWER]
    for answer, got in nested.items():
        alone = scorer.score(CHAT, answer)
        for name in FIELDS:
            assert getattr(got, name) == pytest.approx(getattr(alone, name), rel=1e-6), (answer, name)


def test_gate_abstain_stops_generation_at_the_failing_sentence(scorer):
    judge = Judge(Two="abstain")
    force, kw = forced(scorer)
    chunks = list(scorer.stream(CHAT, mode="gate", span_judge=judge, span_scorer=stub_spans, **kw))
    full_force, full_kw = forced(scorer)
    _, full = scorer.generate(CHAT, **full_kw)
    last = chunks[-1]
    assert "".join(c.delta for c in chunks) == "One."
    assert last.stopped is not None and last.stopped.action == "abstain"
    assert last.stopped.generation_stopped and last.stopped.span.text == "Two."
    # Stopped one token after "Two." (the token that shows the sentence ended): the rest never ran.
    assert last.text == "One. Two. Three" and "truncated" in last.result.flags
    assert last.result.answer_tokens < full.answer_tokens and force.steps < full_force.steps
    assert [s.text for s in judge.seen] == ["One.", "Two."]


def test_gate_review_withholds_the_rest_but_finishes_the_answer(scorer):
    judge = Judge(Two="review")
    _, kw = forced(scorer)
    chunks = list(scorer.stream(CHAT, mode="gate", span_judge=judge, span_scorer=stub_spans, **kw))
    last = chunks[-1]
    assert "".join(c.delta for c in chunks) == "One."
    assert last.text == ANSWER and last.stopped.action == "review" and not last.stopped.generation_stopped
    assert "truncated" not in last.result.flags
    assert [s.text for s in judge.seen] == ["One.", "Two."]  # nothing after is judged


def test_gate_drop_withholds_one_sentence_and_goes_on(scorer):
    _, kw = forced(scorer)
    chunks = list(
        scorer.stream(CHAT, mode="gate", span_judge=Judge(Three="drop"), span_scorer=stub_spans, **kw)
    )
    last = chunks[-1]
    assert [c.delta for c in chunks] == ["One.", " Two.", " Four.", ""]
    assert [s.text for s in last.dropped] == ["Three."] and not last.released
    assert last.stopped is None and last.text == ANSWER


def _stream_thread() -> threading.Thread | None:
    return next((t for t in threading.enumerate() if t.name == "semgrad-stream"), None)


def test_closing_the_iterator_stops_generation(scorer):
    text = " ".join(["word"] * 60)
    force, kw = forced(scorer, text, delay=0.01)
    kw["max_new_tokens"] = 60
    it = scorer.stream(CHAT, mode="observe", **kw)
    next(it)
    it.close()
    worker = _stream_thread()
    if worker is not None:
        worker.join(timeout=10)
        assert not worker.is_alive()
    assert force.steps < 30, f"generation ran {force.steps} of 60 steps after the consumer left"


def test_cancelling_the_async_consumer_stops_generation(scorer):
    text = " ".join(["word"] * 60)
    force, kw = forced(scorer, text, delay=0.01)
    kw["max_new_tokens"] = 60
    first = asyncio.Event()

    async def consume():
        async for _ in scorer.astream(CHAT, mode="observe", **kw):
            first.set()

    async def main():
        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    worker = _stream_thread()
    if worker is not None:
        worker.join(timeout=10)
    assert force.steps < 30, f"generation ran {force.steps} of 60 steps after the consumer left"


def test_async_gate_equals_sync_gate(scorer):
    async def collect():
        _, kw = forced(scorer)
        return [
            c
            async for c in scorer.astream(
                CHAT, mode="gate", span_judge=Judge(Three="abstain"), span_scorer=stub_spans, **kw
            )
        ]

    got = asyncio.run(collect())
    _, kw = forced(scorer)
    want = list(
        scorer.stream(CHAT, mode="gate", span_judge=Judge(Three="abstain"), span_scorer=stub_spans, **kw)
    )
    assert [c.delta for c in got] == [c.delta for c in want] == ["One.", " Two.", ""]
    assert got[-1].result == want[-1].result and got[-1].stopped == want[-1].stopped


def test_a_sentence_scored_on_the_answer_so_far_equals_its_score_in_the_whole_answer(scorer):
    # Causal: a span's loss depends only on the tokens up to its end, so gate mode may score it on
    # the prefix. Needs the span scores (ScoreResult.spans) of the span contract.
    from semgrad_guard import ScoreResult

    if "spans" not in ScoreResult.model_fields:
        pytest.skip("span scores (ScoreResult.spans) are not in this tree yet")
    whole = scorer.score(CHAT, ANSWER, spans=[(5, 9)]).spans[0]
    prefix = score_span(scorer, CHAT, ANSWER[:9], (5, 9))
    assert prefix.text == whole.text == "Two."
    for name in FIELDS:
        assert getattr(prefix, name) == pytest.approx(getattr(whole, name), rel=1e-5), name


def test_gate_judges_each_sentence_on_the_span_scores_of_the_whole_answer(scorer):
    # No stub: the span scores gate mode computes between decode steps (on the answer so far) are
    # the whole answer's span scores.
    judge = Judge()
    _, kw = forced(scorer)
    last = list(scorer.stream(CHAT, mode="gate", span_judge=judge, **kw))[-1]
    whole = scorer.score(CHAT, ANSWER, spans="sentences").spans
    assert last.text == ANSWER and [s.text for s in judge.seen] == [s.text for s in whole]
    for got, want in zip(judge.seen, whole, strict=True):
        assert (got.start, got.end, got.token_start, got.token_end) == (
            want.start,
            want.end,
            want.token_start,
            want.token_end,
        )
        for name in FIELDS:
            assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-5), (got.text, name)
