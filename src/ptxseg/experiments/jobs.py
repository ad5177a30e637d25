"""The resumable job list under `cv`, `ablate` and the demo: skip what is done, report events,
write `done.json` last.

A job is finished when its folder holds `done.json`. That file is written atomically, after the
job's work, so a job killed at any moment is either finished or is run again (continuing from its
own checkpoint where it has one). Jobs are independent; which of them a process runs (a shard) is
the caller's choice.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptxseg.util.jsonio import read_json, write_json
from ptxseg.util.run_folders import DONE

ERROR = "error.txt"

EventHandler = Callable[[str, Any, "dict | None"], None]
"""Called with the event (skipped, started, resumed, done, failed), the job's key and the job's
`done.json` record (skipped, done) or `{"error": ...}` (failed)."""


@dataclass(frozen=True)
class Job:
    """One unit of an experiment: its key in events, its folder and what `done.json` starts with."""

    key: Hashable
    folder: Path
    record: dict = field(default_factory=dict)
    checkpoint: Path | None = None  # present: an interrupted job continues from it ("resumed")


@dataclass(frozen=True)
class JobPolicy:
    """How a job list runs: the name of the seconds field in `done.json`, whether a failing job
    stops the list (raises) or is logged to `<folder>/error.txt` while the list goes on, and who
    hears the events."""

    seconds_key: str = "seconds"
    keep_going: bool = False
    on_event: EventHandler | None = None

    def tell(self, kind: str, key: Hashable, payload: dict | None) -> None:
        if self.on_event is not None:
            self.on_event(kind, key, payload)


def read_done(folder: Path) -> dict | None:
    """The record of a finished job (its `done.json`), or None when it has not finished."""
    return read_json(Path(folder) / DONE, default=None)


def run_jobs(
    jobs: Iterable[Job], work: Callable[[Job], dict], policy: JobPolicy = JobPolicy()
) -> dict[Hashable, dict]:
    """Run the jobs one after another, skipping finished ones; returns the records of the jobs
    that are finished now, by key, in the jobs' order."""
    finished: dict[Hashable, dict] = {}
    for job in jobs:
        done = read_done(job.folder)
        if done is not None:
            finished[job.key] = done
            policy.tell("skipped", job.key, done)
            continue
        record = _run_one(job, work, policy)
        if record is not None:
            finished[job.key] = record
            policy.tell("done", job.key, record)
    return finished


def _run_one(job: Job, work: Callable[[Job], dict], policy: JobPolicy) -> dict | None:
    """Run one job and persist its record (None: it failed and the list goes on)."""
    resumed = job.checkpoint is not None and Path(job.checkpoint).is_file()
    if policy.keep_going:
        Path(job.folder).mkdir(parents=True, exist_ok=True)
    policy.tell("resumed" if resumed else "started", job.key, None)
    start = time.perf_counter()
    try:
        values = work(job)
    except Exception as exc:
        if not policy.keep_going:
            raise
        (Path(job.folder) / ERROR).write_text(traceback.format_exc())
        policy.tell("failed", job.key, {"error": f"{type(exc).__name__}: {exc}"})
        return None
    seconds = round(time.perf_counter() - start, 1)
    record = {**job.record, **values, policy.seconds_key: seconds}
    # last: marks the job as finished
    write_json(Path(job.folder) / DONE, record)
    (Path(job.folder) / ERROR).unlink(missing_ok=True)
    return record
