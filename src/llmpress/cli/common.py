"""Helpers shared by the CLI modules: console, errors -> one line + exit code, JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

console = Console(stderr=True)
out = Console()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@contextmanager
def progress() -> Iterator[Progress]:
    """The one progress-bar style for long work (written to stderr, so --json stays clean)."""
    with Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False) as p:
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
