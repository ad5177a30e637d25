"""`ptxseg demo` (and `make demo`): the whole pipeline on synthetic data, on a laptop CPU.

calibrate -> synth -> prepare -> train each backbone briefly -> evaluate on the test split (with
intervals, subgroups, calibration, named operating points and a model card) -> benchmark -> one
HTML report (with the paired comparison of the backbones). Every step writes into one folder
and is skipped when its output is already there, so an interrupted demo continues where it
stopped.

CPUs differ by more than three times in training speed (AVX2 against AVX-512 with AMX), so the
demo first times a few training steps of each backbone on this machine and scales its epochs
(and, on very slow machines, its number of images) to fit its time budget; it prints and saves
what it chose (`plan.json`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ptxseg.util.jsonio import read_json, write_json
from ptxseg.util.run_folders import RunFolder

ENCODERS = ("efficientnet-b0", "resnet50", "xception")
OPERATING_POINTS = "triage:sensitivity=0.95,rule-in:specificity=0.95"


@dataclass
class DemoSettings:
    """The demo's scale: small enough for about 15 minutes on 2 CPU cores (`budget_minutes`
    bounds the training; `calibrate=False` keeps the epochs as given)."""

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
    budget_minutes: float = 15.0
    calibrate: bool = True


FIXED_MINUTES = 2.0
"""Calibration, synthesis, prepare, evaluation, benchmark and report on 2 cores (1.5 minutes
measured on a 2-core Xeon): the part of the budget that does not scale with epochs."""
MIN_EPOCHS = 3
MIN_IMAGES = 200
SPLIT_SHARES = {"train": 0.7, "val": 0.15}


@dataclass
class DemoPlan:
    """What the demo will run on this machine, and why (measured training images/s)."""

    n_images: int
    epochs: dict[str, int]
    train_images_per_s: dict[str, float]
    estimated_minutes: float
    budget_minutes: float

    def to_dict(self) -> dict:
        return {
            "n_images": self.n_images,
            "epochs": self.epochs,
            "train_images_per_s": self.train_images_per_s,
            "estimated_minutes": round(self.estimated_minutes, 1),
            "budget_minutes": self.budget_minutes,
        }


def training_rate(encoder: str, size: int, batch_size: int, steps: int = 3) -> float:
    """Training images/s of `encoder` on this machine (forward, backward, Adam; random data)."""
    import torch

    from ptxseg.benchmarks.common import timed
    from ptxseg.model.random_weights import random_unet

    model = random_unet(encoder, size).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch_size, 1, size, size)
    target = (torch.rand_like(x) > 0.9).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), target).backward()
        optimizer.step()

    # two untimed steps: the first runs of a shape set up oneDNN's kernels and Adam's state
    return timed(step, items=batch_size, warmup=2, repeats=steps).rate


def estimate_minutes(n_images: int, epochs: dict[str, int], rates: dict[str, float]) -> float:
    """Training minutes: each epoch trains on the train share and validates on the val share
    (validation runs about three times faster than a training step), plus the fixed steps."""
    n_train, n_val = n_images * SPLIT_SHARES["train"], n_images * SPLIT_SHARES["val"]
    seconds = sum(e * (n_train + n_val / 3) / rates[enc] for enc, e in epochs.items())
    return FIXED_MINUTES + seconds / 60


def plan_demo(s: DemoSettings, rates: dict[str, float]) -> DemoPlan:
    """Epochs (then images) scaled down until the estimate fits the budget; never below
    MIN_EPOCHS and MIN_IMAGES, and never above what the settings ask for."""
    wanted = {e: s.epochs.get(e, s.default_epochs) for e in s.encoders}
    n_images, epochs = s.n_images, dict(wanted)
    estimate = estimate_minutes(n_images, epochs, rates)
    if estimate > s.budget_minutes:
        scale = (s.budget_minutes - FIXED_MINUTES) / (estimate - FIXED_MINUTES)
        epochs = {e: max(MIN_EPOCHS, int(n * scale)) for e, n in wanted.items()}
        estimate = estimate_minutes(n_images, epochs, rates)
    if estimate > s.budget_minutes:
        scale = (s.budget_minutes - FIXED_MINUTES) / (estimate - FIXED_MINUTES)
        n_images = max(MIN_IMAGES, int(n_images * scale))
        estimate = estimate_minutes(n_images, epochs, rates)
    return DemoPlan(n_images, epochs, rates, estimate, s.budget_minutes)


def _calibrate(out: Path, s: DemoSettings, console: Console) -> DemoSettings:
    """Time each backbone here, choose the plan, save and print it; reuse a saved plan."""
    path = out / "plan.json"
    if path.is_file():
        plan = json.loads(path.read_text())
    else:
        console.rule("0. calibrate: training speed of each backbone on this machine")
        rates = {e: round(training_rate(e, s.size, s.batch_size), 2) for e in s.encoders}
        plan = plan_demo(s, rates).to_dict()
        write_json(path, plan)
    table = Table(title=f"demo plan (budget {plan['budget_minutes']:g} min)")
    for column in ("encoder", "train img/s", "epochs"):
        table.add_column(column, justify="left" if column == "encoder" else "right")
    for encoder, epochs in plan["epochs"].items():
        table.add_row(encoder, f"{plan['train_images_per_s'][encoder]:g}", str(epochs))
    console.print(table)
    console.print(
        f"{plan['n_images']} images; estimated {plan['estimated_minutes']:g} min in all "
        f"(saved in {path})"
    )
    s.n_images, s.epochs = plan["n_images"], dict(plan["epochs"])
    return s


def _synthesise(out: Path, s: DemoSettings, console: Console) -> Path:
    from ptxseg.data.synthetic import Appearance, generate_dataset

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
        progress=True,
        appearance=Appearance(conspicuity=s.conspicuity),
    )
    return siim


def _prepare(siim: Path, work: Path, s: DemoSettings, console: Console) -> None:
    from ptxseg.data.work_folder import PrepareOptions, prepare_work_folder
    from ptxseg.util.progress import progress_bar

    console.rule("2. prepare: manifest, split, cache")
    with progress_bar() as progress:
        result = prepare_work_folder(
            siim / "dicom-images-train",
            siim / "train-rle.csv",
            work,
            PrepareOptions(size=s.size, seed=s.seed, val=0.15, test=0.15, workers=s.workers),
            progress=progress,
        )
    for split, counts in result.counts.items():
        console.print(f"  {split:5s} {counts['images']:4d} images, {counts['positive']} positive")


def _train_backbones(work: Path, runs: Path, s: DemoSettings, console: Console) -> None:
    """Train and evaluate each backbone as one job of a resumable list: a backbone whose
    `RUN/done.json` exists is skipped; an interrupted one continues (its training from
    `last.ckpt`, and a finished step is not run again)."""
    from ptxseg.experiments.jobs import Job, run_jobs

    jobs = [Job(e, runs / e, {"encoder": e}) for e in s.encoders]
    run_jobs(jobs, lambda job: _train_and_evaluate(job.key, work, runs, s, console))


def _train_and_evaluate(encoder: str, work: Path, runs: Path, s: DemoSettings, console) -> dict:
    from ptxseg.evaluation.evaluate_split import evaluate_checkpoint
    from ptxseg.training.fit import fit

    run = runs / encoder
    model = run / "model"  # the inference model: the operating point is stored with it
    if not RunFolder(run).train_summary.is_file():
        console.rule(f"3. train {encoder}")
        fit(_demo_config(encoder, work, run, s))
    if not RunFolder(run).eval("test").summary.is_file():
        console.rule(f"4. evaluate {encoder} on the test split")
        evaluate_checkpoint(
            model,
            work,
            RunFolder(run).eval("test").root,
            split="test",
            tta="hflip",
            search=True,  # the point, its calibrator and the named points, on val
            operating_points=OPERATING_POINTS,
            model_card=True,
        )
    return {"run_dir": str(run)}


def _demo_config(encoder: str, work: Path, run: Path, s: DemoSettings):
    """The demo preset at the demo's scale, for one backbone."""
    from ptxseg.config import load_config

    return load_config(
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
            "trainer.resume": RunFolder(run).last_checkpoint.is_file(),
        },
    )


def _benchmark(out: Path, s: DemoSettings, console: Console) -> None:
    from ptxseg.benchmarks.backbones import BenchConfig, run_benchmark, write_benchmark

    folder = out / "benchmark"
    if (folder / "benchmark.csv").is_file():
        return
    console.rule("5. benchmark the backbones")
    configs = [BenchConfig(encoder=e, size=s.size, batch_size=4, iters=5) for e in s.encoders]
    write_benchmark(run_benchmark(configs), folder)


def results_table(runs: Path, encoders: Sequence[str]) -> Table:
    """Best validation Dice and test metrics (with their 95% intervals) per backbone, next to
    the all-empty prediction."""
    from ptxseg.evaluation.uncertainty import format_interval

    table = Table(
        title="Demo results on synthetic data",
        caption="val Dice: best epoch, pooled; test: pooled Dice, competition Dice (per image, "
        "empty/empty = 1) next to an all-empty prediction's, and mean Dice on positive images; "
        "[95% intervals: bootstrap over patients]",
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
        train = read_json(RunFolder(runs / encoder).train_summary)
        test = read_json(RunFolder(runs / encoder).eval("test").summary)
        metric = test["metrics"]
        table.add_row(
            encoder,
            f"{train['best_val_dice']:.3f}",
            format_interval(metric["dice_pooled"]),
            format_interval(metric["dice_per_image"]),
            f"{metric['empty_baseline_dice_per_image']['value']:.3f}",
            format_interval(metric["dice_positive_per_image"]),
        )
    return table


def run_demo(out: str | Path, settings: DemoSettings | None = None) -> Path:
    """Run every step into `out`; returns the path of the HTML report."""
    from ptxseg.reporting.html_report import write_html_report

    s = settings or DemoSettings()
    out = Path(out)
    console = Console()
    if s.calibrate:
        s = _calibrate(out, s, console)
    siim = _synthesise(out, s, console)
    work = out / "work"
    _prepare(siim, work, s, console)
    runs = out / "runs"
    _train_backbones(work, runs, s, console)
    _benchmark(out, s, console)
    console.rule("6. report")
    report = write_html_report(out)
    console.print(results_table(runs, s.encoders))
    console.print(f"report: [bold]{report}[/bold]")
    return report
