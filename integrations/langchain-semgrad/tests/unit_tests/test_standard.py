"""LangChain's standard unit suite for ChatSemGrad over a tiny random scorer."""

from __future__ import annotations

from typing import Any

from langchain_semgrad import ChatSemGrad
from langchain_tests.unit_tests import ChatModelUnitTests

from tests._shared import tiny_tool_scorer_once


class TestChatSemGradUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatSemGrad]:
        return ChatSemGrad

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # A chat template that renders tools: bind_tools refuses models whose template does not.
        return {"scorer": tiny_tool_scorer_once("hermes")}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # A local model has no API key and no network retries; the other standard params apply.
        params = super().standard_chat_model_params
        params.pop("api_key", None)
        params.pop("max_retries", None)
        return params

    @property
    def supports_model_override(self) -> bool:
        # One local model per instance: a per-call ``model=`` only labels traces.
        return False
