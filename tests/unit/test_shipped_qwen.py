"""The shipped Qwen2.5-Coder profiles and calibrators are what the shipped procedure gives on their rows.

``benchmarks/bench_models.py --write NAME`` fits them on the development answers of that model
(``benchmarks/results/devsets/NAME``): the supervised profile choice, and the
calibrator by the model's recipe (``bench_models.RECIPE``: Platt on the features with the lowest
5-fold Brier score, sets pooled). Refitting here from the same rows must give the same files; each
says what it was fitted on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from semgrad_guard import Calibrator, ModelProfile

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks import bench_models  # noqa: E402
from benchmarks.devsets import devdata  # noqa: E402

NAMES = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")


def _files(name: str) -> tuple[Path, Path]:
    stem = f"{name}-instruct.json"
    return ROOT / "semgrad_guard" / "profiles" / stem, ROOT / "semgrad_guard" / "calibrators" / stem


@pytest.fixture(scope="module", params=NAMES)
def shipped(request):
    profile, calibrator = _files(request.param)
    assert profile.exists() and calibrator.exists(), f"{request.param} ships a profile and a calibrator"
    data = devdata.load(
        folder=devdata.DEVSETS / request.param, model_id=bench_models._model_id(request.param)
    )
    return request.param, data, profile, calibrator


def test_the_profile_is_the_supervised_choice_on_the_rows_it_names(shipped):
    _, data, profile_path, _ = shipped
    profile = ModelProfile.load(profile_path)
    offset, band, layers, _ = bench_models.choose_profile(data)
    assert (profile.anchor_offset, profile.layers) == (offset, layers)
    assert profile.source == "supervised" and profile.model_id == data.model_id
    counts = {n: int((data.groups == n).sum()) for n in devdata.NAMES}
    assert all(f"{n} {c}" in profile.data for n, c in counts.items())  # says what it was fitted on
    assert profile.weights_sha256 and profile.chat_template_hash


def test_the_calibrator_is_refitted_the_same_from_the_rows(shipped):
    name, data, profile_path, calibrator_path = shipped
    calibrator = Calibrator.load(calibrator_path)
    profile = ModelProfile.load(profile_path)
    calibrator.check_compatible(profile.model_id, profile)
    refit = bench_models._fit(data, profile.anchor_offset, profile.layers, bench_models.RECIPE[name])
    assert (refit.method, list(refit.features)) == (calibrator.method, list(calibrator.features))
    results = data.results(profile.anchor_offset, profile.layers)
    np.testing.assert_allclose(
        calibrator.predict(results, check=False), refit.predict(results, check=False), atol=1e-6
    )
    assert bench_models.RECIPE[name] == "pooled"
    said = json.loads(calibrator_path.read_text())["data"]
    assert "5-fold Brier score, sets pooled" in said and "models.md" in said
