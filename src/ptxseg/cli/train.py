"""Commands: train, benchmark-training."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer
from rich.console import Console

from ptxseg.cli.app import app, fail
from ptxseg.cli.config_options import (
    config_overrides,
    config_parameters,
    set_parameter,
    with_parameters,
)
from ptxseg.cli.guarded import READ, TABLES, Out, guarded
from ptxseg.cli.options import split_list
from ptxseg.util.run_folders import RunFolder

console = Console()

TRAIN_WRITES = RunFolder.WRITES
TRAIN_READS = {"data": READ, "config": READ, "encoder_weights": READ}


CONFIG_OPTION = inspect.Parameter(
    "config",
    inspect.Parameter.KEYWORD_ONLY,
    default=typer.Option(
        None, "--config", help="YAML config file, or a shipped preset: study, demo."
    ),
    annotation=str,
)


def train(**params) -> None:
    """Train a U-Net; write config.yaml, checkpoints/best.ckpt + last.ckpt, metrics.csv.

    Example: ptxseg train --data work --config study --encoder resnet50 --aug full --out runs/r50
    """
    from ptxseg.config import load_config
    from ptxseg.model.unet import EncoderWeightsError
    from ptxseg.reporting.terminal import print_train_summary
    from ptxseg.training.fit import at_cached_size, fit

    overrides = config_overrides(params, params["set_"])
    out, resume, base = params["out"], params["resume"], params["config"]
    if base is None and resume and out is not None and RunFolder(out).config.is_file():
        base = str(RunFolder(out).config)  # resuming continues with the run's own config
    try:
        resolved = load_config(base, overrides)
        if not resolved.data.work:
            fail("no training data: pass --data WORK (a folder written by `ptxseg prepare`)")
        if out is None and base is None:
            fail("no run folder: pass --out runs/NAME")
        if "data.size" not in overrides and not resume:
            resolved = at_cached_size(resolved, console.print)
        run_dir = fit(resolved)
    except (ValueError, FileNotFoundError, FileExistsError, EncoderWeightsError) as error:
        fail(str(error))
    print_train_summary(run_dir, console)


with_parameters(train, [CONFIG_OPTION, *config_parameters(), set_parameter()])
app.command("train", rich_help_panel="Training")(
    guarded(inputs=TRAIN_READS, outputs={"out": Out(owns=TRAIN_WRITES)})(train)
)


@app.command("benchmark-training", rich_help_panel="Benchmarks")
@guarded(inputs={"data": READ}, outputs={"out": TABLES})
def benchmark_training(
    data: Path = typer.Option(..., help="Work folder written by `ptxseg prepare`."),
    encoders: str = typer.Option(
        "resnet50,efficientnet-b0,xception", help="Comma-separated encoder names."
    ),
    size: int = typer.Option(256, help="Cached resolution to train at."),
    batch_size: int = typer.Option(8, min=1, help="Images per batch."),
    steps: int = typer.Option(10, help="Timed training steps per encoder and feed."),
    workers: int = typer.Option(2, help="DataLoader worker processes."),
    aug: str = typer.Option("full", help="Augmentation strategy of the loader."),
    positive_fraction: float = typer.Option(0.5, help="Sampler's share of positive images."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    out: Path = typer.Option(Path("benchmarks/results"), help="Folder for the table (.md, .csv)."),
) -> None:
    """Training images/s with the real data loader vs the model alone, per encoder.

    Example: ptxseg benchmark-training --data work --encoders resnet50,xception --size 256
    """
    from ptxseg.benchmarks.training import (
        TrainingBenchSettings,
        run_training_benchmark,
        training_terminal_table,
        write_training_benchmark,
    )

    names = split_list(encoders)
    if not names:
        fail("--encoders is empty: give names such as resnet50,efficientnet-b0")

    def show(row: dict) -> None:
        text = row.get("error") or (
            f"{row['loader_images_per_s']} img/s with loader, {row['model_images_per_s']} alone"
        )
        console.print(f"{row['encoder']}: {text}")

    settings = TrainingBenchSettings(
        size, batch_size, steps, workers, aug, positive_fraction, device
    )
    rows = run_training_benchmark(data, names, settings, show)
    paths = write_training_benchmark(rows, out)
    title = f"Training throughput ({size}px, batch {batch_size}, {workers} workers)"
    console.print(training_terminal_table(rows, title))
    console.print(f"written: {paths['md']} and {paths['csv']}")
