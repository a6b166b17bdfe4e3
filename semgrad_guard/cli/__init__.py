"""The ``semgrad-guard`` command line. Each sub-command lives in its own module with a ``register``.

A module ``semgrad_guard.cli.<name>`` exposes ``register(subparsers)`` which adds its parser and
sets ``func`` (``args -> int`` exit code). Keep heavy imports (torch) inside the command functions,
so ``semgrad-guard --help`` and the review commands start fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ..errors import SemGradGuardError
from ._threads import apply_threads

_COMMAND_MODULES: tuple[str, ...] = ("model", "calibrate", "eval", "review", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semgrad-guard",
        description="Sampling-free hallucination scores (SemGrad) and guard policies for local HF chat models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _version() -> str:
    from .._version import VERSION

    return VERSION


def _quiet_foreign_progress() -> None:
    """No transformers / huggingface_hub progress bars ("Loading weights") in our output; ours stay.

    The environment variable is read when those libraries are imported; a user who set it keeps theirs.
    """
    if "HF_HUB_DISABLE_PROGRESS_BARS" in os.environ:
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:  # imported already (by a caller of main()): tell it directly
        hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module, not its tqdm class
        hub_tqdm.disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def main(argv: list[str] | None = None) -> int:
    _quiet_foreign_progress()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        apply_threads(args)  # before any model loads
        return int(args.func(args) or 0)
    except SemGradGuardError as e:
        from ._text import visible

        print(f"error: {visible(str(e))}", file=sys.stderr)  # a message may quote hostile text
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
