"""Checks that an adapter uses only the core's public surface: names imported from ``semgrad_guard``.

Internal paths (``semgrad_guard.guard.policy``, ``semgrad_guard.scoring...``) may move at any time;
``semgrad_guard.testing`` (the public test helpers) is allowed. Each integration's test suite runs
these over its own package, docstring examples and README.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path


def _find(snippets: list[tuple[str, str]]) -> list[str]:
    bad = []
    for source, where in snippets:
        for node in ast.walk(ast.parse(source)):
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


def _find_isolated(snippets: list[tuple[str, str]]) -> list[str]:
    # Parsed in a child process running this file (stdlib only, nothing else imported): CPython
    # 3.11.7 keeps the AST converter's recursion counter per interpreter, so an ast.parse racing
    # one in any other thread of a test process raises "AST constructor recursion depth mismatch"
    # (python/cpython#106905, fixed in 3.11.8).
    done = subprocess.run(
        [sys.executable, __file__], input=json.dumps(snippets), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the import check failed to parse the sources:\n{done.stderr}")
    return list(json.loads(done.stdout))


def internal_imports(source: str, where: str) -> list[str]:
    """``"<where>:<line> imports <module>"`` for each import of a private core path in ``source``."""
    return _find_isolated([(source, where)])


def package_sources(root: Path) -> list[Path]:
    """The package's Python files under ``root``, its tests left out."""
    return [p for p in root.rglob("*.py") if "tests" not in p.relative_to(root).parts]


def package_internal_imports(root: Path) -> list[str]:
    """Private core imports in the package's code."""
    return _find_isolated([(p.read_text(), str(p.relative_to(root))) for p in package_sources(root)])


def docstring_internal_imports(root: Path) -> list[str]:
    """Private core imports in the package's ``>>>`` examples."""
    snippets = []
    for p in package_sources(root):
        for i, line in enumerate(p.read_text().splitlines(), 1):
            code = line.strip().removeprefix(">>> ")
            if line.strip().startswith(">>> ") and code.startswith(("from ", "import ")):
                snippets.append((code, f"{p.relative_to(root)}:{i}"))
    return _find_isolated(snippets)


def readme_python_blocks(readme: Path) -> list[str]:
    """The ```python blocks of a README."""
    return re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)


def readme_internal_imports(readme: Path) -> list[str]:
    """Private core imports in a README's python blocks."""
    blocks = readme_python_blocks(readme)
    return _find_isolated([(code, f"README block {i + 1}") for i, code in enumerate(blocks)])


if __name__ == "__main__":
    json.dump(_find([tuple(s) for s in json.load(sys.stdin)]), sys.stdout)
