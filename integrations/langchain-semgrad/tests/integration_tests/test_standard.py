"""LangChain's standard integration suite for ChatSemGrad on the embedded model (short answers to bound time)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_semgrad import ChatSemGrad
from langchain_tests.integration_tests import ChatModelIntegrationTests

from tests.integration_tests.conftest import default_scorer

pytestmark = pytest.mark.integration


class TestChatSemGradIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatSemGrad]:
        return ChatSemGrad

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"scorer": default_scorer(), "max_tokens": 12}

    @property
    def supports_model_override(self) -> bool:
        # One local model per instance: a per-call ``model=`` only labels traces.
        return False

    # ChatSemGrad implements tool calling (hence structured output), but the embedded model cannot
    # call tools: SmolLM2-135M-Instruct's chat template never renders `tools`, so bind_tools raises
    # ToolCallingUnsupportedError for it (tested in unit_tests/test_tools.py). JSON mode and
    # multimodal inputs are not implemented. The suite skips those tests from these flags.
    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False
