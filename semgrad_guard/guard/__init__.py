"""Deciding: a score in, a confidence and an action out, and the loop that retries or asks a person.

``calibration`` (score -> confidence), ``risk`` (thresholds with a guarantee), ``policy`` (rules and
:func:`~semgrad_guard.judge`), ``strategies`` (what a retry changes), ``outcomes`` (what an attempt and a run
return) and ``guard`` (:class:`~semgrad_guard.Guard`). Nothing here imports torch or a framework.
"""

from .guard import Guard, is_stop_exception, register_stop_exception
from .outcomes import Attempt, Generated, GuardResult
from .strategies import AttemptContext

__all__ = [
    "Attempt",
    "AttemptContext",
    "Generated",
    "Guard",
    "GuardResult",
    "is_stop_exception",
    "register_stop_exception",
]
