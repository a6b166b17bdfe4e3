"""The README's async notes: ChatHuggingFace has no async path; the setups that work instead."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_semgrad import AsyncSemGradCallbackHandler, ChatSemGrad, SemGradCallbackHandler, read_score

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def chat_hf(tiny: Any) -> Any:
    import transformers
    from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline

    pipe = transformers.pipeline(
        "text-generation",
        model=tiny.model,
        tokenizer=tiny.tokenizer,
        return_full_text=False,
        max_new_tokens=6,
        do_sample=False,
    )
    return ChatHuggingFace(llm=HuggingFacePipeline(pipeline=pipe), tokenizer=tiny.tokenizer)


async def test_chat_huggingface_over_a_pipeline_cannot_run_async(tiny: Any, chat_hf: Any) -> None:
    handler = AsyncSemGradCallbackHandler(tiny)
    with pytest.raises(NotImplementedError, match="async generation is not supported"):
        await chat_hf.ainvoke(QUESTION, config={"callbacks": [handler]})
    assert handler.results == {}


async def test_chat_huggingface_sync_invoke_in_a_thread_is_scored(tiny: Any, chat_hf: Any) -> None:
    handler = SemGradCallbackHandler(tiny)  # the sync handler: it runs in the worker thread too
    msg = await asyncio.to_thread(chat_hf.invoke, QUESTION, config={"callbacks": [handler]})
    assert handler.last_result is not None
    assert read_score(msg) == handler.last_result


async def test_chat_semgrad_is_async_and_takes_the_async_handler(tiny: Any) -> None:
    handler = AsyncSemGradCallbackHandler(tiny)
    msg = await ChatSemGrad(scorer=tiny, max_tokens=6).ainvoke(QUESTION, config={"callbacks": [handler]})
    assert read_score(msg) is not None  # ChatSemGrad's own score, from generation
    assert handler.last_result is not None  # and the handler's, from re-scoring the text
