"""Test doubles: a scripted LLM and a small vector index that need no weights and no network."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.llms.types import CompletionResponse, LLMMetadata
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_completion_callback

FACTS = [
    "The Harbor Light library opens at 9 am on weekdays.",
    "Members may borrow up to 12 items at a time.",
    "Late fees are 20 cents per item per day.",
    "The maker space has two 3D printers.",
    "Children's story time is on Saturdays at 10 am.",
    "The library is closed on public holidays.",
]


class ScriptedLLM(CustomLLM):
    """Answers ``answer_fn(prompt)``; records every prompt it saw."""

    answer_fn: Callable[[str], str]
    prompts: list[str] = []

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_chat_model=False)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self.prompts.append(prompt)
        return CompletionResponse(text=self.answer_fn(prompt))

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> Iterator[CompletionResponse]:
        text = self.answer_fn(prompt)
        yield CompletionResponse(text=text, delta=text)


def library_index() -> VectorStoreIndex:
    """Six one-sentence documents with constant mock embeddings (retrieval returns the first k)."""
    return VectorStoreIndex.from_documents(
        [Document(text=t) for t in FACTS], embed_model=MockEmbedding(embed_dim=8)
    )


def context_chunks(messages: list[dict[str, Any]]) -> int:
    """How many of the FACTS made it into the prompt."""
    text = " ".join(m["content"] for m in messages)
    return sum(f in text for f in FACTS)
