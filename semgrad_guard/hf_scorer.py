"""``SemGradScorer``: SemGrad for any local Hugging Face causal chat model."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import ChatTemplateError, ContextLengthError, ModelError
from .fastpath import ModelAdapter, RawScores, ScoringInput, crop_cache, score_ids
from .messages import Messages, normalize_messages
from .profile import ModelProfile, chat_template_hash, default_layers, find_profile, profile_from_any
from .results import ScoreResult

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


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
        vocab_chunk: int = 8192,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id or getattr(model.config, "_name_or_path", None) or type(model).__name__
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
        self._adapter = ModelAdapter(model)
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
                use), a local directory, or a hub id (where a hub is reachable).
            gguf_file: a GGUF file name inside ``model`` (needs the ``gguf`` extra).
            device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"`` (``device_map="auto"``).
            dtype: a torch dtype or its name; default float32 on CPU, the checkpoint's dtype elsewhere.
            trust_remote_code: run model code from the checkpoint (off unless you turn it on).
        """
        from .loading import load_model_and_tokenizer

        mdl, tok, resolved_id = load_model_and_tokenizer(
            model, gguf_file=gguf_file, device=device, dtype=dtype, trust_remote_code=trust_remote_code
        )
        return cls(mdl, tok, profile, model_id=model_id or resolved_id, **scorer_kwargs)

    def with_profile(self, profile: ModelProfile | dict[str, Any] | str | Path) -> SemGradScorer:
        """A scorer sharing this one's model and tokenizer, with another profile."""
        other = object.__new__(SemGradScorer)
        other.__dict__.update(self.__dict__)
        other.profile = self._check_profile(profile_from_any(profile))
        return other

    def with_tools(self, tools: Sequence[dict[str, Any]] | None) -> SemGradScorer:
        """A scorer sharing this one's model, whose prompts render ``tools`` (``apply_chat_template(tools=...)``).

        Raises :class:`~semgrad_guard.errors.ToolCallingUnsupportedError` if the chat template ignores tools.
        """
        from .tool_calls import require_tool_support

        if tools:
            require_tool_support(self)
        other = object.__new__(SemGradScorer)
        other.__dict__.update(self.__dict__)
        other.tools = [dict(t) for t in tools] if tools else None
        return other

    def _resolve_profile(self, profile: Any) -> ModelProfile:
        if profile is not None:
            return self._check_profile(profile_from_any(profile))
        found = find_profile(self.model_id, chat_template_hash(self.chat_template))
        if found is not None:
            return self._check_profile(found)
        offset = self.default_anchor_offset()
        logger.warning(
            "no stored profile for %s with this chat template: using the default anchor (offset %d, the first "
            "token of the generation prompt) and the upper half of the layers; run `semgrad-guard profile` "
            "to compute one",
            self.model_id,
            offset,
        )
        return ModelProfile(
            anchor_offset=offset,
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
    def _render(self, chat: list[dict[str, Any]], *, add_generation_prompt: bool) -> str:
        try:
            text = self.tokenizer.apply_chat_template(
                chat,
                chat_template=self.chat_template,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
                **({"tools": self.tools} if self.tools else {}),
            )
        except Exception as e:  # jinja raises its own TemplateError (e.g. "System role not supported")
            raise ChatTemplateError(f"the chat template of {self.model_id} rejected the chat: {e}") from e
        return str(text)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render_prompt(self, messages: Messages) -> str:
        """The prompt text the model sees: the chat template with the generation prompt appended."""
        return self._render(normalize_messages(messages), add_generation_prompt=True)

    def prompt_ids(self, messages: Messages) -> list[int]:
        """Prompt token ids ``x`` (chat template, generation prompt appended)."""
        return self._encode(self.render_prompt(messages))

    def answer_ids(self, messages: Messages, answer: str, prompt_ids: list[int] | None = None) -> list[int]:
        """Answer token ids ``y``, ending with the end-of-turn token (docs/method.md, "Inputs")."""
        chat = normalize_messages(messages)
        x = prompt_ids if prompt_ids is not None else self.prompt_ids(chat)
        full = self._encode(
            self._render([*chat, {"role": "assistant", "content": answer}], add_generation_prompt=False)
        )
        if full[: len(x)] == x:
            rest = full[len(x) :]
            for i, t in enumerate(rest):
                if t in self.eos_token_ids:
                    return rest[: i + 1]
        # The template rewrote history or has no end-of-turn marker: tokenize the answer alone.
        return self._encode(answer) + [self.eos_token_ids[0]]

    def _check_lengths(self, x: list[int], y: list[int]) -> None:
        if len(x) + len(y) > self.context_window:
            raise ContextLengthError(len(x), len(y), self.context_window)
        self.profile.check_fits(self._adapter.num_layers, prompt_tokens=len(x))

    # -- scoring ----------------------------------------------------------------------------------
    def score(self, messages: Messages, answer: str) -> ScoreResult:
        """SemGrad and companions for one answer. ``messages``: a string or a list of role/content dicts."""
        return self.score_batch([(messages, answer)])[0]

    def score_batch(self, pairs: Sequence[tuple[Messages, str]]) -> list[ScoreResult]:
        """Score many answers, batched ``max_batch_size`` at a time (similar lengths together)."""
        examples = []
        for messages, answer in pairs:
            x = self.prompt_ids(messages)
            y = self.answer_ids(messages, answer, prompt_ids=x)
            self._check_lengths(x, y)
            examples.append(ScoringInput(x, y))
        return self.score_token_ids(examples)

    def score_token_ids(self, examples: Sequence[ScoringInput]) -> list[ScoreResult]:
        """Score examples given as token ids (answer ids must end where generation stopped)."""
        return [self._result(raw) for raw in self._raw_scores(examples)]

    def semgrad_by_layer(self, examples: Sequence[ScoringInput]) -> list[dict[int, float]]:
        """SemGrad of each of the profile's layers alone, at the profile's anchor, from one pass.

        The SemGrad of any subset of these layers is the mean of its layers' values, so one pass
        over all candidate layers replaces one pass per layer band (``eval --sweep-anchor``).
        """
        layers = list(self.profile.layers)
        return [dict(zip(layers, raw.layer_semgrad, strict=True)) for raw in self._raw_scores(examples)]

    def _raw_scores(self, examples: Sequence[ScoringInput]) -> list[RawScores]:
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
        )

    async def ascore(self, messages: Messages, answer: str) -> ScoreResult:
        """:meth:`score` in a worker thread: the event loop keeps running."""
        return await asyncio.to_thread(self.score, messages, answer)

    async def ascore_batch(self, pairs: Sequence[tuple[Messages, str]]) -> list[ScoreResult]:
        """:meth:`score_batch` in a worker thread."""
        return await asyncio.to_thread(self.score_batch, list(pairs))

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
        **generate_kwargs: Any,
    ) -> tuple[str, ScoreResult]:
        """Generate an answer and score exactly the generated ids, reusing generation's KV cache.

        Returns ``(answer_text, ScoreResult)``. Sampling is seeded per call when ``seed`` is given.
        """
        chat = normalize_messages(messages)
        x = self.prompt_ids(chat)
        self._check_lengths(x, [self.eos_token_ids[0]])
        max_new_tokens = min(max_new_tokens, self.context_window - len(x))
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
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
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
        text = self.tokenizer.decode([t for t in y if t not in self.eos_token_ids], skip_special_tokens=True)
        a = len(x) + self.profile.anchor_offset
        cache = getattr(out, "cache", None)  # transformers >= 5.2x; `past_key_values` before
        if cache is None:
            cache = getattr(out, "past_key_values", None)
        example = ScoringInput(x, y)
        self._check_lengths(x, y)
        if cache is not None and crop_cache(cache, a):
            raw = score_ids(
                self._adapter,
                [example],
                anchor_offset=self.profile.anchor_offset,
                layers=self.profile.layers,
                vocab_chunk=self.vocab_chunk,
                prefix_cache=cache,
            )[0]
            return text, self._result(raw)
        return text, self.score_token_ids([example])[0]

    async def agenerate(self, messages: Messages, **kwargs: Any) -> tuple[str, ScoreResult]:
        """:meth:`generate` in a worker thread."""
        return await asyncio.to_thread(lambda: self.generate(messages, **kwargs))

    def __repr__(self) -> str:
        return (
            f"SemGradScorer(model_id={self.model_id!r}, anchor_offset={self.profile.anchor_offset}, "
            f"layers={self.profile.layers}, profile_source={self.profile.source!r})"
        )


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


def _context_window(model: Any, tokenizer: Any) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    limit = getattr(config, "max_position_embeddings", None) or 2048
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < limit:
        limit = tok_limit
    return int(limit)
