"""The adapter uses only the core's public surface: names imported from ``semgrad_guard`` itself.

Internal paths (``semgrad_guard.guard.policy``, ``semgrad_guard.scoring...``) may move at any time;
``semgrad_guard.testing`` (the public test helpers) is allowed. The README's examples are held to the
same rule.
"""

from __future__ import annotations

import ast
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def _parse(source: str) -> ast.Module:
    # In a fresh thread: CPython 3.11.7's ast.parse can raise "AST constructor recursion depth
    # mismatch" in a thread whose recursion counter an earlier test left off (python/cpython#106905).
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(ast.parse, source).result()


def _internal_imports(source: str, where: str) -> list[str]:
    bad = []
    for node in ast.walk(_parse(source)):
        modules = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        for m in modules:
            internal = m.startswith("semgrad_guard.") and not m.startswith("semgrad_guard.testing")
            if internal:
                bad.append(f"{where}:{node.lineno} imports {m}")
    return bad


def test_the_package_imports_only_public_core_names() -> None:
    sources = [p for p in PACKAGE_ROOT.rglob("*.py") if "tests" not in p.relative_to(PACKAGE_ROOT).parts]
    assert sources
    bad = [b for p in sources for b in _internal_imports(p.read_text(), str(p.relative_to(PACKAGE_ROOT)))]
    assert bad == []


def test_docstring_examples_import_only_public_core_names() -> None:
    sources = [p for p in PACKAGE_ROOT.rglob("*.py") if "tests" not in p.relative_to(PACKAGE_ROOT).parts]
    bad = []
    for p in sources:
        for i, line in enumerate(p.read_text().splitlines(), 1):
            code = line.strip().removeprefix(">>> ")
            if line.strip().startswith(">>> ") and code.startswith(("from ", "import ")):
                bad += _internal_imports(code, f"{p.relative_to(PACKAGE_ROOT)}:{i}")
    assert bad == []


def test_the_readme_teaches_only_public_core_names() -> None:
    readme = (PACKAGE_ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks
    bad = [b for i, code in enumerate(blocks) for b in _internal_imports(code, f"README block {i + 1}")]
    assert bad == []


def test_the_payload_key_has_one_name() -> None:
    import langchain_semgrad
    import langchain_semgrad.metadata

    from semgrad_guard import PAYLOAD_KEY

    assert PAYLOAD_KEY == "semgrad"
    assert not hasattr(langchain_semgrad, "METADATA_KEY")
    assert not hasattr(langchain_semgrad.metadata, "METADATA_KEY")
