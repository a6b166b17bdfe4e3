"""White-box single-pass peers of SemGrad: RAUQ and LLM-Check's attention score.

Both read the attention maps of one teacher-forced pass over prompt + answer (eager attention: the
fused kernels do not return the weights), so they cost one forward and no sampling.

- **RAUQ** (Vazhentsev et al., 2025, arXiv 2505.20045): per layer, the head that attends most to the
  previous token over the answer; a confidence carried token by token,
  ``c_0 = p(y_0)``, ``c_i = alpha * p(y_i) + (1 - alpha) * a_i * c_{i-1}``; the layer's
  uncertainty ``1 - mean_i log c_i``; the maximum over the middle third of the layers.
  ``alpha = 0.5`` for instruction-tuned models, as LM-Polygraph sets it. ``a_i`` is the attention
  of the step that generates ``y_i`` to the previous token ``y_{i-1}``: the position holding
  ``y_{i-1}`` attending to itself, as LM-Polygraph reads it from generation's attention maps.
- **Attention score** (Sriramanan et al., 2024, "LLM-Check"): minus the head-mean of
  ``sum_i log a_{ii}`` (the attention map's log-determinant, as it is triangular) at the middle layer.

:func:`attention_features` extracts what both need (per layer, not per head, so a stored row stays
small); :func:`rauq` and :func:`attention_score` then compute the scores without the model, at any
layer choice. Higher = more uncertain for both. The parity check against LM-Polygraph's own
estimators is ``benchmarks/parity_lm_polygraph.py``.

Example:
    >>> round(rauq([-0.1, -0.2, -0.05], [[0.9, 0.8]], layers=[0], alpha=0.5), 4)
    1.1743
    >>> attention_score([[-3.0, -1.0]], layer=0)
    2.0
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import ConfigurationError

SINGLE_PASS_PEERS: tuple[str, ...] = ("rauq", "attention_score")
"""The attention-based single-pass baselines, by name; higher = more uncertain for each."""

RAUQ_ALPHA_INSTRUCT = 0.5
"""RAUQ's weight of the token probability for instruction-tuned models (LM-Polygraph's default)."""

_EPS = 1e-12  # log(0) guard, as LM-Polygraph adds it


def middle_layers(num_layers: int) -> list[int]:
    """RAUQ's layers: the middle third, ``num_layers // 3 .. ceil(2 * num_layers / 3)`` inclusive."""
    return list(range(num_layers // 3, math.ceil(num_layers / 3 * 2) + 1))


def rauq(
    token_logprobs: Sequence[float],
    prev_attention: Sequence[Sequence[float]],
    *,
    layers: Sequence[int] | None = None,
    alpha: float = RAUQ_ALPHA_INSTRUCT,
) -> float:
    """RAUQ uncertainty of one answer.

    ``token_logprobs[i]`` is ``log p(y_i | x, y_<i)``; ``prev_attention[l][i - 1]`` the attention of
    the step generating ``y_i`` to ``y_{i-1}`` in layer ``l``'s selected head (:func:`attention_features`).
    ``layers`` default to the middle third of ``len(prev_attention)``.
    """
    if not 0.0 < alpha <= 1.0:
        raise ConfigurationError(f"RAUQ's alpha must be in (0, 1], got {alpha}")
    if not token_logprobs:
        raise ConfigurationError("RAUQ needs at least one answer token")
    chosen = middle_layers(len(prev_attention)) if layers is None else list(layers)
    if not chosen or any(not 0 <= layer < len(prev_attention) for layer in chosen):
        raise ConfigurationError(
            f"RAUQ layers {chosen} are not among the {len(prev_attention)} layers recorded"
        )
    best = -math.inf
    for layer in chosen:
        attention = prev_attention[layer]
        if len(attention) < len(token_logprobs) - 1:
            raise ConfigurationError(
                f"layer {layer} has {len(attention)} previous-token attentions for "
                f"{len(token_logprobs)} answer tokens (need one fewer than the tokens)"
            )
        c = math.exp(token_logprobs[0])
        total = math.log(max(c, _EPS))
        for i in range(1, len(token_logprobs)):
            c = alpha * math.exp(token_logprobs[i]) + (1 - alpha) * attention[i - 1] * c
            total += math.log(max(c, _EPS))
        best = max(best, 1 - total / len(token_logprobs))
    return best


def attention_score(log_diagonal: Sequence[Sequence[float]] | Sequence[float], *, layer: int) -> float:
    """LLM-Check's attention score at ``layer``: minus the head-mean of ``sum_i log a_ii``.

    ``log_diagonal[layer]`` is that head-mean already (:func:`attention_features`), or the list of
    per-head sums.
    """
    if not 0 <= layer < len(log_diagonal):
        raise ConfigurationError(
            f"attention-score layer {layer} is not among the {len(log_diagonal)} recorded"
        )
    value = log_diagonal[layer]
    if isinstance(value, Sequence):
        return -sum(value) / len(value)
    return -float(value)


@contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Run ``model`` with eager attention inside the block (the weights are returned), then restore."""
    before = getattr(model.config, "_attn_implementation", None)
    if before in (None, "eager"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def attention_features(model: Any, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> dict[str, Any]:
    """What RAUQ and the attention score need, from one teacher-forced pass over ``prompt_ids + answer_ids``.

    Returns ``token_logprobs`` (one per answer token), per layer ``rauq_heads`` (the head with the
    highest mean attention of the step generating ``y_i`` to ``y_{i-1}``, i ≥ 1) and ``rauq_attention``
    (those attentions, ``len(answer_ids) - 1`` of them), and per layer the head-mean of ``sum log a_ii``
    over the whole sequence (``attention_logdiag``) and over the answer but its last token
    (``attention_logdiag_answer``, LM-Polygraph's ``gen_only``).
    """
    import torch

    x, y = list(prompt_ids), list(answer_ids)
    if not x or not y:
        raise ConfigurationError("attention features need a prompt and an answer of at least one token each")
    device = next(model.parameters()).device
    ids = torch.tensor([x + y], device=device)
    p, t = len(x), len(y)
    with torch.no_grad(), eager_attention(model):
        # Logits of the answer's positions only: the vocabulary projection of the prompt is a
        # quarter of the pass on a 150k-token vocabulary, and nothing reads it.
        out = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            output_attentions=True,
            use_cache=False,
            logits_to_keep=t + 1,
        )
    logits = out.logits[0, -(t + 1) : -1].float()
    logprobs = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(y, device=device)[:, None])[:, 0]
    heads: list[int] = []
    prev: list[list[float]] = []
    logdiag: list[float] = []
    logdiag_answer: list[float] = []
    # The step generating y_i is the position of y_{i-1}; its "previous token" y_{i-1} is that same
    # position, so RAUQ's attentions are the diagonal at p .. p + t - 2 (LM-Polygraph's alignment).
    rows = torch.arange(p, p + t - 1, device=device)
    for layer_attention in out.attentions:
        a = layer_attention[0].float()  # (heads, n, n)
        prev_all = a[:, rows, rows]  # (heads, t - 1)
        head = int(prev_all.mean(-1).argmax()) if t > 1 else 0
        heads.append(head)
        prev.append(prev_all[head].tolist())
        diag = torch.log(torch.diagonal(a, dim1=-2, dim2=-1) + _EPS)  # (heads, n)
        logdiag.append(float(diag.sum(-1).mean()))
        logdiag_answer.append(float(diag[:, p : p + t - 1].sum(-1).mean()))
    return {
        "token_logprobs": [float(f"{v:.6g}") for v in logprobs.tolist()],
        "rauq_heads": heads,
        "rauq_attention": [[float(f"{v:.5g}") for v in r] for r in prev],
        "attention_logdiag": [float(f"{v:.6g}") for v in logdiag],
        "attention_logdiag_answer": [float(f"{v:.6g}") for v in logdiag_answer],
    }
