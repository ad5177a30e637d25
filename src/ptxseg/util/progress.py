"""The one rich progress bar that long jobs share (prepare, evaluate, predict, demo)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)


def progress_bar(
    enabled: bool = True, console: Console | None = None, transient: bool = False
) -> Progress:
    """A bar with description, count and time left; disabled bars print nothing."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=transient,
    )
