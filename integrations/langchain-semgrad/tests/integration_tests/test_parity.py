"""A SemGradCallbackHandler on ChatHuggingFace (same embedded model) scores like ChatSemGrad does."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_semgrad import ChatSemGrad, SemGradCallbackHandler, read_score

pytestmark = pytest.mark.integration

QUESTIONS = ["What is the capital of France?", "What is the capital of Italy?"]


@pytest.fixture(scope="module")
def chat_hf(scorer: Any) -> Any:
    import transformers
    from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline

    pipe = transformers.pipeline(
        "text-generation",
        model=scorer.model,
        tokenizer=scorer.tokenizer,
        return_full_text=False,
        max_new_tokens=48,
        do_sample=False,
    )
    return ChatHuggingFace(llm=HuggingFacePipeline(pipeline=pipe), tokenizer=scorer.tokenizer)


@pytest.mark.parametrize("question", QUESTIONS)
def test_callback_on_chat_huggingface_matches_chat_semgrad(scorer: Any, chat_hf: Any, question: str) -> None:
    handler = SemGradCallbackHandler(scorer)
    prompt = ChatPromptTemplate.from_messages([("system", "Answer in one short sentence."), ("human", "{q}")])
    hf_msg = (prompt | chat_hf).invoke({"q": question}, config={"callbacks": [handler]})
    ours = ChatSemGrad(scorer=scorer, max_tokens=48).invoke(
        [SystemMessage("Answer in one short sentence."), HumanMessage(question)]
    )
    # Same weights, same greedy decoding, same chat template: the same answer...
    assert hf_msg.content.strip() == ours.content.strip()
    via_callback = handler.last_result
    assert via_callback is not None and read_score(hf_msg) == via_callback
    direct = read_score(ours)
    # Parity holds for answers that ended with the end-of-turn token (a cut-off answer is scored on
    # exactly the generated ids, without it, by ChatSemGrad, and with it by a re-tokenising callback).
    assert direct.answer_tokens < 48, "pick a question with a short answer"
    # ...and the same scores: the callback re-tokenises the text, ChatSemGrad scores the generated ids
    # through generation's KV cache; both end at the end-of-turn token.
    assert via_callback.answer_tokens == direct.answer_tokens
    assert via_callback.prompt_tokens == direct.prompt_tokens
    for name, value in direct.scores().items():
        assert getattr(via_callback, name) == pytest.approx(value, rel=2e-3, abs=1e-9), name
