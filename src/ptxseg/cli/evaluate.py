"""Commands: evaluate."""

from __future__ import annotations

from pathlib import Path

import typer

from ptxseg.cli import options
from ptxseg.cli.app import app, fail
from ptxseg.cli.guarded import MODEL, READ, Out, guarded


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


def _evaluate_oof(checkpoints: list[Path], data: Path, out: Path, **kwargs) -> dict:
    from ptxseg.evaluation.oof import evaluate_oof

    if len(checkpoints) != 1:
        raise ValueError(
            "--split oof evaluates one cross-validated ensemble: give its cv folder or "
            "ensemble.json as the only --checkpoint"
        )
    return evaluate_oof(checkpoints[0], data, out, **kwargs)


def print_folds(summary: dict) -> None:
    """The out-of-fold metrics of every fold side by side, then the pooled ones."""
    from rich.console import Console
    from rich.table import Table

    names = ("dice_per_image", "dice_pooled", "dice_positive_per_image", "roc_auc")
    table = Table(title=f"out of fold: {len(summary['folds'])} folds (tta: {summary['tta']})")
    for column in ("fold", "images", "positive", *names):
        table.add_column(column, justify="right")

    def add(name: str, entry: dict) -> None:
        metrics = entry["metrics"]
        cells = [_fmt(metrics[n]["value"]) if n in metrics else "-" for n in names]
        counts = entry["counts"]
        table.add_row(name, str(counts["n_images"]), str(counts["n_positive"]), *cells)

    for fold in summary["folds"]:
        add(str(fold["fold"]), fold)
    add("pooled", summary)
    Console().print(table)
    print_summary(summary)


@app.command()
@guarded(
    inputs={"checkpoint": MODEL, "data": READ},
    outputs={"out": Out(owns=("*.csv", "*.json", "*.npz", ".ptxseg*"))},
)
def evaluate(
    checkpoint: list[Path] = typer.Option(..., help=options.CHECKPOINTS_HELP),
    data: Path = typer.Option(..., help="Work folder written by `ptxseg prepare`."),
    out: Path = typer.Option(..., help="Folder for per_image.csv, summary.json, roc.csv, ..."),
    split: str = typer.Option(
        "test",
        help="Split to evaluate: train, val, test, fold<k> (one fold), or oof: the out-of-fold "
        "predictions of a cv ensemble, fold by fold and pooled (searches and stores its "
        "operating point).",
    ),
    tta: str | None = options.TTA,
    batch_size: int = typer.Option(8, min=1, help="Images per forward pass."),
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

    Several --checkpoint options (or an ensemble file) evaluate their ensemble.
    `--split oof` takes a cv folder or its ensemble.json.

    Example: ptxseg evaluate --checkpoint runs/r1/best.ckpt --data work --split test
    --out runs/r1/eval-test --tta hflip
    """
    from rich.console import Console

    from ptxseg.evaluation.evaluate import evaluate_checkpoint

    try:
        if split == "oof":
            summary = _evaluate_oof(
                checkpoint,
                data,
                out,
                tta=tta,
                batch_size=batch_size,
                device=device,
                search=search,
                overrides=options.overrides(threshold, top, bottom, min_area),
                resolution=resolution,
                save_probs=save_probs,
                score=score,
            )
            print_folds(summary)
            Console().print(f"wrote {', '.join(summary['files'])} to {out}")
            return
        summary = evaluate_checkpoint(
            checkpoint if len(checkpoint) > 1 else checkpoint[0],
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
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:  # EnsembleError too
        fail(str(err))
    print_summary(summary)
    Console().print(f"wrote {', '.join(summary['files'])} to {out}")
