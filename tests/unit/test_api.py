"""Public API and layering rules."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import semgrad_guard

PKG = Path(semgrad_guard.__file__).parent


def test_all_is_sorted_and_every_name_resolves():
    assert semgrad_guard.__all__ == sorted(semgrad_guard.__all__)
    for name in semgrad_guard.__all__:
        assert getattr(semgrad_guard, name) is not None, name


def test_core_never_imports_a_framework():
    pattern = re.compile(r"^\s*(from|import)\s+(langchain|langgraph|llama_index)", re.M)
    offenders = [str(p) for p in PKG.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_light_modules_import_without_torch():
    code = (
        "import sys, semgrad_guard, semgrad_guard.scoring.profile, semgrad_guard.results, semgrad_guard.scorer;"
        "import semgrad_guard.cli;"
        "assert 'torch' not in sys.modules, 'torch imported';"
        "assert 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_errors_inherit_from_builtins_callers_catch():
    assert issubclass(semgrad_guard.ConfigurationError, ValueError)
    assert issubclass(semgrad_guard.ScoringError, ValueError)
    assert issubclass(semgrad_guard.MissingDependencyError, ImportError)
    for name in semgrad_guard.__all__:
        obj = getattr(semgrad_guard, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, semgrad_guard.SemGradGuardError), name


def test_missing_dependency_names_the_extra(monkeypatch):
    import importlib.util

    from semgrad_guard.scoring.loading import load_model_and_tokenizer

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a)
    )
    try:
        load_model_and_tokenizer("/nonexistent", gguf_file="x.gguf")
    except semgrad_guard.MissingDependencyError as e:
        assert "semgrad-guard[gguf]" in str(e) and e.extra == "gguf"
    else:
        raise AssertionError("expected MissingDependencyError")


def test_missing_model_directory_is_a_model_error(tmp_path):
    from semgrad_guard.scoring.loading import load_model_and_tokenizer

    try:
        load_model_and_tokenizer(tmp_path / "missing")
    except semgrad_guard.ModelError as e:
        assert "missing" in str(e)
    else:
        raise AssertionError("expected ModelError")
