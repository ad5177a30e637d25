"""The run of `benchmark-gpu`: its settings, the clock, child commands, tables and the stage
registry that maps a stage's name to its function."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ptxseg.benchmarks.common import write_table
from ptxseg.util.system import usable_cores

# What the open targets need first (predict's rate and start-up, serve's start-up, training's
# rate and loader overhead), the stages whose targets are settled last: a spent budget drops
# those. Without a train stage before them, predict and serve use a random-weight model.
STAGES = ("pipeline", "serve", "predict", "train", "writes", "prepare", "backbones")


@dataclass
class GpuBenchSettings:
    """What one `benchmark-gpu` run measures and where it works."""

    out: Path = Path("benchmarks/results")
    work: Path = Path("/tmp/ptxseg-gpu-bench")
    dicoms: Path | None = None  # real DICOMs for the predict stage (replicated to `images`)
    images: int = 1024  # DICOMs for prepare and predict (copies of a few distinct ones)
    distinct: int = 48  # distinct synthetic radiographs
    source_size: int = 1024  # their side (SIIM's)
    size: int = 512  # model input and cache size
    encoder: str = "resnet50"
    batch_size: int = 32
    train_batches: int = 40  # batches per training epoch (2 epochs: compile, then steady)
    workers: int = field(default_factory=usable_cores)
    device: str = "cuda"
    stages: tuple[str, ...] = STAGES
    budget_s: float = 420.0  # no stage starts after this many seconds
    stage_timeout_s: float = 240.0  # one command's limit

    def __post_init__(self) -> None:
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise ValueError(
                f"unknown stage(s) {', '.join(sorted(unknown))}: choose from {', '.join(STAGES)}"
            )


class Bench:
    """One run: settings, the clock, the log folder and the tables written so far."""

    def __init__(self, settings: GpuBenchSettings, say: Callable[[str], None] = print) -> None:
        self.s = settings
        self.say = say
        self.start = time.perf_counter()
        self.logs = settings.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.tables: list[Path] = []

    @property
    def gpu(self) -> bool:
        return self.s.device.startswith("cuda")

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def ptxseg(self, name: str, *args: str, timeout: float | None = None) -> tuple[int, float]:
        """Run `python -m ptxseg ARGS` in a fresh process; (exit code, seconds). Logs kept."""
        command = [sys.executable, "-m", "ptxseg", *map(str, args)]
        log = self.logs / f"{name}.log"
        start = time.perf_counter()
        with open(log, "w") as handle:
            handle.write(" ".join(command) + "\n")
            handle.flush()
            try:
                code = subprocess.run(
                    command,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    timeout=timeout or self.s.stage_timeout_s,
                    env=child_env(),
                ).returncode
            except subprocess.TimeoutExpired:
                code = 124
        seconds = time.perf_counter() - start
        self.say(f"  {name}: exit {code} in {seconds:.1f} s (log {log})")
        return code, seconds

    def write(
        self, stage: str, title: str, rows: list[dict], notes: str = "", baseline: str = ""
    ) -> Path:
        """gpu-<stage>.md and .csv in the output folder, through the benchmark harness."""
        keys = list(dict.fromkeys(k for row in rows for k in row))
        paths = write_table(
            self.s.out, f"gpu-{stage}", title, {k: k for k in keys}, rows, baseline, notes
        )
        self.tables.append(paths["md"])
        self.say(paths["md"].read_text())
        return paths["md"]


def child_env() -> dict[str, str]:
    """This process's environment with its import path, so children import the same ptxseg."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# ---------------------------------------------------------------------------- the registry


@dataclass
class BenchData:
    """The files every stage reads (made by `bench_data.make_data`)."""

    dicoms: Path  # `images` synthetic DICOMs (distinct ones repeated), with annotations
    annotations: Path
    predict_inputs: Path  # what predict reads: the real DICOMs repeated, else the synthetic ones
    predict_source: str
    work: Path  # the prepared folder at `size` (made by the prepare stage, or on demand)


@dataclass
class StageContext:
    """What every stage gets: the run, its data, and the model of the train stage once it ran
    (predict and serve use it; without it they save a random-weight one)."""

    bench: Bench
    data: BenchData
    model: Path | None = None


StageFunction = Callable[[StageContext], None]
GPU_STAGES: dict[str, StageFunction] = {}
"""Stage name -> its function; filled by `gpu_stage` as the stage modules are imported."""


def gpu_stage(name: str) -> Callable[[StageFunction], StageFunction]:
    """Register the decorated function as the stage `name` (one of STAGES)."""
    if name not in STAGES:
        raise ValueError(f"stage {name!r} is not one of {', '.join(STAGES)}")

    def register(function: StageFunction) -> StageFunction:
        GPU_STAGES[name] = function
        return function

    return register
