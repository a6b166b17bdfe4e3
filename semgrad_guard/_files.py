"""Reading the small configuration files a user names (policies, calibrators, profiles), safely.

A path given on a command line may be anything: ``/dev/zero`` (never ends), a multi-gigabyte log,
``/etc/shadow``. Reads are bounded, and no error message quotes the file's contents.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigurationError

MAX_CONFIG_BYTES = 8 * 1024 * 1024
"""The largest policy, calibrator or profile file read (8 MiB; the shipped ones are a few KB)."""


def read_config_text(path: str | Path, what: str, limit: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of a ``what`` file (``"policy"``, ``"calibrator"``, ``"profile"``), at most ``limit`` bytes.

    Raises:
        ConfigurationError: the file does not exist, cannot be read, is larger than ``limit``
            or is not UTF-8 text; the message names the file, never its contents.
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(limit + 1)  # /dev/zero stops here
    except FileNotFoundError as e:
        # A README's relative path (cookbook/policies/...) read from another directory: say where we looked.
        where = "" if p.is_absolute() else f" (relative to {Path.cwd()})"
        raise ConfigurationError(f"{what} file {p} does not exist{where}") from e
    except IsADirectoryError as e:
        raise ConfigurationError(f"{what} file {p} is a directory; give a file") from e
    except OSError as e:
        raise ConfigurationError(f"{what} file {p} cannot be read ({e.strerror or type(e).__name__})") from e
    if len(data) > limit:
        raise ConfigurationError(f"{what} file {p} is larger than {_size(limit)}; is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigurationError(
            f"{what} file {p} is not UTF-8 text (byte {e.start}); is it the right file?"
        ) from None


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n >= 1024 * 1024 and n % (1024 * 1024) == 0 else f"{n} bytes"
