"""The plain reference implementation of SemGrad, kept in the test suite to check the fast path.

Full sequence ``x + y`` forward with every hidden state kept and gradients everywhere (as the research
code does), then ``torch.autograd.grad`` to the hidden states and to a leaf copy of the output projection
(so that, for tied embeddings, only the path through the logits counts). No chunking, no caches, no hooks.
"""

from __future__ import annotations

import torch


def _entropy_and_nll(model, logits: torch.Tensor, y: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per answer step: the entropy (detached, a weight) and the nll, after Gemma 2's soft-capping."""
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    logp = torch.log_softmax(logits, -1)
    ent = -(logp.exp() * logp).sum(-1).detach()
    return ent, -logp[torch.arange(len(y)), torch.tensor(y)]


def reference_scores(
    model,
    x: list[int],
    y: list[int],
    anchor_offset: int,
    layers: list[int],
    span: tuple[int, int] | None = None,
) -> dict[str, float]:
    """The six scores of the answer's loss, or (``span = (t0, t1)``) of the loss of answer tokens
    t0 .. t1 - 1 alone: ``sum_{t in span} H_t nll_t / (t1 - t0)``, on its own full forward/backward."""
    base = model.model
    ids = torch.tensor([x + y])
    with torch.enable_grad():
        out = base(input_ids=ids, output_hidden_states=True, use_cache=False)
        hs = out.hidden_states
        final = out.last_hidden_state
        W = model.get_output_embeddings().weight.detach().clone().requires_grad_(True)
        T = len(y)
        pred = final[0, len(x) - 1 : len(x) - 1 + T]
        ent, nll = _entropy_and_nll(model, torch.nn.functional.linear(pred, W).float(), y)
        if span is not None:
            ent, nll = ent[span[0] : span[1]], nll[span[0] : span[1]]
        loss = (ent * nll).mean()
        grads = torch.autograd.grad(loss, [hs[layer] for layer in layers] + [W])
    a = len(x) + anchor_offset
    sem = torch.stack([g[0, a].abs().mean() for g in grads[:-1]]).mean().item()
    ex = grads[-1].abs().mean().item()
    me = ent.mean().item()
    alpha = float(torch.exp(torch.tensor(-me)))
    return {
        "semgrad": sem,
        "exgrad": ex,
        "hybridgrad": alpha * ex + (1 - alpha) * sem,
        "nll": nll.sum().item(),
        "mean_nll": nll.mean().item(),
        "mean_entropy": me,
    }


def reference_exgrad_weight(model, x: list[int], y: list[int], span: tuple[int, int] | None = None) -> float:
    """exgrad as the research code takes it: autograd gradient of the lm_head weight *parameter*.

    A leaf copy of the weight is used for the output projection and, when the model ties its
    embeddings, as the input embedding module's weight too, so the gradient holds both paths. Summed in float64.
    """
    base = model.model
    ids = torch.tensor([x + y])
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    W = model.get_output_embeddings().weight.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        if tied:
            # The module itself (Gemma scales inside it), with the leaf copy as its weight.
            embeds = torch.func.functional_call(model.get_input_embeddings(), {"weight": W}, (ids,))
        else:
            embeds = model.get_input_embeddings()(ids).detach()
        final = base(inputs_embeds=embeds, use_cache=False).last_hidden_state
        T = len(y)
        ent, nll = _entropy_and_nll(
            model, torch.nn.functional.linear(final[0, len(x) - 1 : len(x) - 1 + T], W).float(), y
        )
        if span is not None:
            ent, nll = ent[span[0] : span[1]], nll[span[0] : span[1]]
        (grad,) = torch.autograd.grad((ent * nll).mean(), [W])
    return float(grad.double().abs().sum() / grad.numel())
