"""The import graph keeps the architecture: the core knows no framework, and has no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "semgrad_guard"
FRAMEWORKS = ("langchain", "langchain_core", "langgraph", "llama_index", "fastapi", "ray")


def _imports(path: Path) -> set[str]:
    """Modules a file imports at module level or in functions (relative ones resolved in the package)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(CORE.parent).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                out.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                out.add(node.module)
    return out


def test_the_core_imports_no_framework():
    offenders = {
        str(p.relative_to(CORE)): sorted(m for m in _imports(p) if m.split(".")[0] in FRAMEWORKS)
        for p in CORE.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def _module_level(tree: ast.Module) -> list[ast.stmt]:
    """Module-level statements, with the bodies of ``if TYPE_CHECKING:`` blocks (type-level edges count)."""
    out: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out += node.body
        else:
            out.append(node)
    return out


def test_no_import_cycle_among_core_modules():
    # Module-level and TYPE_CHECKING imports (imports inside functions are deferred on purpose: torch).
    graph: dict[str, set[str]] = {}
    for p in CORE.rglob("*.py"):
        name = ".".join(p.relative_to(CORE.parent).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(p.read_text())
        deps = set()
        for node in _module_level(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                package = name if p.name == "__init__.py" else name.rsplit(".", 1)[0]
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
                deps.add(target)
        graph[name] = {d for d in deps if d != name}
    seen: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        seen[n] = 1
        for d in graph.get(n, ()):
            if d == "semgrad_guard" or d not in graph:
                continue  # the package's own __init__ re-exports; submodules never import it back
            assert seen.get(d) != 1, f"import cycle: {' -> '.join([*stack, n, d])}"
            if d not in seen:
                visit(d, [*stack, n])
        seen[n] = 2

    for n in graph:
        if n not in seen:
            visit(n, [])


def test_deciding_modules_import_no_torch():
    deciding = ["policy", "calibration", "risk", "guard", "outcomes", "review", "strategies"]
    for name in deciding:
        mods = _imports(CORE / f"{name}.py")
        assert not any(m.split(".")[0] in ("torch", "transformers") for m in mods), name
