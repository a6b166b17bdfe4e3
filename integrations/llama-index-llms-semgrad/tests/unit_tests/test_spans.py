"""Spans in LlamaIndex metadata: SemGradLLM(spans="sentences") and the handlers' spans option."""

from __future__ import annotations

from typing import Any

from llama_index.core.callbacks import CallbackManager
from llama_index.core.llms import MockLLM
from llama_index.llms.semgrad import SemGradLLM, score_from_response
from llama_index.llms.semgrad.handlers import SemGradCallbackHandler, SemGradEventHandler


def test_llm_carries_the_answers_spans(tiny: Any) -> None:
    llm = SemGradLLM(tiny, max_new_tokens=24, spans="sentences")
    response = llm.complete("Tell me about Paris.")
    _, want = tiny.generate(
        [{"role": "user", "content": "Tell me about Paris."}], max_new_tokens=24, spans="sentences"
    )
    got = score_from_response(response)
    assert got.spans is not None and got.spans == want.spans
    assert all(response.text[s.start : s.end] == s.text for s in got.spans)
    *_, last = llm.stream_complete("Tell me about Paris.")
    assert score_from_response(last).spans == want.spans
    # Per call, and off by default.
    plain = SemGradLLM(tiny, max_new_tokens=8)
    assert score_from_response(plain.complete("Hi")).spans is None
    assert score_from_response(plain.complete("Hi", spans="sentences")).spans is not None


def test_handlers_score_sentences_when_asked(tiny: Any) -> None:
    answer = "Paris is the capital. Lyon is second"
    for make in (
        lambda: SemGradCallbackHandler(tiny, spans="sentences"),
        lambda: SemGradEventHandler(tiny, spans="sentences").register(),
    ):
        handler = make()
        llm = MockLLM()
        if isinstance(handler, SemGradCallbackHandler):
            llm.callback_manager = CallbackManager([handler])
        llm.complete(answer)
        (scored,) = handler.scores.values()
        assert [s.text for s in scored.result.spans] == ["Paris is the capital.", "Lyon is second"]
        if isinstance(handler, SemGradEventHandler):
            handler.unregister()
