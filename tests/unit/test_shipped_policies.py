"""Every shipped example policy keeps its promise on development data its calibrator was not fitted on.

The policies in ``cookbook/policies/`` (used by the README, the integration READMEs, the cookbooks and
``make demo``) are bands over the shipped calibrator's confidence. Here the calibrator is refitted by
the shipped recipe on one half of the development answers (``benchmarks/results/devsets``, scores of
the embedded model, collected once) and each policy is applied to the other half: it must accept at
least the share its README states, and the error among accepted answers must be lower than the
error of accepting everything, on the pooled data and on the RAG set (the main use). On SciQ, where
the embedded model is right on one answer in ten, the confident answers are not better than the rest
(benchmarks/results/guard_quality.md says so); that is measured, not asserted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from semgrad_guard import Calibrator, GuardPolicy, ModelProfile

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.devsets import devdata  # noqa: E402

POLICIES = ROOT / "cookbook" / "policies"
SHIPPED_PROFILE = ROOT / "semgrad_guard" / "profiles" / "smollm2-135m-instruct.json"
SHIPPED_CALIBRATOR = ROOT / "semgrad_guard" / "calibrators" / "smollm2-135m-instruct.json"
# Share of answers each policy accepts (directly or after retries count as not accepted here), as stated
# in README.md / cookbook/README.md; measured in benchmarks/results/guard_quality.md.
PROMISED_ACCEPT_SHARE = {
    "abstain_or_escalate.yaml": 0.12,
    "accept_or_review.yaml": 0.12,
    "default.yaml": 0.12,
    "with_retry.yaml": 0.12,
}
SPLITS = 20


@pytest.fixture(scope="module")
def data():
    return devdata.load()


@pytest.fixture(scope="module")
def profile():
    return ModelProfile.load(SHIPPED_PROFILE)


def test_every_example_policy_is_listed():
    assert sorted(p.name for p in POLICIES.glob("*.yaml")) == sorted(PROMISED_ACCEPT_SHARE)


@pytest.mark.parametrize("name", sorted(PROMISED_ACCEPT_SHARE))
def test_policy_accepts_its_share_with_fewer_errors_on_held_out_answers(name, data, profile):
    policy = GuardPolicy.from_yaml(POLICIES / name)
    assert all(r.field == "confidence" for r in policy.rules if not r.unbounded)  # no raw bands
    results = data.results(profile.anchor_offset, list(profile.layers), profile.exgrad_mode)
    rng = np.random.default_rng(0)
    cov, err_acc, err_all = [], [], []
    per_set: dict[str, list[tuple[float, float]]] = {n: [] for n in devdata.NAMES}
    for _ in range(SPLITS):
        a, b = data.halves(rng)
        cal = Calibrator.fit([results[i] for i in a], data.correct[a], groups=list(data.groups[a]))
        conf = cal.predict([results[i] for i in b])
        accepted = np.asarray(
            [
                policy.decide(results[i], float(c)).action.value == "accept"
                for i, c in zip(b, conf, strict=True)
            ]
        )
        y, g = data.correct[b], data.groups[b]
        cov.append(accepted.mean())
        err_all.append(1 - y.mean())
        err_acc.append(1 - y[accepted].mean() if accepted.any() else np.nan)
        for n in devdata.NAMES:
            m = (g == n) & accepted
            if m.any():
                per_set[n].append((1 - y[m].mean(), 1 - y[g == n].mean()))
    assert np.mean(cov) >= PROMISED_ACCEPT_SHARE[name]
    assert np.nanmean(err_acc) < np.mean(err_all)
    for n, pairs in per_set.items():
        if n == "rag":
            assert len(pairs) == SPLITS, f"{name} accepted no RAG answer in some split"
            acc_err, all_err = np.mean(pairs, axis=0)
            assert acc_err < all_err, (
                f"{name} on {n}: error among accepted {acc_err:.3f} >= overall {all_err:.3f}"
            )


def test_shipped_calibrator_belongs_to_the_shipped_profile(profile):
    cal = Calibrator.load(SHIPPED_CALIBRATOR)
    cal.check_compatible(profile.model_id, profile)
    assert cal.cv_scheme.startswith("leave-one-group-out") and cal.reference is not None
    assert all(n in (cal.data or "") for n in devdata.NAMES)


def test_readme_policy_is_the_shipped_file():
    readme = (ROOT / "README.md").read_text()
    text = (POLICIES / "default.yaml").read_text()
    rules = [line.strip() for line in text.splitlines() if line.strip().startswith("- {")]
    assert rules and all(rule in readme for rule in rules)
