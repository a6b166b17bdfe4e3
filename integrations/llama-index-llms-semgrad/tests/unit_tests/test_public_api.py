"""The public surface: __all__ is what the package exports, and every docstring example runs."""

from __future__ import annotations

import doctest
import importlib

import llama_index.llms.semgrad as pkg
import pytest

MODULES = ["_convert", "base", "handlers", "evaluation", "query_engine", "workflow"]


def _isort_key(name: str) -> tuple[int, str]:
    # Constants, then classes, then functions (the core's __all__ order, ruff's RUF022).
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_all_is_sorted_and_exported() -> None:
    assert pkg.__all__ == sorted(pkg.__all__, key=_isort_key)
    public = {n for n in dir(pkg) if not n.startswith("_")} - {
        m for m in dir(pkg) if isinstance(getattr(pkg, m), type(pkg))
    }
    assert set(pkg.__all__) == public


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(f"llama_index.llms.semgrad.{name}")
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failed == 0


def test_names_live_in_their_modules_only() -> None:
    # No aliases on the package: each name has one import path (the module docstring lists them).
    for name in ("SemGradEventHandler", "SemGradEvaluator", "SemGradQueryEngine", "generation_overrides"):
        with pytest.raises(AttributeError):
            getattr(pkg, name)
