"""The base of every configuration model: a bad field is a :class:`ConfigurationError`, not pydantic's error.

``Model(...)`` with a bad field raises the class's ``config_error`` (a :class:`ConfigurationError`
subclass, itself a ``ValueError``) whose message names each bad field by its dotted path. Only direct
construction is translated (the metaclass wraps ``__call__``); ``model_validate`` keeps pydantic's
behaviour for callers that translate it themselves, and nested models validate as usual.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError
from pydantic._internal._model_construction import ModelMetaclass

from .errors import ConfigurationError


def format_validation_error(e: ValidationError) -> str:
    """pydantic errors as 'rules.1.action: Input should be ...; ...' (dotted field paths)."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")  # our validators' messages stand alone
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


class _TypedConfigMeta(ModelMetaclass):
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as e:
            error: type[ConfigurationError] = getattr(cls, "config_error", ConfigurationError)
            raise error(f"invalid {cls.__name__}: {_explain(cls, e)}") from e


def _explain(cls: Any, e: ValidationError) -> str:
    # Add what a top-level field means (its description), which usually says how to fix it.
    fields = getattr(cls, "model_fields", {})
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        field = fields.get(err["loc"][0]) if err["loc"] else None
        what = f" ({field.description})" if field is not None and field.description else ""
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}{what}" if loc else f"{msg}{what}")
    return "; ".join(parts)


class TypedConfig(BaseModel, metaclass=_TypedConfigMeta):
    """A pydantic model whose direct construction raises ``config_error`` for a bad field.

    Example:
        >>> class Cfg(TypedConfig):
        ...     n: int
        >>> try:
        ...     Cfg(n="x")
        ... except ConfigurationError as e:
        ...     print(e)
        invalid Cfg: n: Input should be a valid integer, unable to parse string as an integer
    """

    config_error: ClassVar[type[ConfigurationError]] = ConfigurationError
