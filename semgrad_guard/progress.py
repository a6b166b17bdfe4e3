"""Progress for long commands: live bars on a terminal, periodic plain lines in a redirected log.

Rich's bars redraw in place and draw nothing useful when the output is a file or a pipe (CI logs,
``nohup ... > log``). Off a terminal, :func:`progress_display` returns a :class:`LineProgress` with
the same ``add_task`` / ``advance`` / ``update`` interface, which prints one line per task at its
start, every ``interval`` seconds while it runs (``$SEMGRAD_GUARD_PROGRESS_INTERVAL``, default 30),
and when it completes.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

ENV_INTERVAL = "SEMGRAD_GUARD_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    started: float = field(default_factory=time.monotonic)
    last_print: float = field(default_factory=time.monotonic)
    finished: bool = False


class LineProgress:
    """Plain-text progress lines (for logs): ``progress: <task>: 120/1176 (10%), 0.52/s, elapsed 0:03:50, ETA 0:33:50``.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> with LineProgress(out, interval=0) as bar:
        ...     t = bar.add_task("score", total=2)
        ...     bar.advance(t, 2)
        >>> out.getvalue().splitlines()[-1].startswith("progress: score: 2/2 (100%)")
        True
    """

    def __init__(self, stream: TextIO | None = None, *, interval: float | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if interval is None:
            try:
                interval = float(os.environ.get(ENV_INTERVAL, DEFAULT_INTERVAL))
            except ValueError:
                interval = DEFAULT_INTERVAL
        self.interval = interval
        self.tasks: dict[int, _Task] = {}

    def add_task(self, description: str, total: float | None = None, **_: Any) -> int:
        task_id = len(self.tasks)
        self.tasks[task_id] = _Task(description, total)
        size = f" ({int(total)} steps)" if total is not None else ""
        self._write(f"progress: {description}: started{size}")
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(
        self,
        task_id: int,
        *,
        advance: float | None = None,
        completed: float | None = None,
        total: float | None = None,
        description: str | None = None,
        **_: Any,
    ) -> None:
        task = self.tasks[task_id]
        if description is not None:
            task.description = description
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        now = time.monotonic()
        done = task.total is not None and task.completed >= task.total
        if done and not task.finished:
            task.finished = True
            self._report(task, now)
        elif not done and now - task.last_print >= self.interval:
            self._report(task, now)

    def _report(self, task: _Task, now: float) -> None:
        task.last_print = now
        elapsed = now - task.started
        rate = task.completed / elapsed if elapsed > 0 else 0.0
        parts = [f"{int(task.completed)}"]
        if task.total:
            parts = [f"{int(task.completed)}/{int(task.total)} ({100 * task.completed / task.total:.0f}%)"]
        parts.append(f"{rate:.2f}/s")
        parts.append(f"elapsed {_clock(elapsed)}")
        if task.total and rate > 0 and task.completed < task.total:
            parts.append(f"ETA {_clock((task.total - task.completed) / rate)}")
        self._write(f"progress: {task.description}: {', '.join(parts)}")

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def start(self) -> None:
        """Nothing to draw (the Progress interface)."""

    def stop(self) -> None:
        """Report tasks left unfinished (an error or an early stop), so the log shows where it ended."""
        now = time.monotonic()
        for task in self.tasks.values():
            if not task.finished and task.last_print < now:
                task.finished = True
                self._report(task, now)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def progress_display(enabled: bool, *, stream: TextIO | None = None) -> Any:
    """Rich bars when the output is a terminal, :class:`LineProgress` lines when it is not, nothing when disabled."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    if enabled and not Console().is_terminal:
        return LineProgress(stream)

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-- q/s" if speed is None else f"{speed:.2f} q/s")

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )
