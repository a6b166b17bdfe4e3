"""Generation settings: one vocabulary, one override mechanism, one precedence, for every adapter.

A guard's retry strategy changes how the next attempt is generated (resample at a temperature, another seed).
The model that generates may sit deep inside a chain or a query engine, so the settings travel in a context
variable: :func:`generation_overrides` sets them for the code inside the block (this thread or task, and the
threads LangChain and LlamaIndex copy the context into), and every adapter's model resolves its settings with
:func:`resolve_generation`:

    model defaults  <  per-call arguments  <  the current overrides

Overrides win: a retry must be able to resample a chain that binds ``temperature=0``.

Settings: ``max_new_tokens``, ``do_sample``, ``temperature``, ``top_p``, ``seed``. A layer that sets
``temperature`` without ``do_sample`` samples exactly when the temperature is above 0; greedy decoding
drops ``temperature`` and ``top_p`` (Hugging Face warns about them otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from .errors import ConfigurationError

SETTINGS: tuple[str, ...] = ("max_new_tokens", "do_sample", "temperature", "top_p", "seed")
"""The generation settings an override may carry."""

_OVERRIDES: ContextVar[dict[str, Any] | None] = ContextVar("semgrad_generation_overrides", default=None)


def _checked(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ConfigurationError(f"unknown generation settings {unknown} in {where}; use {list(SETTINGS)}")
    return dict(settings)


@contextmanager
def generation_overrides(**settings: Any) -> Iterator[dict[str, Any]]:
    """Generation settings for every adapter model called inside the block (nested blocks add to them).

    Example:
        >>> with generation_overrides(do_sample=True, temperature=0.9, seed=7):
        ...     resolve_generation({"max_new_tokens": 32, "temperature": 0.0}, {"seed": 1})
        {'max_new_tokens': 32, 'do_sample': True, 'temperature': 0.9, 'seed': 7}
        >>> resolve_generation({"max_new_tokens": 32, "temperature": 0.0}, {"seed": 1})
        {'max_new_tokens': 32, 'do_sample': False, 'seed': 1}
    """
    merged = {**(_OVERRIDES.get() or {}), **_checked(settings, "generation_overrides(...)")}
    token = _OVERRIDES.set(merged)
    try:
        yield merged
    finally:
        _OVERRIDES.reset(token)


def current_overrides() -> dict[str, Any]:
    """The overrides in force here (empty outside any :func:`generation_overrides` block)."""
    return dict(_OVERRIDES.get() or {})


def _layer(settings: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in settings.items() if k in SETTINGS and v is not None}
    if "temperature" in out and "do_sample" not in out:
        out["do_sample"] = float(out["temperature"]) > 0
    return out


def resolve_generation(
    defaults: Mapping[str, Any], per_call: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The settings to generate with: ``defaults < per_call < current overrides`` (see the module docstring).

    Keys outside :data:`SETTINGS` are ignored here (adapters pass their extra ``generate()`` arguments on
    themselves); ``None`` values mean "not set".
    """
    out: dict[str, Any] = {}
    for layer in (defaults, per_call or {}, _OVERRIDES.get() or {}):
        out.update(_layer(layer))
    if not out.get("do_sample"):
        out["do_sample"] = False
        out.pop("temperature", None)
        out.pop("top_p", None)
    return {k: out[k] for k in SETTINGS if k in out}
