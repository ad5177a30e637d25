"""Commands: train, benchmark-training."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ptxseg.cli.app import app

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
    "seed": "trainer.seed",
    "limit_batches": "trainer.limit_batches",
    "resume": "trainer.resume",
    "progress": "trainer.progress_bar",
}


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def parse_set(items: list[str]) -> dict[str, str]:
    """`--set section.key=value` items as config overrides."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(f"--set {item!r}: expected section.key=value, e.g. --set optim.lr_factor=0.3")
        values[key.strip()] = value.strip()
    return values


def config_overrides(options: dict, set_items: list[str]) -> dict:
    """The config keys that the given (not None) command-line options and `--set` items set."""
    given = {k: v for k, v in options.items() if k in OVERRIDES and v is not None}
    overrides = {OVERRIDES[k]: (str(v) if isinstance(v, Path) else v) for k, v in given.items()}
    overrides.update(parse_set(set_items))
    return overrides


@app.command()
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
    batch_size: int = typer.Option(None, help="Images per batch and per device."),
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
    precision: str = typer.Option(None, help="32, bf16-mixed or 16-mixed."),
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
        None, "--channels-last/--no-channels-last", help="channels_last memory format."
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
            _fail("no training data: pass --data WORK (a folder written by `ptxseg prepare`)")
        if out is None and base is None:
            _fail("no run folder: pass --out runs/NAME")
        run_dir = fit(resolved)
    except (ValueError, FileNotFoundError, FileExistsError, EncoderWeightsError) as error:
        _fail(str(error))
    import json

    summary_path = run_dir / "train_summary.json"
    if summary_path.is_file():
        s = json.loads(summary_path.read_text())
        console.print(
            f"[green]done[/green]: {run_dir} — best val Dice {s['best_val_dice']:.4f} at epoch "
            f"{s['best_epoch']}, competition Dice {s['best_val_competition_dice']:.4f} "
            f"(all-empty baseline {s['empty_baseline_val']['competition_dice']:.4f}), "
            f"{s['train_images_per_s']} images/s"
        )


@app.command("benchmark-training")
def benchmark_training(
    data: Path = typer.Option(..., help="Work folder written by `ptxseg prepare`."),
    encoders: str = typer.Option(
        "resnet50,efficientnet-b0,xception", help="Comma-separated encoder names."
    ),
    size: int = typer.Option(256, help="Cached resolution to train at."),
    batch_size: int = typer.Option(8, help="Images per batch."),
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
    from rich.table import Table

    from ptxseg.benchmarks.training import run_training_benchmark, write_training_benchmark

    names = [e.strip() for e in encoders.split(",") if e.strip()]
    if not names:
        _fail("--encoders is empty: give names such as resnet50,efficientnet-b0")

    def show(row: dict) -> None:
        text = row.get("error") or (
            f"{row['loader_images_per_s']} img/s with loader, {row['model_images_per_s']} alone"
        )
        console.print(f"{row['encoder']}: {text}")

    rows = run_training_benchmark(
        data, names, size, batch_size, steps, workers, aug, positive_fraction, device, show
    )
    paths = write_training_benchmark(rows, out)
    table = Table(title=f"Training throughput ({size}px, batch {batch_size}, {workers} workers)")
    short = {
        "encoder": "encoder",
        "device": "device",
        "loader_images_per_s": "loader img/s",
        "model_images_per_s": "alone img/s",
        "ratio": "ratio",
        "loader_overhead_pct": "overhead %",
        "error": "error",
    }
    keys = [k for k in short if any(str(r.get(k, "")) != "" for r in rows)]
    for key in keys:
        table.add_column(short[key])
    for row in rows:
        table.add_row(*(str(row.get(k, "")) for k in keys))
    console.print(table)
    console.print(f"written: {paths['md']} and {paths['csv']}")
