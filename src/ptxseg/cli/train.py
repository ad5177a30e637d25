"""Commands: train, benchmark-training."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ptxseg.cli.app import app, fail
from ptxseg.cli.guarded import READ, TABLES, Out, guarded

console = Console()

# CLI option name -> config key. Options left out keep the preset's (or the default) value.
OVERRIDES = {
    "data": "data.work",
    "size": "data.size",
    "aug": "data.aug",
    "batch_size": "data.batch_size",
    "workers": "data.workers",
    "positive_fraction": "data.positive_fraction",
    "fold": "data.fold",
    "average_top": "trainer.average_top",
    "average_bn_batches": "trainer.average_bn_batches",
    "encoder": "model.encoder",
    "encoder_weights": "model.encoder_weights",
    "decoder_attention": "model.decoder_attention",
    "aux_head": "model.aux_head",
    "dice_weight": "loss.dice_weight",
    "bce_weight": "loss.bce_weight",
    "focal_weight": "loss.focal_weight",
    "aux_weight": "loss.aux_weight",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "scheduler": "optim.scheduler",
    "warmup_epochs": "optim.warmup_epochs",
    "patience": "optim.patience",
    "out": "trainer.out",
    "epochs": "trainer.epochs",
    "precision": "trainer.precision",
    "accelerator": "trainer.accelerator",
    "devices": "trainer.devices",
    "num_nodes": "trainer.num_nodes",
    "channels_last": "trainer.channels_last",
    "compile": "trainer.compile",
    "augment_on": "data.augment_on",
    "seed": "trainer.seed",
    "limit_batches": "trainer.limit_batches",
    "resume": "trainer.resume",
    "progress": "trainer.progress_bar",
}


def parse_set(items: list[str]) -> dict[str, str]:
    """`--set section.key=value` items as config overrides."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--set {item!r}: expected section.key=value, e.g. --set optim.lr_factor=0.3")
        values[key.strip()] = value.strip()
    return values


def config_overrides(options: dict, set_items: list[str]) -> dict:
    """The config keys that the given (not None) command-line options and `--set` items set."""
    given = {k: v for k, v in options.items() if k in OVERRIDES and v is not None}
    overrides = {OVERRIDES[k]: (str(v) if isinstance(v, Path) else v) for k, v in given.items()}
    overrides.update(parse_set(set_items))
    return overrides


TRAIN_WRITES = (
    "config.yaml",
    "checkpoints",
    "model",
    "metrics.csv",
    "logs",
    "train_summary.json",
    ".ptxseg*",
)
TRAIN_READS = {"data": READ, "config": READ, "encoder_weights": READ}


@app.command(rich_help_panel="Training")
@guarded(inputs=TRAIN_READS, outputs={"out": Out(owns=TRAIN_WRITES)})
def train(
    data: Path = typer.Option(None, help="Work folder written by `ptxseg prepare`."),
    out: Path = typer.Option(None, help="Run folder (config, checkpoints, metrics, logs)."),
    config: str = typer.Option(
        None, "--config", help="YAML config file, or a shipped preset: study, demo."
    ),
    encoder: str = typer.Option(
        None, help="resnet50, efficientnet-b0..b7, xception, or any smp encoder name."
    ),
    encoder_weights: str = typer.Option(
        None, help="imagenet (download), none (random) or PATH of a saved encoder state dict."
    ),
    aug: str = typer.Option(
        None, help="Augmentation: none, geometric, photometric, noise, elastic, full."
    ),
    size: int = typer.Option(None, help="Training resolution (a cached size, multiple of 32)."),
    epochs: int = typer.Option(None, help="Maximum number of epochs."),
    batch_size: int = typer.Option(None, min=1, help="Images per batch and per device."),
    lr: float = typer.Option(None, help="Adam learning rate."),
    weight_decay: float = typer.Option(None, help="Adam weight decay."),
    scheduler: str = typer.Option(
        None, help="plateau (halve on stalled val Dice) or cosine (with warm-up)."
    ),
    warmup_epochs: int = typer.Option(None, help="Linear warm-up epochs (cosine)."),
    patience: int = typer.Option(None, help="Early stopping: epochs without a better val Dice."),
    positive_fraction: str = typer.Option(
        None,
        help="Share of positive images drawn per epoch: 0.5; linear over the epochs 0.8:0.4; "
        "steps 0.8@0,0.6@10,0.4@20 (from epoch 10 on: 0.6). Default: the natural share.",
    ),
    fold: int = typer.Option(
        None,
        help="Cross-validation: train on every other fold and validate on fold K (a work "
        "folder prepared with --folds).",
    ),
    average_top: int = typer.Option(
        None,
        help="Keep the N checkpoints with the best val competition Dice and ship their weight "
        "average (BatchNorm recomputed on training batches) as RUN/model. 0: off.",
    ),
    average_bn_batches: int = typer.Option(
        None, help="Training batches that recompute BatchNorm after averaging (default 100)."
    ),
    precision: str = typer.Option(
        None, help="auto (bf16-mixed on a GPU, 32 on the CPU), 32, bf16-mixed or 16-mixed."
    ),
    accelerator: str = typer.Option(None, help="auto, cpu or gpu."),
    devices: int = typer.Option(None, help="Devices per node; >1 trains with DDP."),
    num_nodes: int = typer.Option(None, help="Nodes (with SLURM or torchrun)."),
    workers: int = typer.Option(None, help="DataLoader worker processes."),
    seed: int = typer.Option(None, help="Seed of weights, sampler and augmentation."),
    resume: bool = typer.Option(
        None, "--resume/--no-resume", help="Continue from OUT/checkpoints/last.ckpt."
    ),
    decoder_attention: str = typer.Option(None, help="Decoder attention: scse (or none)."),
    aux_head: bool = typer.Option(
        None, "--aux-head/--no-aux-head", help="Empty vs pneumothorax head on the encoder."
    ),
    aux_weight: float = typer.Option(None, help="Weight of the auxiliary head's BCE."),
    dice_weight: float = typer.Option(None, help="Weight of the Dice loss."),
    bce_weight: float = typer.Option(None, help="Weight of the BCE loss."),
    focal_weight: float = typer.Option(None, help="Weight of the focal loss (0: off)."),
    channels_last: bool = typer.Option(
        None,
        "--channels-last/--no-channels-last",
        help="channels_last memory format (default: on for a GPU, off for the CPU).",
    ),
    compile: bool = typer.Option(
        None,
        "--compile/--no-compile",
        help="torch.compile the training step (default: on for a GPU, off for the CPU).",
    ),
    augment_on: str = typer.Option(
        None,
        help="Where augmentation runs: loader (CPU worker processes) or device (the batch "
        "after its transfer); default: device on a GPU, loader on the CPU.",
    ),
    limit_batches: float = typer.Option(
        None, help="Batches per epoch: a fraction (<=1) or a count (quick checks)."
    ),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="Rich progress bar."),
    set_: list[str] = typer.Option(
        [], "--set", help="Any other config key: --set optim.lr_factor=0.3 (repeatable)."
    ),
) -> None:
    """Train a U-Net; write config.yaml, checkpoints/best.ckpt + last.ckpt, metrics.csv.

    Example: ptxseg train --data work --config study --encoder resnet50 --aug full --out runs/r50
    """
    from ptxseg.config import load_config
    from ptxseg.model.unet import EncoderWeightsError
    from ptxseg.training.fit import fit

    overrides = config_overrides(locals(), set_)
    base = config
    if base is None and resume and out is not None and (out / "config.yaml").is_file():
        base = str(out / "config.yaml")  # resuming continues with the run's own config
    try:
        resolved = load_config(base, overrides)
        if not resolved.data.work:
            fail("no training data: pass --data WORK (a folder written by `ptxseg prepare`)")
        if out is None and base is None:
            fail("no run folder: pass --out runs/NAME")
        if "data.size" not in overrides and not resume:
            resolved = _cached_size(resolved)
        run_dir = fit(resolved)
    except (ValueError, FileNotFoundError, FileExistsError, EncoderWeightsError) as error:
        fail(str(error))
    import json

    summary_path = run_dir / "train_summary.json"
    s = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if s.get("best_val_dice") is not None:
        console.print(
            f"[green]done[/green]: {run_dir} — best val Dice {s['best_val_dice']:.4f} at epoch "
            f"{s['best_epoch']}, competition Dice {s['best_val_competition_dice']:.4f} "
            f"(all-empty baseline {s['empty_baseline_val']['competition_dice']:.4f}), "
            f"{s['train_images_per_s']} images/s"
        )


def _cached_size(config):
    """The config with the one size cached in its work folder, when it asked for another.

    The size came from a preset or the default, not from --size: with one cached size that size
    is used (and said); with several the error lists them."""
    from ptxseg.config import apply_overrides
    from ptxseg.data.dataset import available_sizes

    sizes = available_sizes(config.data.work)
    if not sizes or config.data.size in sizes:
        return config
    if len(sizes) > 1:
        fail(
            f"{config.data.work} has caches at {', '.join(map(str, sizes))} px, not at the "
            f"configured {config.data.size}: choose one with --size"
        )
    console.print(
        f"training at {sizes[0]} px, the size cached in {config.data.work} "
        f"(the config says {config.data.size}; --size or `ptxseg prepare --size` for another)"
    )
    return apply_overrides(config, {"data.size": sizes[0]})


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

    names = [e.strip() for e in encoders.split(",") if e.strip()]
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
