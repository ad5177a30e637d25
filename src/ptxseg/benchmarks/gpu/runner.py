"""The order of a `benchmark-gpu` run: the data, then each stage asked for through the registry,
within the time budget; a stage that fails writes its table with the error and the run goes on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ptxseg.benchmarks.common import environment_lines, error_text

# the stage modules register their stages when imported
from ptxseg.benchmarks.gpu import (  # noqa: F401
    backbones_stage,
    pipeline_stage,
    predict_stage,
    prepare_stage,
    serve_stage,
    train_stage,
    writes_stage,
)
from ptxseg.benchmarks.gpu.bench import GPU_STAGES, Bench, GpuBenchSettings, StageContext
from ptxseg.benchmarks.gpu.bench_data import make_data


def run_gpu_benchmark(settings: GpuBenchSettings, say: Callable[[str], None] = print) -> list[Path]:
    """Every stage asked for, within the time budget; returns the tables written."""
    bench = Bench(settings, say)
    say("\n".join(environment_lines()))
    ctx = StageContext(bench, make_data(bench))
    for stage in settings.stages:
        if bench.elapsed() > settings.budget_s:
            say(f"{stage}: skipped, the budget of {settings.budget_s:.0f} s is spent")
            continue
        say(f"{stage} (at {bench.elapsed():.0f} s)")
        try:
            GPU_STAGES[stage](ctx)
        except Exception as err:  # noqa: BLE001 - one stage failing leaves the others
            bench.write(stage, f"{stage}: failed", [{"error": error_text(err)}])
    say(f"done in {bench.elapsed():.0f} s")
    return bench.tables
