"""`ptxseg demo` (and `make demo`): the whole pipeline on synthetic data, on a laptop CPU.

synth -> prepare -> train each backbone briefly -> evaluate on the test split -> benchmark ->
one HTML report. Every step writes into one folder and is skipped when its output is already
there, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

ENCODERS = ("efficientnet-b0", "resnet50", "xception")


@dataclass
class DemoSettings:
    """The demo's scale: small enough for about 15 minutes on 2 CPU cores."""

    n_images: int = 400
    image_size: int = 256  # the synthetic DICOMs
    size: int = 128  # the training resolution
    conspicuity: float = 3.0  # a pneumothorax a small model learns in minutes (synth.render_case)
    positive_fraction: float = 0.4
    encoders: Sequence[str] = field(default_factory=lambda: ENCODERS)
    epochs: dict[str, int] = field(
        default_factory=lambda: {"efficientnet-b0": 25, "resnet50": 10, "xception": 10}
    )
    default_epochs: int = 10
    batch_size: int = 16
    workers: int = 2
    seed: int = 0


def _synthesise(out: Path, s: DemoSettings, console: Console) -> Path:
    from ptxseg.data.synth import generate_dataset

    siim = out / "siim"
    if (siim / "train-rle.csv").is_file():
        console.print(f"[dim]synthetic data already in {siim}[/dim]")
        return siim
    console.rule("1. synthetic chest X-rays")
    generate_dataset(
        siim,
        s.n_images,
        size=s.image_size,
        seed=s.seed,
        positive_fraction=s.positive_fraction,
        conspicuity=s.conspicuity,
        progress=True,
    )
    return siim


def _prepare(siim: Path, work: Path, s: DemoSettings, console: Console) -> None:
    from ptxseg.data.prepare import prepare
    from ptxseg.progress import progress_bar

    console.rule("2. prepare: manifest, split, cache")
    with progress_bar() as progress:
        result = prepare(
            siim / "dicom-images-train",
            siim / "train-rle.csv",
            work,
            size=s.size,
            seed=s.seed,
            val=0.15,
            test=0.15,
            workers=s.workers,
            progress=progress,
        )
    for split, counts in result.counts.items():
        console.print(f"  {split:5s} {counts['images']:4d} images, {counts['positive']} positive")


def _train_and_evaluate(encoder: str, work: Path, runs: Path, s: DemoSettings, console) -> Path:
    from ptxseg.config import load_config
    from ptxseg.evaluation.evaluate import evaluate_checkpoint
    from ptxseg.training.fit import fit

    run = runs / encoder
    best = run / "checkpoints" / "best.ckpt"
    if not (run / "train_summary.json").is_file():
        console.rule(f"3. train {encoder}")
        config = load_config(
            "demo",
            {
                "data.work": str(work),
                "data.size": s.size,
                "data.batch_size": s.batch_size,
                "data.positive_fraction": 0.6,
                "data.aug": "geometric",
                "optim.lr": 0.002,
                # validation Dice at 0.5 stays 0 for the first epochs while a model learns
                "optim.patience": 12,
                "model.encoder": encoder,
                "trainer.epochs": s.epochs.get(encoder, s.default_epochs),
                "trainer.out": str(run),
                "trainer.seed": s.seed,
                "trainer.resume": (run / "checkpoints" / "last.ckpt").is_file(),
            },
        )
        fit(config)
    if not (run / "eval" / "test" / "summary.json").is_file():
        console.rule(f"4. evaluate {encoder} on the test split")
        evaluate_checkpoint(best, work, run / "eval" / "test", split="test", tta="hflip")
    return run


def _benchmark(out: Path, s: DemoSettings, console: Console) -> None:
    from ptxseg.benchmarks.backbones import BenchConfig, run_benchmark, write_benchmark

    folder = out / "benchmark"
    if (folder / "benchmark.csv").is_file():
        return
    console.rule("5. benchmark the backbones")
    configs = [BenchConfig(encoder=e, size=s.size, batch_size=4, iters=5) for e in s.encoders]
    write_benchmark(run_benchmark(configs), folder)


def results_table(runs: Path, encoders: Sequence[str]) -> Table:
    """Best validation Dice and test metrics per backbone, next to the all-empty prediction."""
    table = Table(
        title="Demo results on synthetic data",
        caption="val Dice: best epoch, pooled; test: pooled Dice, competition Dice (per image, "
        "empty/empty = 1) next to an all-empty prediction's, and mean Dice on positive images",
    )
    for column in (
        "encoder",
        "val Dice",
        "test Dice",
        "test comp. Dice",
        "all-empty comp.",
        "Dice positives",
    ):
        table.add_column(
            column, justify="left" if column == "encoder" else "right", no_wrap=column == "encoder"
        )
    for encoder in encoders:
        train = json.loads((runs / encoder / "train_summary.json").read_text())
        test = json.loads((runs / encoder / "eval" / "test" / "summary.json").read_text())
        metric = {name: entry["value"] for name, entry in test["metrics"].items()}
        table.add_row(
            encoder,
            f"{train['best_val_dice']:.3f}",
            f"{metric['dice_pooled']:.3f}",
            f"{metric['dice_per_image']:.3f}",
            f"{metric['empty_baseline_dice_per_image']:.3f}",
            f"{metric['dice_positive_per_image']:.3f}",
        )
    return table


def run_demo(out: str | Path, settings: DemoSettings | None = None) -> Path:
    """Run every step into `out`; returns the path of the HTML report."""
    from ptxseg.reporting.html import write_report

    s = settings or DemoSettings()
    out = Path(out)
    console = Console()
    siim = _synthesise(out, s, console)
    work = out / "work"
    _prepare(siim, work, s, console)
    runs = out / "runs"
    for encoder in s.encoders:
        _train_and_evaluate(encoder, work, runs, s, console)
    _benchmark(out, s, console)
    console.rule("6. report")
    report = write_report(out)
    console.print(results_table(runs, s.encoders))
    console.print(f"report: [bold]{report}[/bold]")
    return report
