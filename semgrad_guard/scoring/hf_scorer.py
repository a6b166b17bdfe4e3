"""``SemGradScorer``: SemGrad for any local Hugging Face causal chat model."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from ..errors import (
    ChatTemplateError,
    ConfigurationError,
    ContextLengthError,
    ControlTokenError,
    InputTooLargeError,
    ModelError,
    PromptEchoError,
    ScoringError,
    SpanError,
)
from ..messages import Message, Messages, check_text, normalize_messages
from ..results import ScoreResult
from ..spans import SpanRequest, SpanScore, offsets_by_decoding, resolve_spans, token_ranges
from .adapters import acquire_adapter
from .fastpath import (
    EXGRAD_MODES,
    LOGIT_CHUNK,
    VOCAB_CHUNK,
    ModelAdapter,
    RawScores,
    RawSpan,
    ScoringInput,
    crop_cache,
    embeddings_are_tied,
    exgrad_weight,
    memory_estimate,
    parse_bytes,
    score_ids,
)
from .identity import weights_fingerprint
from .loading import check_causal
from .profile import ModelProfile, chat_template_hash, default_layers, find_profile, profile_from_any

if TYPE_CHECKING:
    from .streaming import SpanJudge, SpanScorer, StreamChunk, StreamMode

logger = logging.getLogger(__name__)


class SemGradScorer:
    """Scores (messages, answer) pairs of a local Hugging Face chat model with SemGrad.

    One forward and one backward pass over the answer; no sampling. Thread-safe: each call keeps its
    state on its own thread, and the model's parameters, their ``requires_grad`` and ``.grad`` are
    never changed.

    Args:
        model: a causal LM (``AutoModelForCausalLM``); put in eval mode.
        tokenizer: its tokenizer, with a chat template (or pass ``chat_template``).
        profile: anchor offset and layers (a :class:`ModelProfile`, dict or JSON path). Without one,
            a shipped profile is looked up by model id and chat-template hash, else the default rule
            (first token of the generation prompt, upper half of the layers) applies.
        model_id: name recorded in results and used to find profiles (default: the config's name).
        chat_template: overrides the tokenizer's chat template.
        max_batch_size: examples per forward/backward pass in :meth:`score_batch`.
        vocab_chunk: vocabulary rows per chunk when reducing dL/dW_out.
        logit_chunk: logit entries (rows x vocabulary) held at once; bounds the vocabulary-sized memory
            of a pass whatever the answer's length (docs/method.md, "Memory").
        max_memory: memory budget of one scoring pass, in bytes or as ``"4GB"``/``"512MiB"``
            (default 4 GiB; ``None``: no budget). A request whose estimate
            (:meth:`estimate_memory`) is over it is refused with :class:`InputTooLargeError` before
            anything runs.
        exgrad_mode: ``"logits"`` or ``"weight"`` (docs/method.md); default: the profile's.
        control_tokens: an answer holding chat-template control tokens (``<|im_end|>``, role headers)
            is scored as literal text and flagged (``"score"``, the default) or refused with
            :class:`ControlTokenError` (``"refuse"``). It is never parsed as the end of the answer.
        echo: an answer that begins with the prompt (a pipeline echoing its input) has the echo cut
            off, unscored, and is flagged (``"strip"``, the default), or is refused with
            :class:`PromptEchoError` (``"refuse"``).

    Example:
        >>> from semgrad_guard.testing import tiny_chat_model
        >>> model, tokenizer = tiny_chat_model("qwen2")
        >>> scorer = SemGradScorer(model, tokenizer, profile=ModelProfile(anchor_offset=-3, layers=[2, 3]))
        >>> r = scorer.score("What gas do plants absorb?", "Carbon dioxide.")
        >>> r.anchor_offset, r.layers
        (-3, [2, 3])
    """

    tools: list[dict[str, Any]] | None = None
    """Tools (OpenAI format) rendered into every prompt through the chat template; see :meth:`with_tools`."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        profile: ModelProfile | dict[str, Any] | str | Path | None = None,
        *,
        model_id: str | None = None,
        chat_template: str | None = None,
        max_batch_size: int = 8,
        vocab_chunk: int = VOCAB_CHUNK,
        logit_chunk: int = LOGIT_CHUNK,
        max_memory: int | str | None = "4GiB",
        exgrad_mode: Literal["logits", "weight"] | None = None,
        control_tokens: Literal["score", "refuse"] = "score",
        echo: Literal["strip", "refuse"] = "strip",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self._given_model_id = model_id
        self._recognised = False  # set when a shipped profile recognises the weights
        self.model_id = model_id or getattr(model.config, "_name_or_path", None) or type(model).__name__
        check_causal(model.config, self.model_id)  # a BERT is not a chat-template problem
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)
        if not self.chat_template:
            raise ChatTemplateError(
                f"the tokenizer of {self.model_id} has no chat template; pass chat_template='...' "
                "(a Jinja template as in tokenizer_config.json) to SemGradScorer"
            )
        if model.training:
            model.eval()  # dropout would make scores random
        self.max_batch_size = max_batch_size
        self.vocab_chunk = vocab_chunk
        self.logit_chunk = logit_chunk
        self.max_memory = None if max_memory is None else parse_bytes(max_memory, "max_memory")
        if control_tokens not in ("score", "refuse"):
            raise ConfigurationError(f"control_tokens must be 'score' or 'refuse', got {control_tokens!r}")
        if echo not in ("strip", "refuse"):
            raise ConfigurationError(f"echo must be 'strip' or 'refuse', got {echo!r}")
        if exgrad_mode not in (None, *EXGRAD_MODES):
            raise ConfigurationError(f"exgrad_mode must be one of {EXGRAD_MODES}, got {exgrad_mode!r}")
        self.control_tokens = control_tokens
        self.echo = echo
        self._exgrad_mode = exgrad_mode
        # One adapter (one set of layer hooks) per model, shared by every scorer on it.
        self._adapter, self._release = acquire_adapter(model, self)
        self._control_strings = _control_strings(tokenizer)
        self._control_pattern = (
            re.compile("(" + "|".join(re.escape(t) for t in self._control_strings) + ")")
            if self._control_strings
            else None
        )
        self._special_ids = {i for i in getattr(tokenizer, "all_special_ids", []) if i is not None}
        self._tied = embeddings_are_tied(model)
        self.eos_token_ids = _eos_ids(model, tokenizer)
        self.context_window = _context_window(model, tokenizer)
        self.profile = self._resolve_profile(profile)

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model: str | Path = "default",
        *,
        gguf_file: str | None = None,
        device: str = "cpu",
        dtype: Any = None,
        trust_remote_code: bool = False,
        profile: ModelProfile | dict[str, Any] | str | Path | None = None,
        model_id: str | None = None,
        **scorer_kwargs: Any,
    ) -> SemGradScorer:
        """Load a model and tokenizer and wrap them.

        Args:
            model: ``"default"`` (the embedded SmolLM2-135M-Instruct, fetched and cached on first
                use), a registry name (``"qwen2.5-coder-0.5b"``, ``"qwen2.5-coder-1.5b"``: likewise),
                a local directory, or a hub id (where a hub is reachable).
            gguf_file: a GGUF file name inside ``model`` (needs the ``gguf`` extra).
            device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"`` (``device_map="auto"``).
            dtype: a torch dtype or its name; default float32 on CPU, the checkpoint's dtype elsewhere.
            trust_remote_code: run model code from the checkpoint (off unless you turn it on).
        """
        from .loading import load_model_and_tokenizer

        mdl, tok, resolved_id = load_model_and_tokenizer(
            model, gguf_file=gguf_file, device=device, dtype=dtype, trust_remote_code=trust_remote_code
        )
        scorer = cls(mdl, tok, profile, model_id=model_id, **scorer_kwargs)
        if model_id is None and not scorer._recognised:
            scorer.model_id = resolved_id  # the name it was loaded by, unless its weights said otherwise
        return scorer

    @property
    def adapter(self) -> ModelAdapter:
        """The model's parts and hooks as the fast path sees them (for SPS, profile search, benchmarks)."""
        return self._adapter

    @property
    def exgrad_mode(self) -> str:
        """How exgrad is taken: the constructor's choice, else the profile's."""
        return self._exgrad_mode or self.profile.exgrad_mode

    def with_profile(self, profile: ModelProfile | dict[str, Any] | str | Path) -> SemGradScorer:
        """A scorer sharing this one's model and tokenizer, with another profile."""
        other = object.__new__(SemGradScorer)
        other.__dict__.update(self.__dict__)
        other._adapter, other._release = acquire_adapter(self.model, other)  # its own share of the hooks
        other.profile = self._check_profile(profile_from_any(profile))
        return other

    def close(self) -> None:
        """Release this scorer's share of the model's layer hooks (removed when the last scorer goes).

        Happens on garbage collection anyway; call it to release deterministically. The scorer is
        unusable afterwards only if it was the last one on its model.
        """
        self._release()

    def with_tools(self, tools: Sequence[dict[str, Any]] | None) -> SemGradScorer:
        """A scorer sharing this one's model, whose prompts render ``tools`` (``apply_chat_template(tools=...)``).

        Raises :class:`~semgrad_guard.errors.ToolCallingUnsupportedError` if the chat template ignores tools.
        """
        from .tool_calls import require_tool_support

        if tools:
            require_tool_support(self)
        other = object.__new__(SemGradScorer)
        other.__dict__.update(self.__dict__)
        other._adapter, other._release = acquire_adapter(self.model, other)  # its own share of the hooks
        other.tools = [dict(t) for t in tools] if tools else None
        return other

    def _resolve_profile(self, profile: Any) -> ModelProfile:
        if profile is not None:
            return self._check_profile(profile_from_any(profile))
        found = find_profile(
            self.model_id, chat_template_hash(self.chat_template), weights_fingerprint(self.model)
        )
        if found is not None:
            if found.model_id and not self._given_model_id:
                # Recognised by its weights: the shipped name, whatever path it was loaded from,
                # so the shipped calibrator is found too (Calibrator.default_for(scorer.model_id)).
                self.model_id = found.model_id
                self._recognised = True
            return self._check_profile(found)
        offset = self.default_anchor_offset()
        message = (
            f"semgrad-guard: no profile is shipped for {self.model_id} with this chat template; SemGrad looks "
            f"at the default anchor (offset {offset}) and the upper half of the layers. To fit one: "
            "`semgrad-guard profile --labels labelled.jsonl` (best) or `--paraphrases para.jsonl` (label-free)"
        )
        logger.warning(message)
        warnings.warn(ProfileNotice(message), stacklevel=3)
        return self.default_profile()

    def default_profile(self) -> ModelProfile:
        """The profile used when none is shipped or given: the default anchor and the upper half of the layers."""
        return ModelProfile(
            anchor_offset=self.default_anchor_offset(),
            layers=default_layers(self._adapter.num_layers),
            model_id=self.model_id,
            chat_template_hash=chat_template_hash(self.chat_template),
            source="default",
        )

    def _check_profile(self, profile: ModelProfile) -> ModelProfile:
        profile.check_fits(self._adapter.num_layers)
        return profile

    def default_anchor_offset(self) -> int:
        """Offset of the first token that ``add_generation_prompt=True`` appends (-1 if it appends nothing)."""
        probe = [{"role": "user", "content": "Hello"}]
        without = self._encode(self._render(probe, add_generation_prompt=False))
        with_gp = self._encode(self._render(probe, add_generation_prompt=True))
        # Some templates end a chat differently when no reply follows (Phi-3 appends <|endoftext|>),
        # so the generation prompt is what follows the longest common prefix.
        common = 0
        while common < min(len(without), len(with_gp)) and without[common] == with_gp[common]:
            common += 1
        n = len(with_gp) - common
        return -n if n > 0 else -1

    # -- tokenisation -----------------------------------------------------------------------------
    def _render(
        self,
        chat: list[dict[str, Any]],
        *,
        add_generation_prompt: bool,
        table: dict[str, str] | None = None,
    ) -> str:
        # ``table``: the chat's from _literal_chat; the tools are rendered with the same sentinels.
        tools = _masked(self.tools, table) if table and self.tools else self.tools
        try:
            text = self.tokenizer.apply_chat_template(
                chat,
                chat_template=self.chat_template,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
                **({"tools": tools} if tools else {}),
            )
        except Exception as e:  # jinja raises its own TemplateError (e.g. "System role not supported")
            raise ChatTemplateError(f"the chat template of {self.model_id} rejected the chat: {e}") from e
        return str(text)

    def _encode(self, text: str, offsets: list[tuple[int, int]] | None = None, shift: int = 0) -> list[int]:
        """Token ids of ``text``; with ``offsets``, each token's character range (+ ``shift``) is appended to it."""
        if offsets is None:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if getattr(self.tokenizer, "is_fast", False):
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            offsets.extend((shift + a, shift + b) for a, b in enc["offset_mapping"])
            return list(enc["input_ids"])
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        offsets.extend((shift + a, shift + b) for a, b in offsets_by_decoding(self.tokenizer, ids, text))
        return ids

    def _encode_literal(self, text: str, offsets: list[tuple[int, int]] | None = None) -> list[int]:
        """Token ids of ``text`` as plain text: control-token strings in it are not parsed.

        Each control string is encoded in two pieces (its first character, then the rest), so the
        tokenizer cannot match it as a special token. Not ``split_special_tokens=True``: fast
        tokenizers implement that by flipping a flag on the shared Rust tokenizer, which races with
        every other thread encoding a prompt at the same moment.
        """
        if not self._control_pattern or not self._control_pattern.search(text):
            return self._encode(text, offsets)
        ids: list[int] = []
        pos = 0
        for i, piece in enumerate(self._control_pattern.split(text)):
            if not piece:
                continue
            if i % 2:  # a control string, kept by the capturing group
                ids += self._encode(piece[:1], offsets, pos) + self._encode(piece[1:], offsets, pos + 1)
            else:
                ids += self._encode(piece, offsets, pos)
            pos += len(piece)
        return ids

    def _literal_chat(self, chat: list[Message], *others: str) -> tuple[list[Message], dict[str, str]]:
        """``chat`` with each control string in a message replaced by a sentinel.

        Every string of a message counts, not only its content: an assistant turn's tool calls (name,
        arguments, their keys), a tool result's name and call id; so do the tools a scorer renders
        (:meth:`with_tools`). The template is rendered from this chat and :meth:`_encode_masked`
        encodes each sentinel as its control string's literal text, so an ``<|im_end|>`` a user typed
        (or a tool call carried) is characters, never a turn boundary (a forged assistant or system
        turn). Returns the chat and the sentinel -> control string table (empty, and the chat itself,
        when there is nothing to hide). Under ``control_tokens="refuse"`` such a chat raises
        :class:`ControlTokenError`.
        """
        pattern = self._control_pattern
        if pattern is None:
            return chat, {}
        texts = [*_strings(chat), *_strings(self.tools), *others]
        found = sorted({t for text in texts[: len(texts) - len(others)] for t in pattern.findall(text)})
        if not found:
            return chat, {}
        if self.control_tokens == "refuse":
            raise ControlTokenError(
                f"a message holds chat-template control tokens ({found[:3]}); refusing it as "
                "configured (control_tokens='refuse'); with control_tokens='score' it is read as literal text"
            )
        # Plain ASCII letters: the sentinel survives any filter a template applies (trim, tojson).
        mark = "SGCTRLX"
        while any(mark in t for t in texts):
            mark += "X"
        table = {f"{mark}{i}_": t for i, t in enumerate(found)}
        masked: list[Message] = _masked(chat, table)
        return masked, table

    def _encode_masked(self, text: str, table: dict[str, str]) -> list[int]:
        """Token ids of text rendered from a :meth:`_literal_chat`: sentinels become literal text."""
        if not table:
            return self._encode(text)
        pattern = re.compile("(" + "|".join(re.escape(k) for k in table) + ")")
        ids: list[int] = []
        for i, piece in enumerate(pattern.split(text)):
            if i % 2:  # the same two pieces as _encode_literal
                literal = table[piece]
                ids += self._encode(literal[:1]) + self._encode(literal[1:])
            elif piece:
                ids += self._encode(piece)
        return ids

    @staticmethod
    def _unmask(text: str, table: dict[str, str]) -> str:
        for k, t in table.items():
            text = text.replace(k, t)
        return text

    def render_prompt(self, messages: Messages) -> str:
        """The prompt text the model sees: the chat template with the generation prompt appended."""
        return self._render(normalize_messages(messages), add_generation_prompt=True)

    def render_conversation(self, messages: Messages) -> str:
        """The chat as the template writes it, without a generation prompt (e.g. ending in a tool call)."""
        return self._render(normalize_messages(messages), add_generation_prompt=False)

    def prompt_ids(self, messages: Messages) -> list[int]:
        """Prompt token ids ``x`` (chat template, generation prompt appended).

        Message content is tokenised as literal text, as answers are: a control-token string in a
        message (``<|im_end|>``, ``<|im_start|>``) is its characters, not a turn boundary.
        """
        chat, table = self._literal_chat(normalize_messages(messages))
        return self._encode_masked(self._render(chat, add_generation_prompt=True, table=table), table)

    def answer_ids(self, messages: Messages, answer: str, prompt_ids: list[int] | None = None) -> list[int]:
        """Answer token ids ``y``, ending with the end-of-turn token (docs/method.md, "Inputs").

        The answer is tokenised as literal text: an ``<|im_end|>`` inside it is the characters, not the
        end of the turn, so nothing after it escapes scoring.
        """
        chat, table = self._literal_chat(normalize_messages(messages), answer)
        x = prompt_ids if prompt_ids is not None else self.prompt_ids(chat)
        return self._answer_ids(chat, answer, x, table=table)

    def _answer_ids(
        self,
        chat: list[dict[str, Any]],
        answer: str,
        x: list[int],
        prompt_text: str | None = None,
        table: dict[str, str] | None = None,
        offsets: list[tuple[int, int]] | None = None,
    ) -> list[int]:
        # ``chat`` and ``prompt_text`` come from _literal_chat (sentinels in place of control strings).
        # ``offsets`` (for spans) receives each answer token's character range in ``answer``.
        table = table or {}
        if prompt_text is None:
            prompt_text = self._render(chat, add_generation_prompt=True, table=table)
        full = self._render(
            [*chat, {"role": "assistant", "content": answer}], add_generation_prompt=False, table=table
        )
        if full.startswith(prompt_text):
            rest = full[len(prompt_text) :]
            # The template may trim the content; find it as rendered.
            content = next((c for c in (answer, answer.strip()) if c and c in rest), "")
            start = rest.find(content) if content else 0
            before, after = rest[:start], rest[start + len(content) :]
            # Text the template puts before the content (after its last control token) is tokenised
            # with the content, as the model would have produced it (" Paris" is one token).
            cut = max((before.rfind(t) + len(t) for t in self._control_strings if t in before), default=0)
            head = self._encode(before[:cut]) if cut else []
            body_offsets: list[tuple[int, int]] | None = [] if offsets is not None else None
            body = self._encode_literal(before[cut:] + content, body_offsets)
            tail = self._encode(after)
            if self._encode_masked(prompt_text + before[:cut], table) == x + head:
                for i, t in enumerate(tail):
                    if t in self.eos_token_ids:
                        if offsets is not None and body_offsets is not None:
                            # Body offsets count from before[cut:]; the content sits at c0 in the answer.
                            lead, c0 = len(before) - cut, answer.find(content) if content else 0
                            lo, hi = c0, c0 + len(content)
                            offsets.extend([(0, 0)] * len(head))
                            offsets.extend(
                                (min(max(a - lead + c0, lo), hi), min(max(b - lead + c0, lo), hi))
                                for a, b in body_offsets
                            )
                            offsets.extend([(len(answer), len(answer))] * (i + 1))
                        return head + body + tail[: i + 1]
        # The template rewrote history or has no end-of-turn marker: tokenize the answer alone.
        alone: list[tuple[int, int]] | None = [] if offsets is not None else None
        ids = self._encode_literal(answer, alone) + [self.eos_token_ids[0]]
        if offsets is not None and alone is not None:
            offsets.extend([*alone, (len(answer), len(answer))])
        return ids

    def has_control_tokens(self, text: str) -> bool:
        """True if ``text`` holds one of the tokenizer's control-token strings (``<|im_end|>``, ...)."""
        return any(t in text for t in self._control_strings)

    def _prepare(
        self, messages: Messages, answer: str
    ) -> tuple[list[Message], str, dict[str, str], str, int, list[str]]:
        """Normalise the chat, render its prompt, cut an echoed prompt off the answer.

        Returns (chat and prompt text with control strings masked, the mask table, answer text to
        score, characters cut, flags).
        """
        chat, table = self._literal_chat(normalize_messages(messages), answer)
        flags: list[str] = ["control_tokens"] if table else []
        start = 0
        masked_prompt = self._render(chat, add_generation_prompt=True, table=table)
        prompt_text = self._unmask(masked_prompt, table)
        chat_text = [{**m, "content": self._unmask(m["content"], table)} for m in chat]
        echoes = [prompt_text]
        # The prompt as a pipeline decodes it (skip_special_tokens=True): its turns, their role
        # names and text, without the control tokens.
        last = chat_text[-1]["content"] if chat_text else ""
        if last and last in answer:  # an echo holds the last message: else skip the encode + decode
            decoded = self.tokenizer.decode(
                self._encode_masked(masked_prompt, table), skip_special_tokens=True
            )
            bare = "".join(m["content"] for m in chat_text).strip()
            if decoded.strip() not in ("", bare) and decoded != prompt_text:  # only with template context
                echoes.append(decoded)
        raw = None
        if len(chat) == 1 and chat[0]["role"] == "user" and _whole_prompt(chat_text[0]["content"]):
            # A text-completion pipeline (HuggingFacePipeline with return_full_text=True) returns its
            # raw prompt + completion; LangChain hands the prompt over as one user message.
            raw = chat_text[0]["content"]
            echoes.append(raw)
        for echo in echoes:
            if (
                echo
                and answer.startswith(echo)
                and len(answer) > len(echo)
                and (echo is not raw or answer[len(echo)].isspace())
            ):
                if self.echo == "refuse":
                    raise PromptEchoError(
                        "the answer begins with the prompt (the pipeline echoes its input: set "
                        "return_full_text=False); pass only the completion, or use echo='strip'"
                    )
                start = len(echo)
                flags.append("prompt_echo_stripped")
                logger.warning(
                    "the answer began with the prompt (%d characters): the echo was cut off and not scored; "
                    "set return_full_text=False on the pipeline",
                    start,
                )
                break
        text = answer[start:]
        if self.has_control_tokens(text):
            if self.control_tokens == "refuse":
                raise ControlTokenError(
                    "the answer holds chat-template control tokens "
                    f"({[t for t in self._control_strings if t in text][:3]}); refusing it as configured "
                    "(control_tokens='refuse'); with control_tokens='score' it is scored as literal text"
                )
            if "control_tokens" not in flags:
                flags.append("control_tokens")
        return chat, masked_prompt, table, text, start, flags

    def _check_lengths(self, x: list[int], y: list[int]) -> None:
        if len(x) + len(y) > self.context_window:
            raise ContextLengthError(len(x), len(y), self.context_window)
        self.profile.check_fits(self._adapter.num_layers, prompt_tokens=len(x))
        if self.max_memory is not None:
            need = self.estimate_memory(len(x), len(y))
            if need > self.max_memory:
                raise InputTooLargeError(
                    f"scoring {len(y)} answer tokens after {len(x)} prompt tokens needs about "
                    f"{need / 2**20:,.0f} MiB, over the memory budget of {self.max_memory / 2**20:,.0f} MiB; "
                    "send a shorter answer or raise max_memory (serve: --max-memory)"
                )

    def estimate_memory(self, prompt_tokens: int, answer_tokens: int, batch: int = 1) -> int:
        """Bytes one scoring pass of ``batch`` such examples allocates above the loaded model (an upper
        bound on CPU; docs/method.md, "Memory"): a fixed vocabulary term plus terms growing with length."""
        return memory_estimate(
            self._adapter,
            prompt_tokens=prompt_tokens,
            answer_tokens=answer_tokens,
            anchor_offset=self.profile.anchor_offset,
            layers=self.profile.layers,
            batch=batch,
            logit_chunk=self.logit_chunk,
            vocab_chunk=self.vocab_chunk,
        )

    def max_answer_tokens(self, prompt_tokens: int) -> int:
        """The longest answer the memory budget and the context allow after ``prompt_tokens``."""
        hi = max(0, self.context_window - prompt_tokens)
        if self.max_memory is None:
            return hi
        lo = 0
        while lo < hi:  # the estimate grows with the answer
            mid = (lo + hi + 1) // 2
            lo, hi = (
                (mid, hi) if self.estimate_memory(prompt_tokens, mid) <= self.max_memory else (lo, mid - 1)
            )
        return lo

    def check(self, messages: Messages, answer: str) -> None:
        """Raise what :meth:`score` would raise on this pair's input (chat, control tokens, context
        length), without running the model: tokenizing only, so a batch can be refused before any scoring."""
        chat, prompt_text, table, text, _, _ = self._prepare(messages, answer)
        x = self._encode_masked(prompt_text, table)
        self._check_lengths(x, self._answer_ids(chat, text, x, prompt_text, table))

    # -- scoring ----------------------------------------------------------------------------------
    def score(self, messages: Messages, answer: str, *, spans: SpanRequest = None) -> ScoreResult:
        """SemGrad and companions for one answer. ``messages``: a string or a list of role/content dicts.

        ``spans``: ``"sentences"`` (:func:`~semgrad_guard.split_sentences`) or ``(start, end)``
        character offsets into ``answer`` also scores each span on its own tokens' loss, in the same
        pass (``ScoreResult.spans``, docs/spans.md).

        Raises:
            SpanError: ``spans`` is malformed, out of range, or a span holds no scored token.
        """
        return self._score_pairs(_check_pairs([(messages, answer)]), [spans])[0]

    def score_batch(
        self, pairs: Sequence[tuple[Messages, str]], *, spans: Literal["sentences"] | None = None
    ) -> list[ScoreResult]:
        """Score many answers, batched ``max_batch_size`` at a time (similar lengths together).

        ``spans="sentences"`` scores each answer's sentences too (``ScoreResult.spans``).

        Raises:
            ScoringError: a pair is not ``(messages, answer)``, an answer or content is not a string
                (or holds a lone surrogate), or a message is malformed; the message says which.
            SpanError: ``spans`` is neither None nor ``"sentences"``.
        """
        if spans not in (None, "sentences"):
            raise SpanError(
                f"score_batch takes spans=None or 'sentences', got {spans!r}; pass character offsets "
                "to score(), one answer at a time"
            )
        pairs = _check_pairs(pairs)
        return self._score_pairs(pairs, [spans] * len(pairs))

    def _score_pairs(self, pairs: list[tuple[Messages, str]], requests: list[Any]) -> list[ScoreResult]:
        examples, notes = [], []
        token_spans: list[list[tuple[int, int]] | None] = []
        for (messages, answer), request in zip(pairs, requests, strict=True):
            chat, prompt_text, table, text, start, flags = self._prepare(messages, answer)
            x = self._encode_masked(prompt_text, table)
            offsets: list[tuple[int, int]] | None = [] if request is not None else None
            y = self._answer_ids(chat, text, x, prompt_text, table, offsets)
            self._check_lengths(x, y)
            chars = resolve_spans(request, answer, start)
            if chars is not None and offsets is not None:
                shifted = [(a + start, b + start) for a, b in offsets]  # into the caller's answer
                token_spans.append(token_ranges(chars, shifted))
            else:
                token_spans.append(None)
            examples.append(ScoringInput(x, y))
            notes.append((answer, chars, start, flags))
        any_spans = any(t is not None for t in token_spans)
        results = self.score_token_ids(examples, spans=token_spans if any_spans else None)
        out = []
        for r, (answer, chars, start, flags) in zip(results, notes, strict=True):
            update: dict[str, Any] = {"answer_start": start, "flags": flags} if (start or flags) else {}
            if chars is not None and r.spans is not None:
                update["spans"] = _with_text(r.spans, chars, answer)
            out.append(r.model_copy(update=update) if update else r)
        return out

    def score_token_ids(
        self,
        examples: Sequence[ScoringInput],
        *,
        spans: Sequence[Sequence[tuple[int, int]] | None] | None = None,
    ) -> list[ScoreResult]:
        """Score examples given as token ids (answer ids must end where generation stopped).

        ``spans[i]``: answer-token ranges ``(t0, t1)`` of example i to score on their own; their
        ``SpanScore`` s carry token offsets only (``start = end = 0``, ``text = ""``).
        """
        raws = self._raw_scores(examples, spans)
        if self.exgrad_mode == "weight":
            raws = [self._with_weight_exgrad(raw, e) for raw, e in zip(raws, examples, strict=True)]
        return [self._result(raw) for raw in raws]

    def _with_weight_exgrad(self, raw: RawScores, example: ScoringInput) -> RawScores:
        if not self._tied:
            return raw  # untied: the weight's gradient is the logits path alone
        ex = exgrad_weight(self._adapter, example, vocab_chunk=self.vocab_chunk)
        alpha = math.exp(-raw.mean_entropy)
        spans = None
        if raw.spans is not None:  # one full pass per span: a research mode
            spans = []
            for sp in raw.spans:
                sx = exgrad_weight(
                    self._adapter, example, vocab_chunk=self.vocab_chunk, span=(sp.token_start, sp.token_end)
                )
                a = math.exp(-sp.mean_entropy)
                spans.append(dataclasses.replace(sp, exgrad=sx, hybridgrad=a * sx + (1 - a) * sp.semgrad))
        return dataclasses.replace(
            raw, exgrad=ex, hybridgrad=alpha * ex + (1 - alpha) * raw.semgrad, spans=spans
        )

    def semgrad_by_layer(self, examples: Sequence[ScoringInput]) -> list[dict[int, float]]:
        """SemGrad of each of the profile's layers alone, at the profile's anchor, from one pass.

        The SemGrad of any subset of these layers is the mean of its layers' values, so one pass
        over all candidate layers replaces one pass per layer band (``eval --sweep-anchor``).
        """
        layers = list(self.profile.layers)
        return [dict(zip(layers, raw.layer_semgrad, strict=True)) for raw in self._raw_scores(examples)]

    def _raw_scores(
        self,
        examples: Sequence[ScoringInput],
        spans: Sequence[Sequence[tuple[int, int]] | None] | None = None,
    ) -> list[RawScores]:
        order = sorted(
            range(len(examples)), key=lambda i: len(examples[i].prompt_ids) + len(examples[i].answer_ids)
        )
        results: list[RawScores | None] = [None] * len(examples)
        for start in range(0, len(order), self.max_batch_size):
            idx = order[start : start + self.max_batch_size]
            raws = score_ids(
                self._adapter,
                [examples[i] for i in idx],
                anchor_offset=self.profile.anchor_offset,
                layers=self.profile.layers,
                vocab_chunk=self.vocab_chunk,
                logit_chunk=self.logit_chunk,
                spans=None if spans is None else [spans[i] for i in idx],
            )
            for i, raw in zip(idx, raws, strict=True):
                results[i] = raw
        return [r for r in results if r is not None]

    def _result(self, raw: Any) -> ScoreResult:
        return ScoreResult(
            semgrad=raw.semgrad,
            hybridgrad=raw.hybridgrad,
            exgrad=raw.exgrad,
            nll=raw.nll,
            mean_nll=raw.mean_nll,
            mean_entropy=raw.mean_entropy,
            answer_tokens=raw.answer_tokens,
            prompt_tokens=raw.prompt_tokens,
            anchor_offset=self.profile.anchor_offset,
            layers=list(self.profile.layers),
            model_id=self.model_id,
            exgrad_mode=self.exgrad_mode,  # type: ignore[arg-type]
            spans=None if raw.spans is None else [_span_score(sp) for sp in raw.spans],
        )

    async def ascore(self, messages: Messages, answer: str, *, spans: SpanRequest = None) -> ScoreResult:
        """:meth:`score` in a worker thread: the event loop keeps running."""
        if spans is None:  # the two-argument call: a subclass or wrapper of score() keeps working
            return await asyncio.to_thread(self.score, messages, answer)
        return await asyncio.to_thread(lambda: self.score(messages, answer, spans=spans))

    async def ascore_batch(
        self, pairs: Sequence[tuple[Messages, str]], *, spans: Literal["sentences"] | None = None
    ) -> list[ScoreResult]:
        """:meth:`score_batch` in a worker thread."""
        if spans is None:
            return await asyncio.to_thread(self.score_batch, list(pairs))
        return await asyncio.to_thread(lambda: self.score_batch(list(pairs), spans=spans))

    # -- generation -------------------------------------------------------------------------------
    def generate(
        self,
        messages: Messages,
        *,
        max_new_tokens: int = 128,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float | None = None,
        seed: int | None = None,
        spans: SpanRequest = None,
        **generate_kwargs: Any,
    ) -> tuple[str, ScoreResult]:
        """Generate an answer and score exactly the generated ids, reusing generation's KV cache.

        Returns ``(answer_text, ScoreResult)``. ``spans="sentences"`` (or character offsets into the
        answer, when known in advance) scores the answer's spans too, in the same pass (``result.spans``). With ``do_sample=True`` and a ``seed``, the tokens are drawn
        from a ``torch.Generator`` of this call alone: the same seed gives the same text in any thread,
        and torch's global RNG is never reseeded.
        """
        chat = normalize_messages(messages)
        x = self.prompt_ids(chat)
        self._check_lengths(x, [self.eos_token_ids[0]])
        # The context and the memory budget bound the answer; one cut short is flagged "truncated".
        max_new_tokens = min(max_new_tokens, self.max_answer_tokens(len(x)))
        if max_new_tokens < 1:
            self._check_lengths(x, [self.eos_token_ids[0]] * 2)  # says which limit
        device = self._adapter.output_weight.device
        input_ids = torch.tensor([x], device=device)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            return_dict_in_generate=True,
            use_cache=True,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.eos_token_ids[0],
        )
        if do_sample:
            kwargs["temperature"] = temperature
            if top_p is not None:
                kwargs["top_p"] = top_p
        else:
            # Greedy: neutralise sampling defaults a checkpoint's generation_config may carry.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        kwargs.update(generate_kwargs)
        if seed is not None and kwargs.get("do_sample"):
            # A per-call generator: the process-wide RNG is never reseeded, and concurrent calls with the
            # same seed give the same text. The sampler runs last, after temperature/top-k/top-p.
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList(
                [*(kwargs.get("logits_processor") or []), _SeededSampler(seed)]
            )
        a = len(x) + self.profile.anchor_offset
        # Step 4: record the residual stream entering layer min(S) from the anchor on, so scoring
        # starts there and the layers below it never run again (docs/method.md, "The fast path"),
        # and each step's raw logits (up to one logit chunk), so the output projection does not
        # run again over the answer either.
        logit_rows = min(max_new_tokens, self.logit_chunk // self._adapter.output_weight.shape[0])
        with (
            torch.no_grad(),
            self._adapter.recording(min(self.profile.layers), keep_from=a, logit_rows=logit_rows) as recorder,
        ):
            out = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs
            )
        generated = out.sequences[0, len(x) :].tolist()
        y = generated
        for i, t in enumerate(generated):
            if t in self.eos_token_ids:
                y = generated[: i + 1]
                break
        if not y:
            y = [self.eos_token_ids[0]]
        body = y[:-1] if y[-1] in self.eos_token_ids else y
        # Decoded as is: a control token the model produced stays in the text it was scored with.
        text = self.tokenizer.decode(body, skip_special_tokens=False)
        flags = ["control_tokens"] if any(t in self._special_ids for t in body) else []
        if y[-1] not in self.eos_token_ids:
            # Cut at max_new_tokens (or the context): scored as returned, without an end-of-turn, so
            # rescoring the text (which appends one) gives a slightly different score.
            flags.append("truncated")
        cache = getattr(out, "cache", None)  # transformers >= 5.2x; `past_key_values` before
        if cache is None:
            cache = getattr(out, "past_key_values", None)
        example = ScoringInput(x, y)
        self._check_lengths(x, y)
        chars = resolve_spans(spans, text)
        token_spans = None
        if chars is not None:
            offsets = offsets_by_decoding(self.tokenizer, body, text)
            offsets += [(len(text), len(text))] * (len(y) - len(body))
            token_spans = [token_ranges(chars, offsets)]

        def finish(r: ScoreResult) -> tuple[str, ScoreResult]:
            update: dict[str, Any] = {"flags": flags}
            if chars is not None and r.spans is not None:
                update["spans"] = _with_text(r.spans, chars, text)
            return text, r.model_copy(update=update)

        if cache is not None and crop_cache(cache, a):
            # Fed: the prompt, then every generated token but the last; used: the anchor's tail + y[:-1].
            residuals = recorder.residuals(
                fed=len(x) + len(generated) - 1, length=-self.profile.anchor_offset + len(y) - 1
            )
            raw = score_ids(
                self._adapter,
                [example],
                anchor_offset=self.profile.anchor_offset,
                layers=self.profile.layers,
                vocab_chunk=self.vocab_chunk,
                logit_chunk=self.logit_chunk,
                prefix_cache=cache,
                residuals=residuals,
                spans=token_spans,
                logits=recorder.logits(steps=len(generated), length=len(y)),
            )[0]
            if self.exgrad_mode == "weight":
                raw = self._with_weight_exgrad(raw, example)
            return finish(self._result(raw))
        return finish(self.score_token_ids([example], spans=token_spans)[0])

    async def agenerate(self, messages: Messages, **kwargs: Any) -> tuple[str, ScoreResult]:
        """:meth:`generate` in a worker thread."""
        return await asyncio.to_thread(lambda: self.generate(messages, **kwargs))

    def stream(
        self,
        messages: Messages,
        *,
        mode: StreamMode = "observe",
        span_judge: SpanJudge | None = None,
        span_scorer: SpanScorer | None = None,
        **generate_kwargs: Any,
    ) -> Iterator[StreamChunk]:
        """:meth:`generate`, streamed: text chunks as they are generated, then one chunk with the score.

        Scoring starts the moment the last token is sampled, from generation's own KV cache and
        recorded residual states (no re-encoding); the last chunk's ``text`` is exactly what was
        scored and its ``result`` equals :meth:`generate`'s. ``generate_kwargs`` as for :meth:`generate`.

        ``mode``: ``"observe"`` (text as generated), ``"gate"`` (one sentence at a time, each released
        once ``span_judge.judge(span_score)`` keeps it; ``abstain`` stops generation there) or
        ``"hold"`` (one chunk, once scored); see :mod:`semgrad_guard.scoring.streaming`.
        ``span_scorer(messages, answer_so_far, (start, end))`` replaces the span scores gate mode
        computes (a test double, say). Closing the iterator stops generation at the next token.

        Example:
            >>> from semgrad_guard.testing import tiny_scorer
            >>> chunks = list(tiny_scorer("qwen2").stream("Say hi.", max_new_tokens=4))
            >>> chunks[-1].result is not None and all(c.result is None for c in chunks[:-1])
            True
        """
        from .streaming import stream

        return stream(
            self, messages, mode=mode, span_judge=span_judge, span_scorer=span_scorer, **generate_kwargs
        )

    def astream(
        self,
        messages: Messages,
        *,
        mode: StreamMode = "observe",
        span_judge: SpanJudge | None = None,
        span_scorer: SpanScorer | None = None,
        **generate_kwargs: Any,
    ) -> AsyncIterator[StreamChunk]:
        """:meth:`stream` for async code (``async for chunk in scorer.astream(...)``); never blocks the loop.
        Cancelling the consuming task, or ``aclose()``, stops generation at the next token."""
        from .streaming import astream

        return astream(
            self, messages, mode=mode, span_judge=span_judge, span_scorer=span_scorer, **generate_kwargs
        )

    def __repr__(self) -> str:
        return (
            f"SemGradScorer(model_id={self.model_id!r}, anchor_offset={self.profile.anchor_offset}, "
            f"layers={self.profile.layers}, profile_source={self.profile.source!r})"
        )


class _SeededSampler:
    """Logits processor that draws the next token from its own generator and leaves only that token possible.

    Runs after the sampling warpers (transformers appends user processors last), so it samples exactly
    the distribution generate would; generate's own draw then has one choice.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.generator: torch.Generator | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.generator is None:
            self.generator = torch.Generator(device=scores.device)
            self.generator.manual_seed(self.seed)
        probs = torch.softmax(scores.float(), dim=-1)
        pick = torch.multinomial(probs, num_samples=1, generator=self.generator)
        only = torch.full_like(scores, float("-inf"))
        return only.scatter_(1, pick, 0.0)


def _span_score(raw: RawSpan) -> SpanScore:
    return SpanScore(
        start=0,
        end=0,
        token_start=raw.token_start,
        token_end=raw.token_end,
        text="",
        semgrad=raw.semgrad,
        exgrad=raw.exgrad,
        hybridgrad=raw.hybridgrad,
        nll=raw.nll,
        mean_nll=raw.mean_nll,
        mean_entropy=raw.mean_entropy,
    )


def _with_text(spans: list[SpanScore], chars: list[tuple[int, int]], answer: str) -> list[SpanScore]:
    """Token-only span scores with their character offsets and text in ``answer``."""
    return [
        sp.model_copy(update={"start": a, "end": b, "text": answer[a:b]})
        for sp, (a, b) in zip(spans, chars, strict=True)
    ]


def _check_pairs(pairs: Any) -> list[tuple[Messages, str]]:
    """Each element must be a ``(messages, answer)`` pair with a string answer (checked before any tokenising)."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise ScoringError(f"pairs must be a list of (messages, answer) tuples, got {type(pairs).__name__}")
    out: list[tuple[Messages, str]] = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            got = (
                f"a {type(pair).__name__} of {len(pair)}"
                if isinstance(pair, Sequence)
                else type(pair).__name__
            )
            raise ScoringError(f"pairs[{i}] must be a (messages, answer) pair, got {got}")
        where = "answer" if len(pairs) == 1 else f"pairs[{i}] answer"
        out.append((pair[0], check_text(pair[1], where)))
    return out


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    for value in (eos, getattr(tokenizer, "eos_token_id", None)):
        if value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v not in ids:
                ids.append(int(v))
    if not ids:
        raise ModelError(
            "neither the generation config nor the tokenizer defines an end-of-turn (eos) token id"
        )
    return ids


class ProfileNotice(UserWarning):
    """Shown once when a model has no shipped profile (visible, not only logged)."""


def _strings(value: Any) -> Iterator[str]:
    """Every string in a message, a chat or a tool list: values and keys, however deep."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _masked(value: Any, table: dict[str, str]) -> Any:
    """``value`` (a chat, a tool list) with each control string of ``table`` replaced by its sentinel."""
    if not table:
        return value
    back = {t: k for k, t in table.items()}
    pattern = re.compile("|".join(re.escape(t) for t in sorted(back, key=len, reverse=True)))

    def mask(v: Any) -> Any:
        if isinstance(v, str):
            return pattern.sub(lambda g: back[g.group(0)], v)
        if isinstance(v, Mapping):
            return {mask(k): mask(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [mask(x) for x in v]
        return v

    return mask(value)


def _whole_prompt(text: str) -> bool:
    """Whether an answer starting with ``text`` is taken for an echo of the raw prompt.

    Only a prompt an answer would not legitimately repeat: at least three words, ending a sentence
    or a line ("When does water boil?"). "Paris" -> "Paris is the capital of France." and
    "2+2" -> "2+2 = 4." are answers, not echoes.
    """
    return len(text.split()) >= 3 and (text.endswith("\n") or text.rstrip()[-1:] in ".?!:;")


def _control_strings(tokenizer: Any) -> list[str]:
    """The strings the tokenizer turns into special tokens (role headers, end-of-turn, ...)."""
    found = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(tok, "special", False):
            found.add(str(tok))
    return sorted((t for t in found if t), key=len, reverse=True)


def _context_window(model: Any, tokenizer: Any) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    limit = getattr(config, "max_position_embeddings", None) or 2048
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < limit:
        limit = tok_limit
    return int(limit)
