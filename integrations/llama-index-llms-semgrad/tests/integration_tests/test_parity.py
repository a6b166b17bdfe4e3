"""Scores from the handlers on HuggingFaceLLM equal SemGradLLM's own scores for the same answers."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.callbacks import CallbackManager
from llama_index.llms.semgrad import SemGradLLM, score_from_response
from llama_index.llms.semgrad.handlers import SemGradCallbackHandler, SemGradEventHandler

pytestmark = pytest.mark.integration

MAX_NEW_TOKENS = 40
CHATS = [
    [ChatMessage(role="user", content="What is the capital of France? Answer in one short sentence.")],
    [
        ChatMessage(role="system", content="You are a concise assistant."),
        ChatMessage(role="user", content="Say hello in one word."),
    ],
]
PROMPT = "Name one primary colour. Answer with one word."


@pytest.fixture(scope="module")
def hf_llm(scorer: Any) -> Any:
    from llama_index.llms.huggingface import HuggingFaceLLM

    return HuggingFaceLLM(
        model=scorer.model,
        tokenizer=scorer.tokenizer,
        context_window=scorer.context_window,
        max_new_tokens=MAX_NEW_TOKENS,
        is_chat_model=True,
        device_map="cpu",
        # Greedy, like SemGradLLM's default; neutralise the checkpoint's sampling defaults.
        generate_kwargs={"do_sample": False, "temperature": None, "top_p": None, "top_k": None},
        # complete() renders the prompt as one user turn through the chat template, as SemGradLLM does.
        completion_to_prompt=scorer.render_prompt,
    )


@pytest.fixture(scope="module")
def semgrad_llm(scorer: Any) -> SemGradLLM:
    return SemGradLLM(scorer, max_new_tokens=MAX_NEW_TOKENS)


def _close(a: Any, b: Any) -> None:
    assert a.answer_tokens == b.answer_tokens and a.prompt_tokens == b.prompt_tokens
    # Same ids, same model: only float summation order differs (generation's cache vs a fresh pass).
    assert a.scores() == pytest.approx(b.scores(), rel=1e-4, abs=1e-9)


def test_handler_scores_on_huggingface_llm_equal_semgrad_llm_scores(
    scorer: Any, hf_llm: Any, semgrad_llm: SemGradLLM
) -> None:
    # Both handler flavours watch the same HuggingFaceLLM calls (one generation per question).
    legacy = SemGradCallbackHandler(scorer)
    hf_llm.callback_manager = CallbackManager([legacy])
    instrumented = SemGradEventHandler(scorer).register()
    handlers = (legacy, instrumented)
    try:
        for chat in CHATS:
            for h in handlers:
                h.clear()
            hf = hf_llm.chat(chat)
            # Read before SemGradLLM runs: the dispatcher handler sees every LLM, that one too.
            recorded = [(list(h.scores.values()), h.deduplicated) for h in handlers]
            own = semgrad_llm.chat(chat)
            assert hf.message.content.strip() == own.message.content.strip(), "greedy answers differ"
            expected = score_from_response(own)
            assert expected is not None
            # Text-based scoring always ends with the end-of-turn token; a truncated answer has none.
            assert expected.answer_tokens < MAX_NEW_TOKENS, (
                "the answer hit max_new_tokens: pick a shorter question"
            )
            for records, deduplicated in recorded:
                (rec,) = records
                assert deduplicated == 1  # HuggingFaceLLM.chat() calls its decorated complete()
                assert rec.kind == "chat" and rec.result is not None
                _close(rec.result, expected)
        for h in handlers:
            h.clear()
        hf_text = hf_llm.complete(PROMPT).text
        recorded_completions = [list(h.scores.values()) for h in handlers]
        own = semgrad_llm.complete(PROMPT)
        assert hf_text.strip() == own.text.strip()
        for records in recorded_completions:
            (rec,) = records
            assert rec.kind == "completion" and rec.messages == [{"role": "user", "content": PROMPT}]
            _close(rec.result, score_from_response(own))
    finally:
        hf_llm.callback_manager = CallbackManager([])
        instrumented.unregister()
