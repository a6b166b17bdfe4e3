"""Spans in LangChain metadata: ChatSemGrad(spans="sentences") and the callback handlers' spans option."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import HumanMessage
from langchain_semgrad import AsyncSemGradCallbackHandler, ChatSemGrad, SemGradCallbackHandler, read_score

ANSWER = "Paris is the capital. It has 2.1 million people. Lyon is second"


def test_chat_model_carries_the_generated_answers_spans(tiny: Any) -> None:
    chat = ChatSemGrad(scorer=tiny, max_tokens=24, spans="sentences")
    msg = chat.invoke([HumanMessage("Tell me about Paris.")])
    _, want = tiny.generate(
        [{"role": "user", "content": "Tell me about Paris."}], max_new_tokens=24, spans="sentences"
    )
    spans = read_score(msg).spans
    assert spans is not None and spans == want.spans
    assert all(msg.content[s.start : s.end] == s.text for s in spans)
    streamed = list(chat.stream([HumanMessage("Tell me about Paris.")]))
    last = [c for c in streamed if c.response_metadata.get("semgrad")][-1]
    assert read_score(last.response_metadata).spans == want.spans
    # Without the option, no spans.
    assert read_score(ChatSemGrad(scorer=tiny, max_tokens=8).invoke("Hi")).spans is None


def test_callback_handlers_score_sentences_when_asked(tiny: Any) -> None:
    model = FakeListChatModel(responses=[ANSWER])
    handler = SemGradCallbackHandler(tiny, spans="sentences")
    msg = model.invoke("Tell me about Paris.", config={"callbacks": [handler]})
    spans = read_score(msg).spans
    assert [s.text for s in spans] == [
        "Paris is the capital.",
        "It has 2.1 million people.",
        "Lyon is second",
    ]
    assert spans == tiny.score("Tell me about Paris.", ANSWER, spans="sentences").spans
    ahandler = AsyncSemGradCallbackHandler(tiny, spans="sentences")
    amsg = asyncio.run(
        FakeListChatModel(responses=[ANSWER]).ainvoke(
            "Tell me about Paris.", config={"callbacks": [ahandler]}
        )
    )
    assert read_score(amsg).spans == spans
    plain = FakeListChatModel(responses=[ANSWER]).invoke(
        "x", config={"callbacks": [SemGradCallbackHandler(tiny)]}
    )
    assert read_score(plain).spans is None
