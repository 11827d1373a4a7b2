"""Helpers shared by the CLI modules: console, errors -> one line + exit code, JSON output.

Output works with and without a terminal: on a TTY, tables fit the window and progress is a live
bar; piped or captured (CI logs, `make run | tee run.log`), tables keep their full width and
progress is a plain line per task every `LLMPRESS_PROGRESS_INTERVAL` seconds (default 10).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

# Wide enough for any table we print: without a terminal rich would otherwise cut tables to 80
# columns ("rec…", "art…"). An explicit COLUMNS still wins.
_NO_TTY_WIDTH = 10_000


def _width(stream: Any) -> int | None:
    if os.environ.get("COLUMNS") or (hasattr(stream, "isatty") and stream.isatty()):
        return None  # rich measures the terminal (or reads COLUMNS)
    return _NO_TTY_WIDTH


console = Console(stderr=True, width=_width(sys.stderr))
out = Console(width=_width(sys.stdout))


def progress_interval() -> float:
    """Seconds between progress lines when there is no terminal (`LLMPRESS_PROGRESS_INTERVAL`, default 10)."""
    try:
        return max(0.05, float(os.environ.get("LLMPRESS_PROGRESS_INTERVAL", "10")))
    except ValueError:
        return 10.0


class LineProgress(Progress):
    """Progress for a console that is not a terminal: no live bar (it would print nothing until the
    end), but one plain, timestamped line per task that moved, every `interval` seconds, and a last
    line for each task when the work ends. Same API as rich's Progress, so steps need not care."""

    def __init__(self, *columns: Any, interval: float, **kwargs: Any) -> None:
        super().__init__(*columns, disable=True, **kwargs)
        self.interval = interval
        self._stop_logging = threading.Event()
        self._reported: dict[TaskID, tuple[float, bool]] = {}
        self._logger = threading.Thread(target=self._loop, daemon=True, name="llmpress-progress-lines")

    def start(self) -> None:
        super().start()
        self._logger.start()

    def stop(self) -> None:
        self._stop_logging.set()
        if self._logger.is_alive():
            self._logger.join()
        self._log_lines()
        super().stop()

    def _loop(self) -> None:
        while not self._stop_logging.wait(self.interval):
            self._log_lines()

    def _log_lines(self) -> None:
        for task in list(self.tasks):
            state = (task.completed, task.finished)
            if self._reported.get(task.id) == state:
                continue  # nothing moved since its last line
            self._reported[task.id] = state
            done = f"{task.completed:g}/{task.total:g} ({task.percentage:.0f} %)" if task.total else f"{task.completed:g}"
            elapsed = time.strftime("%H:%M:%S", time.gmtime(task.elapsed or 0))
            status = "done" if task.finished else f"{elapsed} elapsed"
            self.console.print(f"{time.strftime('%H:%M:%S')} {task.description}: {done}, {status}",
                               markup=False, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@contextmanager
def progress() -> Iterator[Progress]:
    """The one progress display for long work (on stderr, so --json stays clean): a live bar on a
    terminal, periodic lines otherwise."""
    columns = (SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())
    p = (Progress(*columns, console=console, transient=False) if console.is_terminal
         else LineProgress(*columns, console=console, interval=progress_interval()))
    with p:
        yield p


def run_guarded(fn: Callable[[], Any]) -> Any:
    """Run a command body; an LlmpressError becomes one line on stderr and its exit code."""
    import typer

    from llmpress.errors import LlmpressError

    try:
        return fn()
    except LlmpressError as e:
        from rich.markup import escape

        # escaped: a fix like "pip install 'llmpress[onnx]'" must not be read as rich markup
        console.print(f"[bold red]error:[/] {escape(e.one_line())}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: nothing half-written was kept")
        raise typer.Exit(130) from None
