"""Commands: evaluate."""

from __future__ import annotations

from pathlib import Path

import typer

from ptxseg.cli import options
from ptxseg.cli.app import app, fail


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def print_summary(summary: dict) -> None:
    """A rich table of the metrics that says which are pooled and which per-image."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    counts = summary["counts"]
    table = Table(
        title=f"{summary['split']} split: {counts['n_images']} images, "
        f"{counts['n_positive']} with pneumothorax (tta: {summary['tta']})"
    )
    table.add_column("metric")
    table.add_column("kind")
    table.add_column("value", justify="right")
    table.add_column("meaning", style="dim")
    for name, entry in summary["metrics"].items():
        table.add_row(name, entry["kind"], _fmt(entry["value"]), entry["description"])
    console.print(table)
    console.print(
        f"operating point: {summary['operating_point_description']} "
        f"({summary['operating_point_source']})"
    )
    console.print(
        f"competition Dice {_fmt(summary['competition_dice'])} ({summary['scored_at']}) vs "
        f"{_fmt(summary['empty_baseline_competition_dice'])} for all-empty masks; at the model's "
        f"size {_fmt(summary['model_size']['competition_dice'])}"
    )


@app.command()
def evaluate(
    checkpoint: Path = typer.Option(..., help=options.CHECKPOINT_HELP),
    data: Path = typer.Option(..., help="Work folder written by `ptxseg prepare`."),
    out: Path = typer.Option(..., help="Folder for per_image.csv, summary.json, roc.csv, ..."),
    split: str = typer.Option("test", help="Split to evaluate: train, val or test."),
    tta: str | None = options.TTA,
    batch_size: int = typer.Option(8, help="Images per forward pass."),
    device: str = typer.Option("cpu", help="torch device: cpu, cuda, cuda:1, ..."),
    runtime: str = typer.Option("torch", help="torch, onnxruntime or openvino (as predict)."),
    precision: str = typer.Option("fp32", help="fp32, bf16 or int8 (as predict)."),
    threshold: float | None = options.THRESHOLD,
    top: float | None = options.TOP,
    bottom: float | None = options.BOTTOM,
    min_area: int | None = options.MIN_AREA,
    resolution: str = typer.Option(
        "full",
        help="Score masks at the original size against the original RLE (full, as the "
        "competition) or only at the model's input size (model).",
    ),
    search: bool | None = typer.Option(
        None,
        "--search/--no-search",
        help="Search the operating point on the val split and store it in the checkpoint "
        "(default: only when the checkpoint has none).",
    ),
    score: str = typer.Option(
        "max_prob", help="Per-image detection score for the ROC: max_prob or area."
    ),
    save_probs: bool = typer.Option(
        False, help="Also write every probability map (probs-<split>.npz, float16)."
    ),
) -> None:
    """Metrics of a model on a split: Dice, IoU, accuracy (pooled and per image), ROC.

    The model runs through the same Predictor as `predict` and `serve`; masks are scored at the
    original resolution against the original RLE (a model-size table comes along). Writes
    per_image.csv, summary.json, roc.csv and panels.npz to --out. The operating point is the
    model's; without one it is searched on the val split (with this TTA) and stored there.

    Example: ptxseg evaluate --checkpoint runs/r1/best.ckpt --data work --split test
    --out runs/r1/eval-test --tta hflip
    """
    from rich.console import Console

    from ptxseg.evaluation.evaluate import evaluate_checkpoint

    try:
        summary = evaluate_checkpoint(
            checkpoint,
            data,
            out,
            split,
            device=device,
            runtime=runtime,
            precision=precision,
            tta=tta,
            batch_size=batch_size,
            overrides=options.overrides(threshold, top, bottom, min_area),
            resolution=resolution,
            search=search,
            save_probs=save_probs,
            score=score,
        )
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        fail(str(err))
    print_summary(summary)
    Console().print(f"wrote {', '.join(summary['files'])} to {out}")
