"""Process-wide state a scorer must not disturb: torch's global RNG, and the model's forward hooks."""

from __future__ import annotations

import gc
import threading

import pytest
import torch

from semgrad_guard import ModelProfile, SemGradScorer
from semgrad_guard.testing import tiny_chat_model

Q = "What is the chemical symbol for gold?"


@pytest.fixture(scope="module")
def tiny():
    return tiny_chat_model("llama", tie_word_embeddings=False)


def _hooks(model) -> int:
    return sum(len(m._forward_pre_hooks) for m in model.modules())


def test_seeded_sampling_leaves_the_global_rng_alone(tiny) -> None:
    scorer = SemGradScorer(*tiny, model_id="tiny")
    draws = []
    for outer in (1, 2):
        torch.manual_seed(outer)
        scorer.generate(Q, max_new_tokens=4, do_sample=True, seed=7)
        draws.append(torch.rand(1).item())
    assert draws[0] != draws[1]  # reseeding to 7 would make what follows identical


def test_seeded_sampling_is_reproducible_across_threads(tiny) -> None:
    scorer = SemGradScorer(*tiny, model_id="tiny")
    serial = {seed: scorer.generate(Q, max_new_tokens=8, do_sample=True, seed=seed)[0] for seed in (7, 8)}
    out: dict[int, list[str]] = {7: [], 8: []}
    stop = threading.Event()

    def noise() -> None:  # another thread using the global RNG meanwhile
        while not stop.is_set():
            torch.rand(64)

    def run(seed: int) -> None:
        for _ in range(3):
            out[seed].append(scorer.generate(Q, max_new_tokens=8, do_sample=True, seed=seed)[0])

    workers = [threading.Thread(target=noise)] + [
        threading.Thread(target=run, args=(s,)) for s in (7, 8, 7, 8)
    ]
    for t in workers:
        t.start()
    for t in workers[1:]:
        t.join(timeout=120)
    stop.set()
    workers[0].join()
    for seed in (7, 8):
        assert out[seed] == [serial[seed]] * 6


def test_scorers_on_one_model_share_one_set_of_hooks(tiny) -> None:
    from semgrad_guard.scoring.adapters import holders

    model, tok = tiny
    gc.collect()
    assert _hooks(model) == 0  # earlier tests' scorers are gone, and their hooks with them
    layers = model.config.num_hidden_layers
    scorers = [SemGradScorer(model, tok, model_id="tiny") for _ in range(3)]
    other = scorers[0].with_profile(ModelProfile(anchor_offset=-2, layers=[1, 2]))
    assert holders(model) == 4
    seen: list[int] = []
    probe = model.model.layers[0].register_forward_hook(lambda *_: seen.append(_hooks(model)))
    try:
        assert scorers[1].score(Q, "Au.") == scorers[0].score(Q, "Au.")
        # Installed for the gradient passes only (the probe adds one of its own): never 4 sets.
        assert max(seen) == layers
        assert _hooks(model) == 0  # and gone between passes: plain generation calls no hook
        seen.clear()
        with torch.no_grad():
            model(torch.tensor([[1, 2, 3]]))
        assert seen == [0]
    finally:
        probe.remove()
    scorers[0].close()
    del scorers[1]
    gc.collect()
    assert holders(model) == 2  # still in use
    assert other.score(Q, "Au.").answer_tokens > 0
    del scorers, other
    gc.collect()
    assert _hooks(model) == 0  # the last scorer took the hooks with it
    assert holders(model) == 0
    again = SemGradScorer(model, tok, model_id="tiny")
    assert again.score(Q, "Au.").answer_tokens > 0 and _hooks(model) == 0
