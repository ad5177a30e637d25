"""Commands: prepare, benchmark-data."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ptxseg.cli.app import app
from ptxseg.progress import progress_bar

console = Console()


def fail(message: str) -> None:
    """Print a user error in red and exit with status 2 (no traceback)."""
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


@app.command()
def prepare(
    images: Path = typer.Option(..., help="Folder of DICOMs, searched recursively."),
    annotations: Path = typer.Option(..., help="SIIM annotation CSV (train-rle.csv)."),
    out: Path = typer.Option(..., help="Work folder for manifest, split and cache."),
    size: int = typer.Option(256, help="Cache resolution: 256, 512, 1024 or any multiple of 32."),
    seed: int = typer.Option(0, help="Seed of the train/val/test split."),
    val: float = typer.Option(0.1, help="Share of images for validation."),
    test: float = typer.Option(0.1, help="Share of images for the test split."),
    workers: int = typer.Option(
        min(4, os.cpu_count() or 1), help="Processes that decode DICOMs in parallel."
    ),
    rle_encoding: str = typer.Option(
        "auto", help="auto (detect from the CSV), relative (SIIM) or absolute."
    ),
    folds: int = typer.Option(
        0,
        help="Also split the train and val images into K cross-validation folds (grouped by "
        "patient, stratified, seeded; saved in splits.json and reused). 0: keep saved folds.",
    ),
) -> None:
    """Join DICOMs with annotations; write manifest, seeded split and resized array cache.

    Example: ptxseg prepare --images siim/dicom-images-train --annotations siim/train-rle.csv
    --out work --size 256 [--folds 5]
    """
    from ptxseg.data.prepare import prepare as run_prepare

    try:
        with progress_bar(console=console) as progress:
            result = run_prepare(
                images,
                annotations,
                out,
                size,
                seed,
                val,
                test,
                workers,
                rle_encoding,
                progress,
                folds=folds,
            )
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    table = Table(title=f"{out} ({size}px, {result.encoding} RLE)")
    for column in ("split", "images", "positive", "positive share"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for split, c in result.counts.items():
        share = f"{c['positive'] / c['images']:.1%}" if c["images"] else "-"
        table.add_row(split, str(c["images"]), str(c["positive"]), share)
    console.print(table)
    if result.folds:
        folds_table = Table(title=f"{len(result.folds)} folds of the train and val images")
        for column in ("fold", "images", "positive", "positive share"):
            folds_table.add_column(column, justify="right")
        for k, c in enumerate(result.folds):
            share = f"{c['positive'] / c['images']:.1%}" if c["images"] else "-"
            folds_table.add_row(str(k), str(c["images"]), str(c["positive"]), share)
        console.print(folds_table)
    for key, items in result.problems.items():
        if items:
            console.print(
                f"[yellow]{len(items)} {key.replace('_', ' ')}[/yellow] "
                f"(listed in {out}/unmatched.json)"
            )
    if not result.cache_written:
        console.print("cache already up to date; nothing rewritten")


@app.command("benchmark-data")
def benchmark_data(
    out: Path = typer.Option(Path("benchmarks/results"), help="Folder for the table (.md, .csv)."),
    real_dicoms: Path = typer.Option(
        Path(__file__).resolve().parents[4] / "shared" / "data" / "siim-real",
        help="Folder of real SIIM DICOMs to time (skipped when absent).",
    ),
    synthetic: int = typer.Option(60, help="Synthetic 1024px DICOMs to time and prepare."),
    rle_rows: int = typer.Option(200, help="Realistic RLE rows to decode and encode."),
) -> None:
    """Time RLE coding, DICOM reading and prepare against plain references, side by side.

    Example: ptxseg benchmark-data --out benchmarks/results
    """
    from ptxseg.benchmarks.data import format_markdown, run

    rows = run(out, real_dicoms, synthetic, rle_rows)
    console.print(format_markdown(rows))
    console.print(f"written to {out}/data-benchmark.md and .csv")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-output"), help="Folder for every step's output."),
    n_images: int = typer.Option(400, help="Synthetic radiographs to generate."),
    size: int = typer.Option(128, help="Training resolution (multiple of 32)."),
    encoders: str = typer.Option(
        "efficientnet-b0,resnet50,xception", help="Comma-separated backbones to train."
    ),
    epochs: int = typer.Option(
        0, help="Epochs for every backbone (0: 25 for efficientnet-b0, 10 for the others)."
    ),
) -> None:
    """The whole pipeline on synthetic data: synth, prepare, train, evaluate, benchmark, report.

    Runs in about 15 minutes on 2 CPU cores; rerunning skips the steps already done.
    Example: ptxseg demo --out demo-output
    """
    from ptxseg.demo import DemoSettings, run_demo

    settings = DemoSettings(
        n_images=n_images, size=size, encoders=[e for e in encoders.split(",") if e]
    )
    if epochs:
        settings.epochs = {}
        settings.default_epochs = epochs
    run_demo(out, settings)
