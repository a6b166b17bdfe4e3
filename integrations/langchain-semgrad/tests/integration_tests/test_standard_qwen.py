"""LangChain's standard integration suite, tool calling and structured output, on a model that calls tools.

The embedded SmolLM2-135M cannot call tools (test_standard.py runs the rest of the suite on it);
Qwen2.5-Coder-0.5B-Instruct's chat template renders tools and it emits Hermes ``<tool_call>`` JSON.
Only the suite's tool-calling and structured-output tests run here: the others are the same code
paths test_standard.py already covers, and on this CPU each call of the 0.5B model takes seconds.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_semgrad import ChatSemGrad
from langchain_semgrad.chat_models import _load_scorer
from langchain_tests.integration_tests import ChatModelIntegrationTests

from semgrad_guard.errors import ToolCallParseError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QWEN = "qwen2.5-coder-0.5b"
# What this file is for; every other test of the suite is skipped here (covered by test_standard.py).
TOOL_TESTS = {
    "test_tool_calling",
    "test_tool_calling_async",
    "test_tool_calling_with_no_arguments",
    "test_tool_choice",
    "test_bind_runnables_as_tools",
    "test_tool_message_histories_string_content",
    "test_tool_message_histories_list_content",
    "test_tool_message_error_status",
    "test_structured_few_shot_examples",
    "test_unicode_tool_call_integration",
    "test_structured_output",
    "test_structured_output_async",
    "test_structured_output_optional_param",
    "test_structured_output_pydantic_2_v1",
}


class TestChatSemGradQwenTools(ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _only_tool_tests(self, request: pytest.FixtureRequest) -> None:
        if request.node.originalname not in TOOL_TESTS:
            pytest.skip("not a tool-calling test: runs on the embedded model in test_standard.py")

    @pytest.mark.xfail(
        reason="model quality, not the adapter: forced to call magic_function_no_args (tool_choice "
        "'any'), the 0.5B model copies the parameter schema into the arguments "
        "({'type': 'object', 'properties': {}}) where the suite wants {}; seen 7 December",
        raises=AssertionError,
        strict=False,  # greedy ties can change with CPU thread counts
    )
    def test_tool_calling_with_no_arguments(self, model: Any) -> None:
        super().test_tool_calling_with_no_arguments(model)

    @pytest.mark.xfail(
        reason="model quality, not the adapter: the call is forced and named right, and the Chinese "
        "customer's call parses; for the Japanese one the 0.5B model writes unescaped quotes inside "
        "the description ('... a description of \"Hello Corporation\". '), which is not JSON, so "
        "ToolCallParseError; seen 7 December. Not strict: CPU thread counts can change greedy ties",
        raises=ToolCallParseError,
        strict=False,
    )
    def test_unicode_tool_call_integration(
        self, model: Any, *, tool_choice: str | None = None, force_tool_call: bool = True
    ) -> None:
        super().test_unicode_tool_call_integration(
            model, tool_choice=tool_choice, force_tool_call=force_tool_call
        )

    @property
    def chat_model_class(self) -> type[ChatSemGrad]:
        return ChatSemGrad

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # Room for one call with its arguments (the unicode test's Japanese description takes ~120
        # tokens); greedy, so a rerun gives the same call.
        return {"scorer": _load_scorer(QWEN, "cpu"), "max_tokens": 192}

    @property
    def supports_model_override(self) -> bool:
        return False  # one local model per instance: a per-call ``model=`` only labels traces

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        # "any" / a name force the call: the turn's first tokens are held to the template's call
        # opening and an offered name (test_tool_choice sends "Hello!" and needs a call back).
        return True

    @property
    def has_structured_output(self) -> bool:
        return True  # with_structured_output through tool calling (LangChain's default method)

    @property
    def supports_json_mode(self) -> bool:
        return False  # no constrained JSON decoding locally: test_json_mode is skipped

    @property
    def supports_image_tool_message(self) -> bool:
        return False  # text-only models: the image and PDF tool-message tests are skipped

    @property
    def supports_pdf_tool_message(self) -> bool:
        return False
