"""The one progress bar: counts and time left, or time so far for open-ended jobs."""

import io

from rich.console import Console
from rich.progress import TimeElapsedColumn, TimeRemainingColumn

from ptxseg.util.progress import progress_bar


def test_a_disabled_bar_accepts_tasks_and_prints_nothing():
    out = io.StringIO()
    with progress_bar(enabled=False, console=Console(file=out, force_terminal=True)) as bar:
        task = bar.add_task("work", total=3)
        bar.advance(task)
    assert out.getvalue() == ""


def test_the_bar_shows_time_left_or_elapsed_time_for_jobs_without_a_total():
    assert any(isinstance(c, TimeRemainingColumn) for c in progress_bar().columns)
    bar = progress_bar(elapsed=True, transient=True)
    assert any(isinstance(c, TimeElapsedColumn) for c in bar.columns)
    assert not any(isinstance(c, TimeRemainingColumn) for c in bar.columns)
    assert bar.live.transient


def test_an_enabled_bar_prints_description_and_count():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80)
    with progress_bar(console=console) as bar:
        task = bar.add_task("predict", total=2)
        bar.advance(task, 2)
    assert "predict" in out.getvalue() and "2/2" in out.getvalue()
