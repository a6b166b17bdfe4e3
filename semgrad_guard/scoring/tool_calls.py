"""Tool calls in generated text: parse them out, and generate a turn with tools rendered.

Models write tool calls in a few formats, which :func:`parse_tool_calls` reads (framework-free, no torch):

* the tokenizer's own ``response_template`` (transformers' ``tokenizer.parse_response``) where the
  tokenizer declares one: it knows that model's markers exactly;
* Hermes / Qwen: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one block per call;
* Mistral: ``[TOOL_CALLS][{"name": ..., "arguments": {...}, "id": ...}, ...]`` (also the
  ``[TOOL_CALLS]name[ARGS]{...}`` form of newer tokenizers);
* Llama 3.1: the whole turn is ``{"name": ..., "parameters": {...}}`` (``<|python_tag|>`` optional);
* bare JSON calls without any marker, as Qwen2.5 writes them once a tool result is in the history:
  one or more ``{"name": ..., "arguments": {...}}`` objects back to back, or in a ```json fence; and,
  when ``tools`` are given, such an object for an offered tool anywhere in the text (the prose around
  it is the turn's content). Tool-call JSON is never passed off as an answer.

A marker followed by something that is not a call (bad JSON, no name) raises
:class:`~semgrad_guard.errors.ToolCallParseError`; text without any marker is an answer.

:func:`generate_tool_turn` generates with the tools rendered through the chat template
(``apply_chat_template(..., tools=...)``), optionally forcing a call (``tool_choice`` "any" or a
name: the turn is held to the template's call opening and an offered name), and parses the turn;
the score covers exactly the generated tokens, as for any answer, and the caller decides whether a
tool-call turn counts as an answer (it does not: an agent's final answer is the turn without tool
calls).

Example:
    >>> turn = parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>')
    >>> turn.content, turn.tool_calls[0].name, turn.tool_calls[0].arguments
    ('', 'add', {'a': 1, 'b': 2})
"""

from __future__ import annotations

import json
import logging
import math
import re
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ToolCallingUnsupportedError, ToolCallParseError

logger = logging.getLogger(__name__)

__all__ = [
    "ToolCall",
    "ToolTurn",
    "call_prefix",
    "generate_tool_turn",
    "parse_tool_calls",
    "require_tool_support",
    "template_uses_tools",
]

_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_MISTRAL = "[TOOL_CALLS]"
_MISTRAL_ARGS = "[ARGS]"
_PYTHON_TAG = "<|python_tag|>"
_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)
_FENCE_MARK = re.compile(r"```(?:json)?")
_CALL_START = re.compile(r'\{\s*"name"\s*:\s*"([^"]+)"')


@dataclass(frozen=True)
class ToolCall:
    """One tool call: the tool's name, its arguments and an id (generated when the model gave none)."""

    name: str
    """The tool's name, as the model wrote it."""
    arguments: dict[str, Any]
    """The call's arguments, decoded from JSON."""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:9])
    """The call's id: the model's own, else 9 random alphanumerics (Mistral templates require that shape)."""


@dataclass(frozen=True)
class ToolTurn:
    """A generated turn: its text without the tool-call markup, and its tool calls (empty for an answer)."""

    content: str
    """Text outside the tool calls (the whole answer when there are none)."""
    tool_calls: list[ToolCall]
    """The calls, in the order written."""
    format: str | None = None
    """Which format they were read from: ``"response_template"``, ``"hermes"``, ``"mistral"``, ``"llama3"``,
    ``"json"`` (bare calls without markers)."""

    @property
    def is_answer(self) -> bool:
        """True when the turn calls no tool, i.e. it is an answer to score."""
        return not self.tool_calls


def template_uses_tools(chat_template: Any) -> bool:
    """Whether a chat template reads the ``tools`` variable (a dict of named templates: any of them)."""
    if isinstance(chat_template, Mapping):
        return any(template_uses_tools(t) for t in chat_template.values())
    if not isinstance(chat_template, str) or not chat_template:
        return False
    try:
        from jinja2 import Environment, meta

        return "tools" in meta.find_undeclared_variables(Environment().parse(chat_template))
    except Exception:  # an extension tag jinja's plain parser does not know: fall back to the name
        return re.search(r"\btools\b", chat_template) is not None


def require_tool_support(scorer: Any) -> None:
    """Raise :class:`ToolCallingUnsupportedError` (naming the model) if its chat template ignores tools.

    Scorers without a chat template (test doubles) are let through: they have nothing to render.
    """
    template = getattr(scorer, "chat_template", None)
    if template is None and getattr(scorer, "tokenizer", None) is None:
        return
    if not template_uses_tools(template):
        model = getattr(scorer, "model_id", None) or type(scorer).__name__
        raise ToolCallingUnsupportedError(
            f"{model} cannot call tools: its chat template never renders `tools`, so the model would not "
            "see them. Use a model whose chat template supports tools (Qwen2.5, Llama 3.1, Mistral "
            "Instruct v0.3, Hermes, ...) or pass a tool-aware chat_template to SemGradScorer"
        )


# -- parsing -----------------------------------------------------------------------------------------
def parse_tool_calls(
    text: str,
    *,
    tokenizer: Any = None,
    prefix: str = "",
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> ToolTurn:
    """Split a generated turn into its text and its tool calls.

    Args:
        text: the generated text; keep the special tokens (a decode with ``skip_special_tokens=False``)
            when the tool-call markers are special tokens.
        tokenizer: a tokenizer with a ``response_template``: its ``parse_response`` reads the turn.
        prefix: the rendered prompt before the turn (``parse_response`` needs it).
        tools: the tools offered (OpenAI format), so ``parse_response`` can type the arguments.

    Raises:
        ToolCallParseError: a tool-call marker is followed by something that is not a call.
    """
    if tokenizer is not None and getattr(tokenizer, "response_template", None):
        return _from_response_template(text, tokenizer, prefix, tools)
    if "<tool_call>" in text:
        return _hermes(text)
    if _MISTRAL in text:
        return _mistral(text)
    turn = _bare_json(text)
    if turn.is_answer and tools:
        return _embedded_calls(text, {_tool_name(t) for t in tools} - {""})
    return turn


def _from_response_template(
    text: str, tokenizer: Any, prefix: str, tools: Sequence[Mapping[str, Any]] | None
) -> ToolTurn:
    try:
        message = tokenizer.parse_response(text, prefix=prefix, tools=list(tools) if tools else None)
    except Exception as e:
        raise ToolCallParseError(f"the tokenizer's response_template could not parse the turn: {e}") from e
    calls = [_call(_function_of(c), source="response_template") for c in message.get("tool_calls") or []]
    content = message.get("content") or ""
    return ToolTurn(
        content=str(content).strip(), tool_calls=calls, format="response_template" if calls else None
    )


def _function_of(call: Any) -> Any:
    if isinstance(call, Mapping) and isinstance(call.get("function"), Mapping):
        fn = dict(call["function"])
        if "id" in call and "id" not in fn:
            fn["id"] = call["id"]
        return fn
    return call


def _hermes(text: str) -> ToolTurn:
    calls = [_call(_loads(body, "hermes"), source="hermes") for body in _HERMES.findall(text)]
    content = _HERMES.sub("", text).strip()
    return ToolTurn(content=content, tool_calls=calls, format="hermes")


def _mistral(text: str) -> ToolTurn:
    content, _, rest = text.partition(_MISTRAL)
    rest = rest.strip()
    calls: list[ToolCall] = []
    if rest.startswith("[") or rest.startswith("{"):
        value, end = _decode_prefix(rest, "mistral")
        for item in value if isinstance(value, list) else [value]:
            calls.append(_call(item, source="mistral"))
        tail = rest[end:]
    else:  # ``[TOOL_CALLS]name[ARGS]{...}``, repeated
        tail = ""
        for chunk in rest.split(_MISTRAL):
            name, sep, args = chunk.partition(_MISTRAL_ARGS)
            if not sep:
                raise ToolCallParseError(f"mistral tool call without [ARGS]: {chunk!r:.120}")
            value, end = _decode_prefix(args.strip(), "mistral")
            calls.append(_call({"name": name.strip(), "arguments": value}, source="mistral"))
            tail += args.strip()[end:]
    if not calls:
        raise ToolCallParseError("[TOOL_CALLS] followed by an empty list of calls")
    return ToolTurn(content=(content + tail).strip(), tool_calls=calls, format="mistral")


def _bare_json(text: str) -> ToolTurn:
    """Llama 3.1 (``{"name", "parameters"}``), a Mistral list whose special marker was stripped, or
    bare calls back to back or fenced (Qwen2.5 after a tool result)."""
    body = text.strip()
    tagged = body.startswith(_PYTHON_TAG)
    if tagged:
        body = body[len(_PYTHON_TAG) :].strip()
    fence = _FENCE.fullmatch(body)
    if fence:
        body = fence.group(1).strip()
    if not body.startswith(("{", "[")):
        if tagged:
            raise ToolCallParseError(f"<|python_tag|> not followed by a JSON tool call: {body!r:.120}")
        return ToolTurn(content=text.strip(), tool_calls=[])
    values = _json_values(body)
    if values is None:
        if tagged:
            raise ToolCallParseError(f"<|python_tag|> not followed by valid JSON: {body!r:.120}") from None
        return ToolTurn(content=text.strip(), tool_calls=[])  # an answer that happens to start with "{"
    items = [i for v in values for i in (v if isinstance(v, list) else [v])]
    if items and all(_looks_like_call(i) for i in items):
        calls = [_call(i, source="llama3") for i in items]
        if len(values) == 1 and not fence:
            fmt = "llama3" if isinstance(values[0], dict) else "mistral"
        else:
            fmt = "json"
        return ToolTurn(content="", tool_calls=calls, format=fmt)
    if tagged:
        raise ToolCallParseError(f"<|python_tag|> JSON is not a tool call (no 'name'): {body!r:.120}")
    return ToolTurn(content=text.strip(), tool_calls=[])  # JSON as an answer (e.g. structured output)


def _json_values(body: str) -> list[Any] | None:
    """Every JSON value in ``body``, back to back (whitespace between); None if anything else is there."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    i = 0
    while True:
        while i < len(body) and body[i].isspace():
            i += 1
        if i == len(body):
            return values
        try:
            value, i = decoder.raw_decode(body, i)
        except json.JSONDecodeError:
            return None
        values.append(value)


def _embedded_calls(text: str, names: set[str]) -> ToolTurn:
    """Calls of offered tools written as JSON inside prose; the prose (fences dropped) is the content.

    Only objects naming an offered tool count, so an answer that quotes other JSON stays an answer.
    A call of an offered tool that starts but does not parse (cut off by ``max_tokens``) raises, unless
    complete calls came before it: small models (Qwen2.5-Coder-0.5B) write calls back to back until
    ``max_tokens``, and the complete ones are the turn (the cut-off tail is dropped, never content).
    """
    decoder = json.JSONDecoder()
    calls: list[ToolCall] = []
    kept: list[str] = []
    i = start = 0
    while (i := text.find("{", i)) >= 0:
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            opened = _CALL_START.match(text, i)
            if opened and opened.group(1) in names:
                if calls:
                    logger.warning(
                        "dropped a cut-off call of tool %r after %d complete call(s) (raise max_tokens?)",
                        opened.group(1),
                        len(calls),
                    )
                    kept.append(text[start:i])
                    start = len(text)
                    break
                raise ToolCallParseError(
                    f"the turn starts a call of tool {opened.group(1)!r} that is not valid JSON "
                    f"(cut off? raise max_tokens): {text[i:]!r:.120}"
                ) from None
            i += 1
            continue
        if _looks_like_call(value) and value["name"] in names:
            calls.append(_call(value, source="json"))
            kept.append(text[start:i])
            start = i = end
        else:
            i += 1
    if not calls:
        return ToolTurn(content=text.strip(), tool_calls=[])
    kept.append(text[start:])
    content = re.sub(r"\n\s*\n", "\n\n", _FENCE_MARK.sub("", "".join(kept))).strip()
    return ToolTurn(content=content, tool_calls=calls, format="json")


def _tool_name(tool: Mapping[str, Any]) -> str:
    fn = tool.get("function", tool)
    return str(fn.get("name", "")) if isinstance(fn, Mapping) else ""


def _looks_like_call(item: Any) -> bool:
    return (
        isinstance(item, Mapping)
        and isinstance(item.get("name"), str)
        and set(item) <= {"name", "arguments", "parameters", "id", "type"}
        and ("arguments" in item or "parameters" in item)
    )


def _loads(body: str, source: str) -> Any:
    try:
        return json.loads(body)
    except json.JSONDecodeError as e:
        raise ToolCallParseError(f"{source} tool call is not valid JSON ({e.msg}): {body!r:.120}") from e


def _decode_prefix(body: str, source: str) -> tuple[Any, int]:
    try:
        return json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError as e:
        raise ToolCallParseError(f"{source} tool call is not valid JSON ({e.msg}): {body!r:.120}") from e


def _call(item: Any, *, source: str) -> ToolCall:
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str) or not item["name"].strip():
        raise ToolCallParseError(f"{source} tool call has no tool name: {item!r:.120}")
    args = item.get("arguments", item.get("parameters", {}))
    if isinstance(args, str):  # OpenAI style: arguments as a JSON string
        args = _loads(args, source) if args.strip() else {}
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise ToolCallParseError(
            f"{source} tool call {item['name']!r} has non-object arguments: {args!r:.120}"
        )
    call_id = item.get("id")
    if isinstance(call_id, str) and call_id:
        return ToolCall(name=item["name"].strip(), arguments=dict(args), id=call_id)
    return ToolCall(name=item["name"].strip(), arguments=dict(args))


# -- generating ---------------------------------------------------------------------------------------
class _IdCollector:
    """A ``generate`` streamer that keeps the generated ids (and forwards to the caller's streamer)."""

    def __init__(self, forward: Any = None) -> None:
        self.forward = forward
        self.ids: list[int] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if self.forward is not None:
            self.forward.put(value)
        if not self._prompt_seen:  # generate() first puts the prompt
            self._prompt_seen = True
            return
        self.ids.extend(int(t) for t in value.reshape(-1).tolist())

    def end(self) -> None:
        if self.forward is not None:
            self.forward.end()


def generate_tool_turn(
    scorer: Any,
    messages: Any,
    tools: Sequence[Mapping[str, Any]],
    *,
    force: bool | str = False,
    **generate_kwargs: Any,
) -> tuple[ToolTurn, Any]:
    """Generate one turn with ``tools`` rendered into the prompt, and parse its tool calls.

    Returns ``(turn, score)``: the score is the generating scorer's for exactly the generated tokens.
    A scorer with a chat template is asked for ``scorer.with_tools(tools)``, whose every prompt renders
    the tools; test doubles (``MockScorer``) generate text that is parsed the same way.

    ``force=True`` makes the turn a call of one of ``tools`` (``tool_choice="any"``), ``force="name"``
    a call of that tool: the first tokens are held to the call's opening as the chat template writes
    it (:func:`call_prefix`) and to an offered name (the model picks which), then the model writes the
    arguments. Those tokens are generated, so they are scored like the others. A scorer without a
    template to read the opening from (a test double) is not forced.

    Raises:
        ToolCallingUnsupportedError: the model's chat template does not render tools.
        ToolCallParseError: the turn starts a tool call that cannot be read.
    """
    tools = [dict(t) for t in tools]
    tokenizer = getattr(scorer, "tokenizer", None)
    if tokenizer is None or not hasattr(scorer, "with_tools"):
        text, result = scorer.generate(messages, **generate_kwargs)
        return parse_tool_calls(text, tools=tools), result
    bound = scorer.with_tools(tools)
    kwargs = dict(generate_kwargs)
    if force:
        names = [force] if isinstance(force, str) else [n for n in map(_tool_name, tools) if n]
        opening = call_prefix(bound)
        if opening is None or not opening.endswith('"') or not names:
            logger.warning("cannot force a tool call: the chat template shows no call opening to hold to")
        else:
            # The opening as the template's own tokens (a special <tool_call>, as in past turns), then
            # a name spelled as the model likes ('"' may merge with the ',' after it).
            ids = tokenizer.encode(opening, add_special_tokens=False)
            targets = [f'{n}"' for n in names]
            kwargs["logits_processor"] = _holding(ids, targets, tokenizer, kwargs.get("logits_processor"))
    turn, result = _generate_and_parse(bound, tokenizer, messages, tools, kwargs)
    answered = _answered_calls(messages)
    if (
        not force
        and turn.tool_calls
        and answered
        and all(_key(c.name, c.arguments) in answered for c in turn.tool_calls)
    ):
        # Small models (Qwen2.5-Coder-0.5B) repeat a call whose result is already in the history, as
        # bare JSON, instead of answering: the agent would loop. Ask again with the tokens a call
        # needs barred, so the turn is an answer (scored under the same prompt, unconstrained).
        barred = _call_opening_ids(tokenizer)
        if barred:
            logger.info("the model repeated an answered tool call; asking it again for an answer")
            kwargs = dict(generate_kwargs, suppress_tokens=barred)
            turn, result = _generate_and_parse(bound, tokenizer, messages, tools, kwargs)
    return turn, result


_SENTINEL = "semgrad_guard_probe_tool"


def call_prefix(bound: Any) -> str | None:
    """The text a turn calling a tool opens with, up to its name, read off the chat template:
    ``<tool_call>\n{"name": "`` (Hermes / Qwen), ``[TOOL_CALLS] [{"name": "`` (Mistral), ``{"name": "``
    (Llama 3.1). None where the template renders no call with a name in it.

    ``bound``: a scorer whose ``render_prompt`` / ``render_conversation`` apply its chat template.
    """
    chat = [{"role": "user", "content": "Hello"}]
    call = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "id": "abcdefghi", "function": {"name": _SENTINEL, "arguments": {}}}
        ],
    }
    try:
        head = bound.render_prompt(chat)
        full = bound.render_conversation([*chat, call])
    except Exception:  # a template that cannot render a call: nothing to hold the turn to
        logger.debug("call_prefix: the chat template did not render a call", exc_info=True)
        return None
    if not full.startswith(head) or _SENTINEL not in full[len(head) :]:
        return None
    opening = full[len(head) :].split(_SENTINEL, 1)[0]
    return opening if opening.strip() else None


def _holding(ids: Sequence[int], targets: Sequence[str], tokenizer: Any, processors: Any = None) -> Any:
    """``processors`` plus one that holds the first generated tokens to ``ids``, then the text after
    them to one of ``targets`` until one is written; then the model writes freely. Among the tokens
    that keep to a target, the model's own scores choose, so it spells the text as it would (a
    closing quote merged with the comma after it)."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    pieces = _token_texts(tokenizer) if targets else []
    # Tokens inside a target (the only ones that can continue one), found once per call.
    inside = [i for i, p in enumerate(pieces) if p and any(p in t for t in targets)]

    class HoldToCall(LogitsProcessor):
        def __init__(self) -> None:
            self.start: int | None = None
            self.done = False

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if self.start is None:
                self.start = int(input_ids.shape[1])  # the first call sees the prompt alone
            if self.done:
                return scores
            step = int(input_ids.shape[1]) - self.start
            if step < len(ids):
                held = torch.full_like(scores, -math.inf)
                held[:, ids[step]] = 0.0
                return held
            if not targets:
                self.done = True
                return scores
            written = tokenizer.decode(input_ids[0, self.start + len(ids) :].tolist())
            if any(written.startswith(t) for t in targets):
                self.done = True
                return scores
            rest = tuple(t[len(written) :] for t in targets if t.startswith(written))
            allowed = {i for i in inside if any(r.startswith(pieces[i]) for r in rest)}
            allowed.update(i for i, p in enumerate(pieces) if p.startswith(rest))  # ends one, goes on
            if not allowed:  # the text left every target (cannot happen from an empty start)
                self.done = True
                return scores
            held = torch.full_like(scores, -math.inf)
            index = sorted(allowed)
            held[:, index] = scores[:, index]
            return held

    return LogitsProcessorList([*(processors or []), HoldToCall()])


_TOKEN_TEXTS: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()


def _token_texts(tokenizer: Any) -> list[str]:
    """Each token id's text (cached per tokenizer): what a held name may be spelled with."""
    cached = _TOKEN_TEXTS.get(tokenizer)
    if cached is None:
        vocab = tokenizer.get_vocab()
        cached = [""] * (max(vocab.values()) + 1)
        for token, i in vocab.items():
            cached[i] = tokenizer.convert_tokens_to_string([token])
        _TOKEN_TEXTS[tokenizer] = cached
    return cached


def _generate_and_parse(
    bound: Any,
    tokenizer: Any,
    messages: Any,
    tools: Sequence[Mapping[str, Any]],
    generate_kwargs: dict[str, Any],
) -> tuple[ToolTurn, Any]:
    collector = _IdCollector(generate_kwargs.pop("streamer", None))
    text, result = bound.generate(messages, streamer=collector, **generate_kwargs)
    eos = set(getattr(bound, "eos_token_ids", []))
    raw = tokenizer.decode(collector.ids, skip_special_tokens=False) if collector.ids else text
    if getattr(tokenizer, "response_template", None):
        turn = parse_tool_calls(raw, tokenizer=tokenizer, prefix=bound.render_prompt(messages), tools=tools)
    else:
        plain = tokenizer.decode([t for t in collector.ids if t not in eos], skip_special_tokens=False)
        turn = parse_tool_calls(plain if collector.ids else text, tools=tools)
        if turn.tool_calls:
            turn = ToolTurn(_strip_specials(turn.content, tokenizer), turn.tool_calls, turn.format)
    if not turn.tool_calls:
        turn = ToolTurn(content=text, tool_calls=[])  # an answer reads exactly as without tools
    return turn, result


def _key(name: str, arguments: Mapping[str, Any]) -> str:
    return name + json.dumps(arguments, sort_keys=True, default=str)


def _answered_calls(messages: Any) -> set[str]:
    """Keys of the calls in the history that a tool result follows."""
    if not isinstance(messages, Sequence) or isinstance(messages, str):
        return set()
    answered: set[str] = set()
    pending: set[str] = set()
    for m in messages:
        if not isinstance(m, Mapping):
            continue
        if m.get("role") == "assistant":
            for c in m.get("tool_calls") or []:
                fn = c.get("function", c) if isinstance(c, Mapping) else {}
                args = fn.get("arguments", fn.get("args", {}))
                if isinstance(args, str):
                    try:
                        args = json.loads(args)
                    except json.JSONDecodeError:
                        continue
                if isinstance(fn.get("name"), str) and isinstance(args, Mapping):
                    pending.add(_key(fn["name"], args))
        elif m.get("role") == "tool":
            answered |= pending
    return answered


_OPENING_IDS: weakref.WeakKeyDictionary[Any, list[int]] = weakref.WeakKeyDictionary()


def _call_opening_ids(tokenizer: Any) -> list[int]:
    """Ids of the tokens a tool call needs: any with ``{`` in it, and the call markers."""
    cached = _OPENING_IDS.get(tokenizer)
    if cached is not None:
        return cached
    try:
        texts = _token_texts(tokenizer)
    except Exception:  # a tokenizer without a vocabulary to read: no retry
        texts = []
    ids = [i for i, t in enumerate(texts) if "{" in t or t.strip() in ("<tool_call>", _MISTRAL, _PYTHON_TAG)]
    _OPENING_IDS[tokenizer] = ids
    return ids


def _strip_specials(text: str, tokenizer: Any) -> str:
    for token in sorted(getattr(tokenizer, "all_special_tokens", []) or [], key=len, reverse=True):
        if token:
            text = text.replace(token, "")
    return text.strip()
