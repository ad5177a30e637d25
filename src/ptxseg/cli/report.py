"""Commands: benchmark, ablate, report."""

import sys
from pathlib import Path

import typer

from ptxseg.cli.app import app


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@app.command()
def benchmark(
    encoders: str = typer.Option(
        "resnet50,efficientnet-b0,xception", help="Comma-separated encoder names to compare."
    ),
    size: int = typer.Option(256, help="Input size in pixels (a multiple of 32)."),
    batch_size: int = typer.Option(4, help="Images per batch."),
    device: str = typer.Option("cpu", help="cpu or cuda (cuda:0, ...)."),
    precision: str = typer.Option(
        "fp32", help="fp32, bf16, or both as 'fp32,bf16' (bf16 runs under autocast)."
    ),
    warmup: int = typer.Option(3, help="Untimed iterations before measuring."),
    iters: int = typer.Option(10, help="Timed iterations per measurement."),
    threads: int = typer.Option(0, help="torch threads in each worker (0: torch's default)."),
    isolate: bool = typer.Option(
        True, help="Measure each configuration in a fresh process (clean memory figures)."
    ),
    out: Path = typer.Option(Path("benchmark"), help="Folder for benchmark.md/.csv/.png."),
) -> None:
    """Compare encoders: parameters, GFLOPs, inference latency, throughput, memory, train step."""
    from rich.console import Console
    from rich.table import Table

    from ptxseg.benchmark import SHORT_COLUMNS, BenchConfig, environment_line, run_benchmark
    from ptxseg.benchmark import write_benchmark as write

    try:
        configs = [
            BenchConfig(enc, size, batch_size, device, prec, warmup, iters, threads or None)
            for prec in _split_list(precision)
            for enc in _split_list(encoders)
        ]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console = Console(width=None if sys.stdout.isatty() else 150)
    env = environment_line()
    console.print(f"[dim]{env}[/dim]")
    with console.status("benchmarking") as status:

        def progress(row: dict) -> None:
            state = f"[red]error[/red] {row['error'][:100]}" if row["error"] else "done"
            console.print(f"{row['encoder']} {row['precision']}: {state}")
            status.update(f"benchmarking ({len(done) + 1}/{len(configs)} done)")
            done.append(row)

        done: list[dict] = []
        rows = run_benchmark(configs, isolate=isolate, on_row=progress)
    table = Table(title=f"U-Net backbones at {size} px, batch {batch_size}, {device}")
    keys = [k for k in SHORT_COLUMNS if any(str(r.get(k, "")) != "" for r in rows)]
    for key in keys:
        left = key in ("encoder", "error")
        table.add_column(SHORT_COLUMNS[key], justify="left" if left else "right")
    for row in rows:
        table.add_row(*(str(row.get(k, ""))[:50] for k in keys))
    console.print(table)
    paths = write(rows, out, note=env)
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))


@app.command()
def report(
    folder: Path = typer.Argument(
        ..., help="A run folder, an ablation grid folder, or a folder of runs (e.g. the demo)."
    ),
    out: Path = typer.Option(None, help="Folder for report.html (default: FOLDER itself)."),
) -> None:
    """One self-contained HTML report: setup, metrics, curves, panels, ROC, benchmark, ablation."""
    from ptxseg.report import write_report

    if not folder.is_dir():
        raise typer.BadParameter(f"{folder} is not a folder", param_hint="FOLDER")
    path = write_report(folder, out)
    typer.echo(f"wrote {path}")
