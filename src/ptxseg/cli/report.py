"""Commands: benchmark, report."""

import sys
from pathlib import Path

import typer

from ptxseg.cli.app import app, fail
from ptxseg.cli.guarded import READ, TABLES, WALKED, Out, guarded
from ptxseg.cli.options import split_list
from ptxseg.util import path_guard


@app.command(rich_help_panel="Benchmarks")
@guarded(outputs={"out": TABLES})
def benchmark(
    encoders: str = typer.Option(
        "resnet50,efficientnet-b0,xception", help="Comma-separated encoder names to compare."
    ),
    size: int = typer.Option(256, help="Input size in pixels (a multiple of 32)."),
    batch_size: int = typer.Option(4, min=1, help="Images per batch."),
    device: str = typer.Option("cpu", help="cpu or cuda (cuda:0, ...)."),
    precision: str = typer.Option(
        "fp32", help="fp32, bf16, or both as 'fp32,bf16' (bf16 runs under autocast)."
    ),
    compile: str = typer.Option(
        "auto",
        help="off, on, or both as 'off,on': also measure the model under torch.compile with "
        "channels_last (auto: both on cuda, off on the CPU).",
    ),
    warmup: int = typer.Option(3, help="Untimed iterations before measuring."),
    iters: int = typer.Option(10, help="Timed iterations per measurement."),
    threads: int = typer.Option(0, help="torch threads in each worker (0: torch's default)."),
    isolate: bool = typer.Option(
        True, help="Measure each configuration in a fresh process (clean memory figures)."
    ),
    out: Path = typer.Option(Path("benchmark"), help="Folder for benchmark.md/.csv/.png."),
    baseline: str | None = typer.Option(
        None, help="Encoder the throughput ratios refer to (default: the first one)."
    ),
) -> None:
    """Compare encoders: parameters, GFLOPs, inference latency, throughput, memory, train step."""
    from rich.console import Console

    from ptxseg.benchmarks import backbones as bb
    from ptxseg.benchmarks.common import environment_lines

    try:
        template = bb.BenchConfig(
            "", size, batch_size, device, "fp32", warmup, iters, threads or None
        )
        modes = bb.compile_modes(compile, device)
        configs = bb.backbone_configs(split_list(encoders), split_list(precision), modes, template)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console = Console(width=None if sys.stdout.isatty() else 150)
    console.print("[dim]" + "\n".join(environment_lines()) + "[/dim]")
    rows = bb.run_benchmark_with_status(configs, console, isolate, baseline)
    title = f"U-Net backbones at {size} px, batch {batch_size}, {device}"
    console.print(bb.terminal_table(rows, title))
    paths = bb.write_benchmark(rows, out, baseline=baseline or "")
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))


@app.command("benchmark-gpu", rich_help_panel="Benchmarks")
@guarded(inputs={"dicoms": READ}, outputs={"out": TABLES, "work": Out()})
def benchmark_gpu(
    out: Path = typer.Option(Path("benchmarks/results"), help="Folder for gpu-*.md and .csv."),
    work: Path = typer.Option(
        Path("/tmp/ptxseg-gpu-bench"), help="Scratch folder (data, runs, logs); reused."
    ),
    dicoms: Path | None = typer.Option(
        None, help="Real SIIM DICOMs for the predict stage (default: synthetic ones)."
    ),
    images: int = typer.Option(1024, help="DICOMs to prepare and predict (repeated copies)."),
    distinct: int = typer.Option(48, help="Distinct synthetic radiographs."),
    source_size: int = typer.Option(1024, help="Side of the synthetic radiographs."),
    size: int = typer.Option(512, help="Model input and cache size."),
    encoder: str = typer.Option("resnet50", help="Encoder of the U-Net."),
    batch_size: int = typer.Option(32, min=1, help="Images per batch."),
    train_batches: int = typer.Option(40, help="Batches per training epoch (2 epochs)."),
    workers: int = typer.Option(None, help="Worker processes (default: one per core)."),
    device: str = typer.Option("cuda", help="cuda, or cpu to check the stages at toy sizes."),
    stages: str = typer.Option(
        "pipeline,serve,predict,train,writes,prepare,backbones",
        help="Stages to run, in this order.",
    ),
    budget: float = typer.Option(420.0, help="Seconds after which no further stage starts."),
) -> None:
    """Every GPU measurement in one run: pipeline, serve, predict, train, writes, prepare,
    backbones.

    Example (what benchmarks/gpu.sh runs): ptxseg benchmark-gpu --out benchmarks/results
    """
    from ptxseg.benchmarks.gpu import GpuBenchSettings, run_gpu_benchmark

    try:
        settings = GpuBenchSettings(
            out=out,
            work=work,
            dicoms=dicoms,
            images=images,
            distinct=distinct,
            source_size=source_size,
            size=size,
            encoder=encoder,
            batch_size=batch_size,
            train_batches=train_batches,
            device=device,
            stages=tuple(split_list(stages)),
            budget_s=budget,
            **({} if workers is None else {"workers": workers}),
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    tables = run_gpu_benchmark(settings, say=typer.echo)
    typer.echo("wrote " + ", ".join(str(t) for t in tables))


@app.command("benchmark-stats", rich_help_panel="Benchmarks")
@guarded(outputs={"out": TABLES})
def benchmark_stats(
    out: Path = typer.Option(Path("benchmarks/results"), help="Folder for the table (.md, .csv)."),
    images: int = typer.Option(10_000, help="Images of the synthetic split."),
    resamples: int = typer.Option(2000, help="Bootstrap resamples."),
) -> None:
    """Time evaluate's patient-level bootstrap (vectorised) against a plain loop, side by side.

    Example: ptxseg benchmark-stats --out benchmarks/results
    """
    from ptxseg.benchmarks.statistics import run_stats_benchmark

    rows = run_stats_benchmark(out, images, resamples)
    for row in rows:
        typer.echo(f"{row['benchmark']}: {row['seconds']} s ({row['speed_up']}x)")
    typer.echo(f"written to {out}/statistics-benchmark.md and .csv")


def _report_file(params) -> list:
    return [((params["out"] or params["folder"]) / "report.html", path_guard.FILE)]


@app.command(rich_help_panel="Demo and reports")
@guarded(inputs={"folder": WALKED}, outputs={"out": Out(paths=_report_file)})
def report(
    folder: Path = typer.Argument(
        ..., help="A run folder, an ablation grid folder, or a folder of runs (e.g. the demo)."
    ),
    out: Path = typer.Option(None, help="Folder for report.html (default: FOLDER itself)."),
) -> None:
    """One self-contained HTML report: setup, metrics, curves, panels, ROC, benchmark, ablation."""
    from ptxseg.reporting.html_report import write_html_report
    from ptxseg.reporting.report_folders import discover

    if not folder.is_dir():
        fail(f"{folder} is not a folder: expected a run, grid or benchmark folder")
    if not any(discover(folder).values()):
        fail(
            f"nothing to report in {folder}: expected a run folder (config.yaml + metrics.csv, "
            "from `ptxseg train`), a grid folder (ablation.csv, from `ptxseg ablate`) or a "
            "benchmark folder (benchmark.csv), or a folder holding them (up to 3 levels down)"
        )
    path = write_html_report(folder, out)
    typer.echo(f"wrote {path}")
