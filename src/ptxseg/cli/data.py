"""Commands: prepare, benchmark-data."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from ptxseg.cli import errors, options
from ptxseg.cli.app import EXIT_INPUTS_FAILED, app, fail
from ptxseg.cli.guarded import READ, TABLES, WALKED, Out, guarded
from ptxseg.util.progress import progress_bar
from ptxseg.util.run_folders import PREPARE_WRITES

console = Console()


def _decode_choice(decode: str, device: str | None) -> tuple[str, str]:
    """(--decode, its torch device), from `--device`, the deprecated alias, when it is given."""
    if device is None:
        return decode, "cuda"
    typer.echo(
        "DeprecationWarning: --device is deprecated for prepare and will be removed in 0.3: "
        f"use --decode ({_DEVICE_TO_DECODE.get(device, 'device')})",
        err=True,
    )
    if decode != "cpu":
        fail(f"--device {device} and --decode {decode}: give --decode only")
    if device in _DEVICE_TO_DECODE:
        return _DEVICE_TO_DECODE[device], "cuda"
    if not device.startswith("cuda"):
        fail(f"--device {device!r}: expected cpu, cuda, cuda:N or auto (better: --decode)")
    return "device", device


_DEVICE_TO_DECODE = {"cpu": "cpu", "auto": "auto", "cuda": "device"}
"""The deprecated `prepare --device` values and the `--decode` each one means."""


@app.command(rich_help_panel="Data")
@guarded(inputs={"images": WALKED, "annotations": READ}, outputs={"out": Out(owns=PREPARE_WRITES)})
def prepare(
    images: Path = typer.Option(..., help="Folder of DICOMs, searched recursively."),
    annotations: Path = typer.Option(..., help="SIIM annotation CSV (train-rle.csv)."),
    out: Path = typer.Option(..., help="Work folder for manifest, split and cache."),
    size: int = typer.Option(256, help="Cache resolution: 256, 512, 1024 or any multiple of 32."),
    seed: int = typer.Option(0, help="Seed of the train/val/test split."),
    val: float = typer.Option(0.1, help="Share of images for validation."),
    test: float = typer.Option(0.1, help="Share of images for the test split."),
    workers: int = typer.Option(
        None, help="Processes that read (and on the CPU decode) DICOMs; default: one per core."
    ),
    decode: str = typer.Option(
        "cpu",
        help="Where JPEG Baseline frames are decoded and resized: cpu (a process per core; "
        "on a 16-core H200 machine twice as fast as nvJPEG), device (nvJPEG on the GPU; "
        "without one, the same batched path on the CPU), or auto (the GPU when there is one).",
    ),
    device: str | None = typer.Option(
        None, hidden=True, help="Deprecated alias of --decode (cuda: --decode device)."
    ),
    rle_encoding: str = typer.Option(
        "auto", help="auto (detect from the CSV), relative (SIIM) or absolute."
    ),
    max_megapixels: float = typer.Option(
        60.0,
        help="Skip images whose header claims more pixels (decompression bombs).",
        callback=options.positive_number,
    ),
    folds: int = typer.Option(
        0,
        help="Also split the train and val images into K cross-validation folds (grouped by "
        "patient, stratified, seeded; saved in splits.json and reused). 0: keep saved folds.",
    ),
) -> None:
    """Join DICOMs with annotations; write manifest, seeded split and resized array cache.

    Unreadable or inconsistent files are skipped and listed with their reason in
    OUT/unmatched.json; the exit code is then 1. --out may lie inside --images: the search for
    DICOMs skips it.

    Example: ptxseg prepare --images siim/dicom-images-train --annotations siim/train-rle.csv
    --out work --size 256 [--folds 5]
    """
    from ptxseg.data.work_folder import PrepareOptions, prepare_work_folder
    from ptxseg.reporting.terminal import print_prepared
    from ptxseg.util.system import usable_cores

    options = PrepareOptions(
        size=size,
        seed=seed,
        val=val,
        test=test,
        workers=usable_cores() if workers is None else workers,
        rle_encoding=rle_encoding,
        max_pixels=int(max_megapixels * 1e6),
        folds=folds,
    )
    options.decode, options.decode_device = _decode_choice(decode, device)
    try:
        with progress_bar(console=console) as progress:
            result = prepare_work_folder(images, annotations, out, options, progress)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        fail(str(err))
    print_prepared(result, out, size, console)
    skipped = [(item["file"], item["reason"]) for item in result.problems.get("skipped", [])]
    for line in errors.summarise_failures(skipped, where=f"{out}/unmatched.json"):
        console.print(Text("skipped ", style="yellow") + Text(line), soft_wrap=True)
    if not result.cache_written:
        console.print("cache already up to date; nothing rewritten")
    if result.problems.get("skipped"):
        raise typer.Exit(EXIT_INPUTS_FAILED)  # listed above and in unmatched.json


@app.command("benchmark-data", rich_help_panel="Benchmarks")
@guarded(inputs={"real_dicoms": READ}, outputs={"out": TABLES})
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
    from ptxseg.benchmarks.data_throughput import format_markdown, run_data_benchmark

    rows = run_data_benchmark(out, real_dicoms, synthetic, rle_rows)
    console.print(format_markdown(rows))
    console.print(f"written to {out}/data-benchmark.md and .csv")


@app.command(rich_help_panel="Demo and reports")
@guarded(outputs={"out": Out()})
def demo(
    out: Path = typer.Option(Path("demo-output"), help="Folder for every step's output."),
    n_images: int = typer.Option(400, help="Synthetic radiographs to generate."),
    size: int = typer.Option(128, help="Training resolution (multiple of 32)."),
    encoders: str = typer.Option(
        "efficientnet-b0,resnet50,xception", help="Comma-separated backbones to train."
    ),
    epochs: int = typer.Option(
        0,
        help="Epochs for every backbone (0: 25 for efficientnet-b0, 10 for the others, scaled "
        "down to fit --minutes on this machine).",
    ),
    minutes: float = typer.Option(
        15.0, help="Time budget: epochs (then images) shrink until the measured estimate fits."
    ),
    calibrate: bool = typer.Option(
        True, help="Time the backbones first and fit the budget (--no-calibrate: run as given)."
    ),
) -> None:
    """The whole pipeline on synthetic data: synth, prepare, train, evaluate, benchmark, report.

    First times each backbone on this machine and scales the epochs to about 15 minutes on 2
    CPU cores (saved in OUT/plan.json); rerunning skips the steps already done.
    Example: ptxseg demo --out demo-output
    """
    from ptxseg.demo import DemoSettings, run_demo

    settings = DemoSettings(
        n_images=n_images,
        size=size,
        encoders=[e for e in encoders.split(",") if e],
        budget_minutes=minutes,
        calibrate=calibrate,
    )
    if epochs:
        settings.epochs = {}
        settings.default_epochs = epochs
    run_demo(out, settings)
