"""Tiny random chat models that can call tools, and scripted generation, for tool-calling tests.

Each format's chat template renders ``tools``, assistant ``tool_calls`` and ``tool`` results the way
its model family does; :class:`ScriptedGeneration` makes a random model emit chosen text (a tool call
in that format, then a final answer) through the real ``generate``, so the KV cache, the streamer
and the score are the real ones.

Example:
    >>> from semgrad_guard.scoring.tool_calls import generate_tool_turn
    >>> scorer = tiny_tool_scorer("hermes")
    >>> tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    >>> with ScriptedGeneration(scorer, ['<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>']):
    ...     turn, score = generate_tool_turn(scorer, "1 + 0?", tools)
    >>> turn.tool_calls[0].name, score.answer_tokens > 5
    ('add', True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..scoring.hf_scorer import SemGradScorer

TOOL_FORMATS: tuple[str, ...] = ("hermes", "llama3", "mistral")

_HERMES = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "# Tools\n\n<tools>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags.<|im_end|>\n"
    "{% elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'system' %}"
    "{% elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response><|im_end|>\n"
    "{% elif message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n{{ message.content }}"
    "{% for tc in message.tool_calls %}<tool_call>\n"
    '{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments | tojson }}}\n</tool_call>'
    "{% endfor %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_LLAMA3 = (
    "{{ '<|begin_of_text|>' }}"
    "{% if tools %}<|start_header_id|>system<|end_header_id|>\n\n"
    '{% if messages[0].role == "system" %}{{ messages[0].content }}\n\n{% endif %}'
    'To call a function, respond only with JSON {"name": function name, "parameters": arguments}.\n'
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}<|eot_id|>"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'system' and tools %}"
    "{% elif message.role == 'tool' %}<|start_header_id|>ipython<|end_header_id|>\n\n{{ message.content }}<|eot_id|>"
    "{% elif message.role == 'assistant' and message.tool_calls %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{% for tc in message.tool_calls %}"
    '{"name": "{{ tc.function.name }}", "parameters": {{ tc.function.arguments | tojson }}}'
    "{% endfor %}<|eot_id|>"
    "{% else %}<|start_header_id|>{{ message.role }}<|end_header_id|>\n\n{{ message.content }}<|eot_id|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
_MISTRAL = (
    "{{ '<s>' }}{% set ns = namespace(last_user=-1, system='') %}"
    "{% for m in messages %}{% if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}"
    "{% if m.role == 'system' %}{% set ns.system = m.content %}{% endif %}{% endfor %}"
    "{% for message in messages %}"
    "{% if message.role == 'user' %}"
    "{% if tools and loop.index0 == ns.last_user %}[AVAILABLE_TOOLS] {{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}"
    "[INST] {% if ns.system and loop.index0 == ns.last_user %}{{ ns.system }}\n\n{% endif %}{{ message.content }} [/INST]"
    "{% elif message.role == 'assistant' and message.tool_calls %}[TOOL_CALLS] ["
    "{% for tc in message.tool_calls %}"
    '{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments | tojson }}, "id": "{{ tc.id }}"}'
    "{% if not loop.last %}, {% endif %}{% endfor %}]</s>"
    "{% elif message.role == 'assistant' %} {{ message.content }}</s>"
    "{% elif message.role == 'tool' %}[TOOL_RESULTS] {\"content\": {{ message.content | tojson }}, "
    '"call_id": "{{ message.tool_call_id }}"}[/TOOL_RESULTS]'
    "{% elif message.role == 'system' %}"
    "{% else %}{{ raise_exception('Only system, user, assistant and tool roles are supported') }}{% endif %}"
    "{% endfor %}"
)

# format -> (architecture of semgrad_guard.testing.tiny_chat_model, tool-aware chat template)
_TOOL_FAMILIES: dict[str, tuple[str, str]] = {
    "hermes": ("qwen2", _HERMES),
    "llama3": ("llama", _LLAMA3),
    "mistral": ("mistral", _MISTRAL),
}


def tiny_tool_scorer(fmt: str = "hermes", *, seed: int = 0, **scorer_kwargs: Any) -> SemGradScorer:
    """A :class:`~semgrad_guard.SemGradScorer` over a tiny random model whose chat template renders tools.

    ``fmt`` is the tool-call format of the family: ``"hermes"`` (a Qwen2 model), ``"llama3"`` or
    ``"mistral"``. The model is random: script what it writes with :class:`ScriptedGeneration`.
    """
    from ..scoring.hf_scorer import SemGradScorer
    from ..scoring.profile import ModelProfile
    from . import tiny_chat_model

    if fmt not in _TOOL_FAMILIES:
        raise ValueError(f"unknown tool format {fmt!r}; choose one of {TOOL_FORMATS}")
    arch, template = _TOOL_FAMILIES[fmt]
    model, tok = tiny_chat_model(arch, seed=seed)
    scorer_kwargs.setdefault("model_id", f"tiny-random-{arch}-tools")
    scorer_kwargs.setdefault("profile", ModelProfile(anchor_offset=-1, layers=[2, 3]))
    return SemGradScorer(model, tok, chat_template=template, **scorer_kwargs)


class ScriptedGeneration:
    """Make a scorer's model write the given texts, one per ``generate`` call, through the real ``generate``.

    A logits processor forces each text's tokens and then the end-of-turn token; everything else
    (KV cache, streamers, scoring the generated ids) runs as usual. Use as a context manager; the
    model's own ``generate`` is restored on exit. After the script runs out, the model generates freely.
    """

    def __init__(self, scorer: Any, texts: Sequence[str]) -> None:
        self.scorer = scorer
        self.texts = list(texts)
        self.calls = 0

    def __enter__(self) -> ScriptedGeneration:
        model = self.scorer.model
        self._original = model.generate
        tokenizer = self.scorer.tokenizer
        eos = list(self.scorer.eos_token_ids)[0]

        def generate(*args: Any, **kwargs: Any) -> Any:
            if self.calls >= len(self.texts):
                return self._original(*args, **kwargs)
            text = self.texts[self.calls]
            self.calls += 1
            target = [*tokenizer(text, add_special_tokens=False)["input_ids"], eos]
            prompt_len = kwargs["input_ids"].shape[-1]
            kwargs["max_new_tokens"] = max(kwargs.get("max_new_tokens") or 0, len(target))
            processors = list(kwargs.pop("logits_processor", None) or [])
            processors.append(_Force(target, prompt_len))
            from transformers import LogitsProcessorList

            return self._original(*args, logits_processor=LogitsProcessorList(processors), **kwargs)

        model.generate = generate
        return self

    def __exit__(self, *exc: Any) -> None:
        self.scorer.model.generate = self._original


class _Force:
    """Logits processor: at step i, only ``target[i]`` may be chosen (then the last id, repeated)."""

    def __init__(self, target: list[int], prompt_len: int) -> None:
        self.target = target
        self.prompt_len = prompt_len

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        step = input_ids.shape[-1] - self.prompt_len
        token = self.target[min(step, len(self.target) - 1)]
        forced = torch.full_like(scores, float("-inf"))
        forced[:, token] = 0.0
        return forced
