"""The import graph keeps the architecture: the core knows no framework, and has no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "semgrad_guard"
FRAMEWORKS = ("langchain", "langchain_core", "langgraph", "llama_index", "fastapi", "ray")
# Web frameworks only the service layer (semgrad_guard/serve/) may import (ray: only serve/ray_app.py).
SERVICE_FRAMEWORKS = ("fastapi", "uvicorn", "starlette", "prometheus_client", "ray")


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
    def banned(p: Path) -> tuple[str, ...]:
        in_service = p.relative_to(CORE).parts[0] == "serve"
        if in_service:
            return tuple(f for f in FRAMEWORKS if f not in SERVICE_FRAMEWORKS)
        return FRAMEWORKS + SERVICE_FRAMEWORKS

    offenders = {
        str(p.relative_to(CORE)): sorted(m for m in _imports(p) if m.split(".")[0] in banned(p))
        for p in CORE.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_the_core_does_not_import_the_service():
    import subprocess
    import sys

    code = (
        "import sys, semgrad_guard; from semgrad_guard import Guard, GuardPolicy, MockScorer, ScorePayload; "
        "import semgrad_guard.scoring.remote, semgrad_guard.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'starlette', 'uvicorn', 'prometheus_client', 'ray') or m.startswith('semgrad_guard.serve')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_only_the_ray_module_imports_ray():
    # `semgrad-guard serve` without --ray never needs Ray: it stays out of the service's other modules.
    importers = sorted(
        str(p.relative_to(CORE))
        for p in CORE.rglob("*.py")
        if any(m.split(".")[0] == "ray" for m in _imports(p))
    )
    assert importers == ["serve/ray_app.py"]


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


# What each layer may import (module-level, TYPE_CHECKING and deferred imports alike), besides itself and
# the foundation (the top-level modules: errors, results, messages, config, progress, scorer, _files, spans).
ALLOWED = {
    "scoring": {"scoring"},
    "guard": {"guard", "review", "scoring.profile"},  # a profile is plain data; scoring's torch parts are not
    "review": {"review"},
    "eval": {"eval", "scoring", "guard"},
    "cli": {"cli", "eval", "scoring", "guard", "review", "serve"},
    "serve": {"serve", "scoring", "guard", "review", "payload"},  # nothing but cli imports serve
    "testing": {"testing", "scoring", "guard", "review"},
}
FOUNDATION = {"errors", "results", "messages", "config", "progress", "scorer", "_files", "_version", "spans"}


def test_each_layer_imports_only_what_it_may():
    bad = []
    for p in CORE.rglob("*.py"):
        parts = p.relative_to(CORE).with_suffix("").parts
        if len(parts) == 1:
            layer = None if parts[0] in ("__init__", "__main__") else "foundation"
        else:
            layer = parts[0]
        if layer is None:
            continue  # the public surface re-exports every layer
        allowed = FOUNDATION | (set() if layer == "foundation" else ALLOWED[layer])
        for m in _imports(p):
            if not m.startswith("semgrad_guard."):
                continue
            target = m.removeprefix("semgrad_guard.")
            if not any(target == a or target.startswith(a + ".") for a in allowed):
                bad.append(f"{p.relative_to(CORE)} -> {m}")
    assert bad == []


def test_the_tree_names_the_layers():
    folders = {p.name for p in CORE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert {"scoring", "guard", "review", "eval", "cli", "serve"} <= folders


def test_deciding_modules_import_no_torch():
    for p in [
        *(CORE / "guard").rglob("*.py"),
        *(CORE / "review").rglob("*.py"),
        CORE / "scoring" / "profile.py",
    ]:
        mods = _imports(p)
        assert not any(m.split(".")[0] in ("torch", "transformers") for m in mods), p.name


def test_no_module_imports_the_package_face():
    # `from .. import X` (or `from semgrad_guard import X`) inside the package runs the whole face
    # (every layer) and hides where X lives; import the module that defines it (submodules are fine).
    submodules = {p.stem for p in CORE.glob("*.py")} | {p.name for p in CORE.iterdir() if p.is_dir()}
    bad = []
    for p in CORE.rglob("*.py"):
        if p.parent == CORE and p.name in ("__init__.py", "__main__.py"):
            continue
        package = ".".join(p.relative_to(CORE.parent).with_suffix("").parts[:-1])
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                bad += [
                    f"{p.relative_to(CORE)}: import {a.name}" for a in node.names if a.name == "semgrad_guard"
                ]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                if target == "semgrad_guard":
                    bad += [
                        f"{p.relative_to(CORE)}: from {target} import {a.name}"
                        for a in node.names
                        if a.name not in submodules
                    ]
    assert bad == []
