"""Checks that an adapter uses only the core's public surface: names imported from ``semgrad_guard``.

Internal paths (``semgrad_guard.guard.policy``, ``semgrad_guard.scoring...``) may move at any time;
``semgrad_guard.testing`` (the public test helpers) is allowed. Each integration's test suite runs
these over its own package, docstring examples and README.
"""

from __future__ import annotations

import ast
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _parse(source: str) -> ast.Module:
    # In a fresh thread: CPython 3.11.7's ast.parse can raise "AST constructor recursion depth
    # mismatch" in a thread whose recursion counter an earlier test left off (python/cpython#106905).
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(ast.parse, source).result()


def internal_imports(source: str, where: str) -> list[str]:
    """``"<where>:<line> imports <module>"`` for each import of a private core path in ``source``."""
    bad = []
    for node in ast.walk(_parse(source)):
        if isinstance(node, ast.ImportFrom):
            modules = [node.module] if node.module and node.level == 0 else []
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        else:
            continue
        for m in modules:
            if m.startswith("semgrad_guard.") and not m.startswith("semgrad_guard.testing"):
                bad.append(f"{where}:{node.lineno} imports {m}")
    return bad


def package_sources(root: Path) -> list[Path]:
    """The package's Python files under ``root``, its tests left out."""
    return [p for p in root.rglob("*.py") if "tests" not in p.relative_to(root).parts]


def package_internal_imports(root: Path) -> list[str]:
    """Private core imports in the package's code."""
    return [
        b for p in package_sources(root) for b in internal_imports(p.read_text(), str(p.relative_to(root)))
    ]


def docstring_internal_imports(root: Path) -> list[str]:
    """Private core imports in the package's ``>>>`` examples."""
    bad = []
    for p in package_sources(root):
        for i, line in enumerate(p.read_text().splitlines(), 1):
            code = line.strip().removeprefix(">>> ")
            if line.strip().startswith(">>> ") and code.startswith(("from ", "import ")):
                bad += internal_imports(code, f"{p.relative_to(root)}:{i}")
    return bad


def readme_python_blocks(readme: Path) -> list[str]:
    """The ```python blocks of a README."""
    return re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)


def readme_internal_imports(readme: Path) -> list[str]:
    """Private core imports in a README's python blocks."""
    blocks = readme_python_blocks(readme)
    return [b for i, code in enumerate(blocks) for b in internal_imports(code, f"README block {i + 1}")]
