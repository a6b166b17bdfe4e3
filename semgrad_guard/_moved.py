"""Old flat import paths (``semgrad_guard.hf_scorer``, ``semgrad_guard.policy``, ...) for one release.

The modules moved into the layer subpackages (``scoring``, ``guard``, ``review``) in 0.2. Importing an old
path warns (DeprecationWarning) and gives the *same* module object as the new path, so classes, monkeypatches
and ``isinstance`` checks agree. Removed in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED: dict[str, str] = {
    "semgrad_guard.adapters": "semgrad_guard.scoring.adapters",
    "semgrad_guard.default_model": "semgrad_guard.scoring.default_model",
    "semgrad_guard.fastpath": "semgrad_guard.scoring.fastpath",
    "semgrad_guard.hf_scorer": "semgrad_guard.scoring.hf_scorer",
    "semgrad_guard.identity": "semgrad_guard.scoring.identity",
    "semgrad_guard.loading": "semgrad_guard.scoring.loading",
    "semgrad_guard.profile": "semgrad_guard.scoring.profile",
    "semgrad_guard.profile_search": "semgrad_guard.eval.profile_search",
    "semgrad_guard.sps": "semgrad_guard.scoring.sps",
    "semgrad_guard.tool_calls": "semgrad_guard.scoring.tool_calls",
    "semgrad_guard.calibration": "semgrad_guard.guard.calibration",
    "semgrad_guard.outcomes": "semgrad_guard.guard.outcomes",
    "semgrad_guard.policy": "semgrad_guard.guard.policy",
    "semgrad_guard.risk": "semgrad_guard.guard.risk",
    "semgrad_guard.strategies": "semgrad_guard.guard.strategies",
}
"""Old module path -> new module path. (``semgrad_guard.guard`` and ``semgrad_guard.review`` kept their
names: they are now packages that export what the modules did.)"""


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.target}; import it from there or from semgrad_guard "
            "(the old path goes away in 0.3)",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._spec  # the import system set the alias's spec on the real module; undo it


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(MOVED[fullname]))


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
