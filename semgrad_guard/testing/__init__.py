"""Tiny random chat models with a real tokenizer, for tests and examples that must not download weights.

The tokenizer is SmolLM2's real BPE vocabulary (49,152 tokens, Apache-2.0), shipped with the package.
Each architecture gets its own family's chat-template shape and special tokens, added to that
vocabulary, so anchors, end-of-turn tokens and template quirks behave as with the real models.

Example:
    >>> from semgrad_guard.testing import tiny_scorer
    >>> scorer = tiny_scorer("llama")
    >>> r = scorer.score("What is the boiling point of water?", "100 degrees Celsius.")
    >>> r.answer_tokens > 1
    True
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..results import ScoreResult
    from ..scoring.hf_scorer import SemGradScorer

ARCHITECTURES: tuple[str, ...] = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "mistral", "phi3")

_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_LLAMA3 = (
    "{{ '<|begin_of_text|>' }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
_GEMMA = (
    "{{ '<bos>' }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
_MISTRAL = (
    "{{ '<s>' }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + '</s>' }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported') }}{% endif %}"
    "{% endfor %}"
)
_PHI3 = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ '<|endoftext|>' }}{% endif %}"
)

# template, extra special tokens, end-of-turn token, model_type
_FAMILIES: dict[str, tuple[str, list[str], str, str]] = {
    "llama": (
        _LLAMA3,
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|eot_id|>",
        "llama",
    ),
    "qwen2": (_CHATML, [], "<|im_end|>", "qwen2"),
    "qwen3": (_CHATML, [], "<|im_end|>", "qwen3"),
    "gemma2": (_GEMMA, ["<bos>", "<start_of_turn>", "<end_of_turn>"], "<end_of_turn>", "gemma2"),
    "gemma3": (_GEMMA, ["<bos>", "<start_of_turn>", "<end_of_turn>"], "<end_of_turn>", "gemma3_text"),
    "mistral": (_MISTRAL, ["<s>", "</s>", "[INST]", "[/INST]"], "</s>", "mistral"),
    "phi3": (_PHI3, ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"], "<|end|>", "phi3"),
}


def tiny_tokenizer(arch: str = "llama") -> Any:
    """SmolLM2's real tokenizer dressed with ``arch``'s chat template and special tokens."""
    from transformers import AutoTokenizer

    if arch not in _FAMILIES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHITECTURES}")
    template, specials, eot, _ = _FAMILIES[arch]
    path = resources.files(__name__) / "tokenizer"
    tok = AutoTokenizer.from_pretrained(str(path))
    if specials:
        tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = template
    tok.eos_token = eot
    tok.pad_token = eot
    return tok


def tiny_chat_model(
    arch: str = "llama",
    *,
    tie_word_embeddings: bool = True,
    num_hidden_layers: int = 4,
    hidden_size: int = 64,
    seed: int = 0,
    dtype: Any = None,
) -> tuple[Any, Any]:
    """A randomly initialised ``arch`` causal LM (float32 unless ``dtype``) and its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    tok = tiny_tokenizer(arch)
    _, _, eot, model_type = _FAMILIES[arch]
    eos_id = tok.convert_tokens_to_ids(eot)
    kwargs: dict[str, Any] = dict(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=4096,
        tie_word_embeddings=tie_word_embeddings,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        bos_token_id=eos_id,
    )
    if arch.startswith("gemma"):
        kwargs.update(sliding_window=64, query_pre_attn_scalar=16)
    if arch == "gemma2":
        kwargs.update(final_logit_softcapping=30.0, attn_logit_softcapping=50.0)
    if arch == "mistral":
        kwargs.update(sliding_window=None)
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)  # type: ignore[no-untyped-call]
    # Random init is tiny; scale weights up so logits are not uniform and gradients are not vanishingly small.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=eos_id, bos_token_id=eos_id)  # type: ignore[no-untyped-call]
    model.eval()
    return model, tok


def tiny_scorer(
    arch: str = "llama", *, tie_word_embeddings: bool = True, seed: int = 0, **scorer_kwargs: Any
) -> SemGradScorer:
    """A :class:`~semgrad_guard.SemGradScorer` over :func:`tiny_chat_model` (no download)."""
    from ..scoring.hf_scorer import SemGradScorer

    model, tok = tiny_chat_model(arch, tie_word_embeddings=tie_word_embeddings, seed=seed)
    scorer_kwargs.setdefault("model_id", f"tiny-random-{arch}")
    return SemGradScorer(model, tok, **scorer_kwargs)


def score_result(**fields: Any) -> ScoreResult:
    """A :class:`~semgrad_guard.ScoreResult` with plausible values, for tests of what consumes scores
    (policies, calibration, the review queue); any field can be given, e.g. ``score_result(semgrad=0.5)``.

    Example:
        >>> score_result(semgrad=0.25).semgrad, score_result().answer_tokens
        (0.25, 8)
    """
    from ..results import ScoreResult

    values: dict[str, Any] = {
        "semgrad": 1e-3,
        "hybridgrad": 2e-3,
        "exgrad": 3e-3,
        "nll": 4.0,
        "mean_nll": 0.5,
        "mean_entropy": 1.2,
        "answer_tokens": 8,
        "anchor_offset": -4,
        "layers": [15, 16],
        "model_id": "m",
    }
    return ScoreResult(**{**values, **fields})
