"""The shipped Qwen2.5-Coder-0.5B profile and calibrator are what the shipped procedure gives on its rows.

``benchmarks/bench_models.py --write qwen2.5-coder-0.5b`` fits them on the development answers of that
model (``benchmarks/results/devsets/qwen2.5-coder-0.5b``): the supervised profile choice, and the
calibrator with its features chosen leaving one data set out. Refitting here from the same rows must
give the same files; each says what it was fitted on.
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

NAME = "qwen2.5-coder-0.5b"
PROFILE = ROOT / "semgrad_guard" / "profiles" / "qwen2.5-coder-0.5b-instruct.json"
CALIBRATOR = ROOT / "semgrad_guard" / "calibrators" / "qwen2.5-coder-0.5b-instruct.json"

pytestmark = pytest.mark.skipif(not PROFILE.exists(), reason="no Qwen-0.5B profile is shipped yet")


@pytest.fixture(scope="module")
def data():
    return devdata.load(folder=devdata.DEVSETS / NAME, model_id=bench_models._model_id(NAME))


def test_the_profile_is_the_supervised_choice_on_the_rows_it_names(data):
    profile = ModelProfile.load(PROFILE)
    offset, band, layers, _ = bench_models.choose_profile(data)
    assert (profile.anchor_offset, profile.layers) == (offset, layers)
    assert profile.source == "supervised" and profile.model_id == data.model_id
    counts = {n: int((data.groups == n).sum()) for n in devdata.NAMES}
    assert all(f"{n} {c}" in profile.data for n, c in counts.items())  # says what it was fitted on
    assert profile.weights_sha256 and profile.chat_template_hash


def test_the_calibrator_is_refitted_the_same_from_the_rows(data):
    shipped = Calibrator.load(CALIBRATOR)
    profile = ModelProfile.load(PROFILE)
    shipped.check_compatible(profile.model_id, profile)
    refit = bench_models._fit(data, profile.anchor_offset, profile.layers)
    assert (refit.method, list(refit.features)) == (shipped.method, list(shipped.features))
    results = data.results(profile.anchor_offset, profile.layers)
    np.testing.assert_allclose(
        shipped.predict(results, check=False), refit.predict(results, check=False), atol=1e-6
    )
    assert "leaving one data set out" in json.loads(CALIBRATOR.read_text())["data"]
