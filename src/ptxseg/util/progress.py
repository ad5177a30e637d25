"""The one rich progress bar that long jobs share (prepare, synth, evaluate, predict, demo, the
load test)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(
    enabled: bool = True,
    console: Console | None = None,
    transient: bool = False,
    elapsed: bool = False,
) -> Progress:
    """A bar with description, count and time left; disabled bars print nothing (their tasks
    and advances are accepted and ignored). `transient` clears the bar when it ends; `elapsed`
    shows the time so far instead of the time left, for jobs whose length is not known (a task
    added with `total=None`)."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn() if elapsed else TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=transient,
    )
