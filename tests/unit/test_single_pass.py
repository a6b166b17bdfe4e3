"""RAUQ and the attention score: the formulas, the features from one eager pass, the harness's use of them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from semgrad_guard import ConfigurationError, MockScorer
from semgrad_guard.eval import EvalConfig, Question, run_eval, single_pass
from semgrad_guard.eval.single_pass import attention_features, attention_score, middle_layers, rauq
from semgrad_guard.scoring.fastpath import ScoringInput
from semgrad_guard.testing import tiny_scorer


def test_rauq_follows_its_recurrence_by_hand():
    logp = [math.log(0.9), math.log(0.5), math.log(0.2)]
    attention = [[0.0, 0.0], [0.6, 0.3]]
    c0 = 0.9
    c1 = 0.5 * 0.5 + 0.5 * 0.6 * c0
    c2 = 0.5 * 0.2 + 0.5 * 0.3 * c1
    want = 1 - (math.log(c0) + math.log(c1) + math.log(c2)) / 3
    assert rauq(logp, attention, layers=[1], alpha=0.5) == pytest.approx(want)
    # the maximum over layers: layer 0 (no attention carried) is the more uncertain
    assert rauq(logp, attention, layers=[0, 1], alpha=0.5) == pytest.approx(
        max(want, rauq(logp, attention, layers=[0], alpha=0.5))
    )


def test_rauq_with_alpha_one_is_one_plus_the_mean_nll():
    logp = [-0.1, -2.0, -0.7]
    assert rauq(logp, [[0.9, 0.9]], layers=[0], alpha=1.0) == pytest.approx(1 + sum(-v for v in logp) / 3)


def test_middle_layers_are_lm_polygraphs_third():
    assert middle_layers(24) == list(range(8, 17))
    assert middle_layers(30) == list(range(10, 21))
    assert middle_layers(4) == [1, 2, 3]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 0.0}, "alpha must be in"),
        ({"layers": [5]}, "not among the 2 layers"),
        ({"logp": []}, "at least one answer token"),
        ({"attention": [[0.5], [0.5]], "layers": [0, 1]}, "need one fewer than the tokens"),
    ],
)
def test_rauq_bad_input_says_what_is_wrong(kwargs, match):
    logp = kwargs.pop("logp", [-0.1, -0.2, -0.3])
    attention = kwargs.pop("attention", [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ConfigurationError, match=match):
        rauq(logp, attention, **kwargs)


def test_attention_score_is_minus_the_head_mean():
    assert attention_score([[-3.0, -1.0], [-8.0, -2.0]], layer=1) == 5.0
    assert attention_score([-2.0, -4.0], layer=1) == 4.0
    with pytest.raises(ConfigurationError, match="layer 2 is not among the 2"):
        attention_score([-2.0, -4.0], layer=2)


@pytest.fixture(scope="module")
def scorer():
    return tiny_scorer("qwen2")


def _example(scorer):
    chat = [{"role": "user", "content": "Name a colour."}]
    x = scorer.prompt_ids(chat)
    return x, scorer.answer_ids(chat, "Blue, like the sky.", prompt_ids=x)


def test_features_match_the_model_and_the_scorer(scorer):
    x, y = _example(scorer)
    before = scorer.model.config._attn_implementation
    f = attention_features(scorer.model, x, y)
    assert scorer.model.config._attn_implementation == before  # eager only inside the pass
    # the token log-probabilities add up to the scorer's nll of the same ids
    (raw,) = scorer.score_token_ids([ScoringInput(x, y)])
    assert -sum(f["token_logprobs"]) == pytest.approx(raw.nll, rel=1e-4)
    # the previous-token attentions are those of the eager attention map, in RAUQ's head (the
    # alignment is LM-Polygraph's: benchmarks/parity_lm_polygraph.py checks against it)
    scorer.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            att = scorer.model(torch.tensor([x + y]), output_attentions=True).attentions
    finally:
        scorer.model.set_attn_implementation(before)
    p, t = len(x), len(y)
    assert len(f["rauq_attention"]) == len(att) == scorer.adapter.num_layers
    for layer, a in enumerate(att):
        # generating y_i (position p + i - 1) attends to y_{i-1} (the same position)
        prev = torch.stack([a[0, :, p + i - 1, p + i - 1] for i in range(1, t)], dim=1)  # (heads, t - 1)
        head = int(prev.mean(1).argmax())
        assert f["rauq_heads"][layer] == head
        assert f["rauq_attention"][layer] == pytest.approx(prev[head].tolist(), rel=1e-4)
        logdiag = torch.log(torch.diagonal(a[0], dim1=-2, dim2=-1) + 1e-12)
        assert f["attention_logdiag"][layer] == pytest.approx(float(logdiag.sum(-1).mean()), rel=1e-4)
        assert f["attention_logdiag_answer"][layer] == pytest.approx(
            float(logdiag[:, p : p + t - 1].sum(-1).mean()), rel=1e-4
        )


def test_features_need_a_prompt_and_an_answer(scorer):
    with pytest.raises(ConfigurationError, match="at least one token each"):
        attention_features(scorer.model, [1, 2], [])


QS = [
    Question(id=str(i), question=f"Is {i} even?", references=["yes" if i % 2 == 0 else "no"])
    for i in range(6)
]


def test_the_harness_reports_the_peers_and_caches_their_pass(scorer, tmp_path: Path, monkeypatch):
    cfg = EvalConfig(
        methods=["semgrad", "rauq", "attention_score"], max_new_tokens=4, plots=False, bootstrap=20
    )
    labels = {q.id: i % 2 == 0 for i, q in enumerate(QS)}
    res = run_eval(scorer, QS, tmp_path, cfg, labels=labels, progress=False)
    methods = res["main"]["methods"]
    assert set(methods) == {"semgrad", "rauq", "attention_score"}
    assert methods["rauq"]["cost"]["extra_seconds"] > 0
    assert all(math.isfinite(e["scores"]["rauq"]) for e in res["examples"])
    calls = []
    real = single_pass.attention_features
    monkeypatch.setattr(single_pass, "attention_features", lambda *a: calls.append(1) or real(*a))
    again = run_eval(scorer, QS, tmp_path, cfg, labels=labels, progress=False)
    assert calls == []  # the attention pass is cached with the answers
    assert again["main"]["methods"]["rauq"]["auroc"] == methods["rauq"]["auroc"]


def test_the_peers_need_a_local_model(tmp_path: Path):
    cfg = EvalConfig(methods=["semgrad", "rauq"], plots=False)
    with pytest.raises(ConfigurationError, match="MockScorer has none: drop them"):
        run_eval(MockScorer(lambda m, a: 0.5, answers=["yes"]), QS, tmp_path, cfg, progress=False)
