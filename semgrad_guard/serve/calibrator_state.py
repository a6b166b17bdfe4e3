"""Swapping the running service's calibrator without a restart: ``POST /admin/calibrator`` or SIGHUP.

The swap is one reference assignment per holder (the state and its Guard): every request reads the
calibrator once and is judged by that one object, old or new, never half of each; the payload's
``calibrator_version`` says which. A calibrator that does not fit the served model, or a missing
one while the policy has confidence rules, is refused and the old one stays.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..guard.calibration import Calibrator

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .app import ServiceState

logger = logging.getLogger(__name__)

_SWAP = threading.Lock()  # serialises reloads (readers never wait on it)


def swap_calibrator(state: ServiceState, calibrator: Calibrator) -> Calibrator | None:
    """Make ``calibrator`` the service's (and its Guard's) calibrator; returns the old one.

    Raises:
        CalibratorMismatchError: It was fitted on another model or profile.
    """
    scorer = state.scorer
    calibrator.check_compatible(getattr(scorer, "model_id", None), getattr(scorer, "profile", None))
    with _SWAP:
        old = state.calibrator
        if state.guard is not None:
            state.guard.set_calibrator(calibrator)
        state.calibrator = calibrator
        info = dict(state.model_info)
        info["calibrator"] = calibrator.model_dump(
            include={"model_id", "method", "features", "data", "n_samples"}
        )
        info["calibrator_version"] = calibrator.fingerprint
        state.model_info = info
    logger.info(
        "calibrator reloaded: %s -> %s (%s)",
        old.fingerprint if old is not None else None,
        calibrator.fingerprint,
        calibrator.data,
    )
    return old


def reload_from_file(state: ServiceState, path: str | Path) -> Calibrator | None:
    """Load the calibrator at ``path`` and swap it in (see :func:`swap_calibrator`)."""
    return swap_calibrator(state, Calibrator.load(path))


def install_sighup(app: FastAPI, path: str | Path) -> None:
    """On SIGHUP, reload the calibrator from ``path`` (in a thread; a bad file is logged, the old one stays).

    Call from the main thread (signal handlers can only be installed there).
    """

    def reload() -> None:
        state = getattr(app.state, "semgrad", None)
        if state is None:
            holder = app.state.semgrad_holder
            state = holder.state
        if state is None:
            logger.warning("SIGHUP: the model is not loaded yet; nothing to reload")
            return
        try:
            reload_from_file(state, path)
        except Exception as e:  # keep serving with the old calibrator
            logger.error(
                "SIGHUP: calibrator %s not reloaded (%s: %s); the old one stays", path, type(e).__name__, e
            )

    def handler(signum: int, frame: Any) -> None:
        threading.Thread(target=reload, name="semgrad-reload", daemon=True).start()

    signal.signal(signal.SIGHUP, handler)
    app.state.semgrad_calibrator_path = str(path)


def install_admin_routes(app: FastAPI, holder: Any) -> None:
    """``POST /admin/calibrator``: body ``{"calibrator": {...JSON...}}``, or ``{}`` to reload the file the
    service was started with. Only on a service with a bearer token (the gate checks it)."""
    from fastapi import Body

    @app.post("/admin/calibrator", tags=["admin"])
    async def reload_calibrator(body: dict[str, Any] = Body(default_factory=dict)) -> dict[str, Any]:  # noqa: B008
        """Swap the calibrator without a restart (atomic); answers the old and new versions."""
        import asyncio

        refusal = getattr(app.state, "semgrad_reload_refusal", None)
        if refusal is not None:  # e.g. one Ray Serve replica of several
            raise ConfigurationError(refusal)
        if holder.token is None:
            raise ConfigurationError(
                "admin routes need a service started with a bearer token (SEMGRAD_GUARD_TOKEN or --token-file); "
                "without one, reload with: kill -HUP <pid>"
            )
        state = await holder.get()
        if "calibrator" in body:
            raw = body["calibrator"]
            import json

            new = Calibrator.from_json(json.dumps(raw), source="request body")
        else:
            path = getattr(app.state, "semgrad_calibrator_path", None)
            if path is None:
                raise ConfigurationError(
                    "no calibrator file to reload: the service was started without --calibrator FILE; "
                    'send {"calibrator": {...}} (the JSON calibrate --from-reviews wrote)'
                )
            new = await asyncio.to_thread(Calibrator.load, path)
        old = swap_calibrator(state, new)  # CalibratorMismatchError: 4xx, the old one stays
        return {
            "calibrator_version": new.fingerprint,
            "previous": old.fingerprint if old is not None else None,
            "data": new.data,
        }
