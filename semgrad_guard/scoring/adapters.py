"""One :class:`~semgrad_guard.scoring.fastpath.ModelAdapter` per model, shared by every scorer on it.

A ``ModelAdapter`` installs one forward pre-hook per decoder layer. Scorers on the same model (several
profiles, ``with_profile`` copies, a scorer per request) share one adapter, so the model carries one
set of hooks however many scorers exist; the hooks are removed when the last scorer using them is
released (garbage-collected, or :meth:`SemGradScorer.close` called).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from .fastpath import ModelAdapter

_lock = threading.Lock()
_shared: dict[int, tuple[ModelAdapter, int]] = {}  # id(model) -> (adapter, number of holders)


def acquire_adapter(
    model: Any, holder: object
) -> tuple[ModelAdapter, weakref.finalize[[int, ModelAdapter], object]]:
    """The model's shared adapter (created on first use) and a finalizer releasing ``holder``'s share.

    Call the returned finalizer to release early; otherwise it runs when ``holder`` is collected.
    """
    key = id(model)
    with _lock:
        entry = _shared.get(key)
        if entry is None or entry[0].model is not model:
            adapter = ModelAdapter(model)
            count = 0
        else:
            adapter, count = entry
        _shared[key] = (adapter, count + 1)
    return adapter, weakref.finalize(holder, _release, key, adapter)


def _release(key: int, adapter: ModelAdapter) -> None:
    with _lock:
        entry = _shared.get(key)
        if entry is None or entry[0] is not adapter:
            return
        count = entry[1] - 1
        if count > 0:
            _shared[key] = (adapter, count)
            return
        del _shared[key]
    adapter.remove_hooks()


def holders(model: Any) -> int:
    """How many live scorers share ``model``'s adapter (0: no hooks installed by semgrad-guard)."""
    with _lock:
        entry = _shared.get(id(model))
        return entry[1] if entry is not None and entry[0].model is model else 0
