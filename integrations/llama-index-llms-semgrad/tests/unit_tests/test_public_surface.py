"""The adapter uses only the core's public surface (see :mod:`semgrad_guard.testing.surface`)."""

from __future__ import annotations

from pathlib import Path

from semgrad_guard.testing.surface import (
    docstring_internal_imports,
    package_internal_imports,
    package_sources,
    readme_internal_imports,
    readme_python_blocks,
)

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def test_the_package_imports_only_public_core_names() -> None:
    assert package_sources(PACKAGE_ROOT)
    assert package_internal_imports(PACKAGE_ROOT) == []


def test_docstring_examples_import_only_public_core_names() -> None:
    assert docstring_internal_imports(PACKAGE_ROOT) == []


def test_the_readme_teaches_only_public_core_names() -> None:
    assert readme_python_blocks(PACKAGE_ROOT / "README.md")
    assert readme_internal_imports(PACKAGE_ROOT / "README.md") == []


def test_the_payload_key_has_one_name() -> None:
    import llama_index.llms.semgrad as pkg
    import llama_index.llms.semgrad._convert as convert

    from semgrad_guard import PAYLOAD_KEY

    assert PAYLOAD_KEY == "semgrad"
    assert not hasattr(pkg, "SCORE_KEY") and not hasattr(convert, "SCORE_KEY")
