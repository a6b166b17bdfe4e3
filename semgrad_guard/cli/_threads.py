"""``--threads``, one definition for every command that runs the model.

Torch reads ``OMP_NUM_THREADS`` itself; the library never calls ``torch.set_num_threads`` on its own,
so a user's setting holds. ``--threads N`` is the command-line way to set it, applied before any
model loads (on a busy machine, 1 thread is often several times faster than torch's default).
"""

from __future__ import annotations

import argparse
from typing import Any

from ._args import positive_int


def add_threads_argument(p: Any, help: str | None = None) -> None:
    """Add ``--threads N`` to a sub-command's parser (``args.threads``, None: torch's choice)."""
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help=help
        or "torch CPU threads (default: OMP_NUM_THREADS, else torch's; 1 is fastest on a busy machine)",
    )


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's threads from ``--threads``; without it, leave them as the user's environment set them."""
    threads = getattr(args, "threads", None)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
