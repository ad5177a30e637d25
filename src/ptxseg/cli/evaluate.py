"""Commands: evaluate."""

from __future__ import annotations

from pathlib import Path

import typer

from ptxseg.cli import options
from ptxseg.cli.app import app, fail
from ptxseg.cli.guarded import MODEL, READ, Out, guarded


def format_interval(entry, digits: int = 3) -> str:
    from ptxseg.evaluation.uncertainty import format_interval as fmt

    return fmt(entry, digits)


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
    table.add_column("value [95% interval]", justify="right")
    table.add_column("n", justify="right")
    table.add_column("meaning", style="dim")
    for name, entry in summary["metrics"].items():
        table.add_row(
            name,
            entry["kind"],
            format_interval(entry, 4),
            str(entry.get("n", "")),
            entry["description"],
        )
    console.print(table)
    intervals = summary.get("intervals") or {}
    if intervals:
        console.print(f"intervals: {intervals['method']}; {intervals['note']}", style="dim")
    path = summary.get("inference_path") or {}
    console.print(
        f"scored path: {summary.get('runtime')} {summary.get('precision')}"
        + (f" ({path['line']})" if path.get("line") else ""),
        soft_wrap=True,
    )
    console.print(
        f"operating point: {summary['operating_point_description']} "
        f"({summary['operating_point_source']})"
    )
    console.print(
        f"competition Dice {_fmt(summary['competition_dice'])} ({summary['scored_at']}) vs "
        f"{_fmt(summary['empty_baseline_competition_dice'])} for all-empty masks; at the model's "
        f"size {_fmt(summary['model_size']['competition_dice'])}"
    )
    print_evidence(summary, console)


def print_evidence(summary: dict, console) -> None:
    """The stored operating points on these images, calibration, and the subgroup tests."""
    from rich.table import Table

    points = summary.get("operating_points") or {}
    if points:
        table = Table(title="operating points on these images")
        for column in (
            "name",
            "chosen for",
            "top / bottom / min area",
            "sensitivity",
            "specificity",
        ):
            table.add_column(
                column, justify="left" if column in ("name", "chosen for") else "right"
            )
        for name, entry in points.items():
            op, test = entry["operating_point"], entry.get("test") or {}
            table.add_row(
                name,
                entry.get("description", ""),
                f"{op['top']:g} / {op['bottom']:g} / {op['min_area']}",
                format_interval(test.get("sensitivity")),
                format_interval(test.get("specificity")),
            )
        console.print(table)
    calibration = summary.get("calibration") or {}
    for kind in ("raw", "calibrated"):
        if calibration.get(kind):
            numbers = calibration[kind]
            console.print(
                f"{kind} probability: Brier {format_interval(numbers['brier'])}, ECE "
                f"{_fmt(numbers['ece'])} ({calibration.get('bins')})"
            )
    if calibration:
        console.print(f"calibrator: {calibration.get('calibrator_description')}")
    subgroups = summary.get("subgroups") or {}
    if subgroups:
        called = subgroups.get("called_out") or []
        console.print(
            f"subgroups: {subgroups.get('n_tests', 0)} differences tested (Holm); "
            + ("; ".join(called) if called else "none called out")
            + " (subgroups.csv)"
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
        cells = [format_interval(metrics[n], 4) if n in metrics else "-" for n in names]
        counts = entry["counts"]
        table.add_row(name, str(counts["n_images"]), str(counts["n_positive"]), *cells)

    for fold in summary["folds"]:
        add(str(fold["fold"]), fold)
    add("pooled", summary)
    Console().print(table)
    print_summary(summary)


@app.command(rich_help_panel="Evaluation")
@guarded(
    inputs={"checkpoint": MODEL, "data": READ, "subgroups": READ},
    outputs={"out": Out(owns=("*.csv", "*.json", "*.npz", "*.png", "*.md", ".ptxseg*"))},
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
    runtime: str = options.RUNTIME,
    precision: str = options.PRECISION,
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
    bootstrap: int = typer.Option(
        2000,
        help="Patient-level bootstrap resamples for the 95% intervals (0: off; shares of one "
        "image per patient keep their Wilson interval).",
    ),
    bootstrap_seed: int = typer.Option(0, help="Seed of the bootstrap resamples."),
    operating_points: str | None = typer.Option(
        None,
        help="With --search: also search named operating points that move only the image-level "
        "`top` threshold, e.g. triage:sensitivity=0.95,rule-in:specificity=0.95; stored with "
        "the model for --operating-point NAME.",
    ),
    subgroups: Path | None = typer.Option(
        None,
        help="A CSV of ImageId plus columns (e.g. chest_drain, from `ptxseg synth --drains`): "
        "each column becomes a subgroup in subgroups.csv.",
    ),
    model_card: bool = typer.Option(
        False,
        "--model-card",
        help="Write the model card README.md (hub layout: model-index, metrics with intervals, "
        "subgroups, calibration, operating points) into the model folder and store its facts "
        "in the model for serve's /v1/model.",
    ),
) -> None:
    """Metrics of a model on a split: Dice, IoU, accuracy (pooled and per image), ROC.

    The model runs through the same Predictor as `predict` and `serve`; masks are scored at the
    original resolution against the original RLE (a model-size table comes along). Writes
    per_image.csv, summary.json, roc.csv and panels.npz to --out, with 95% intervals (patient-level
    bootstrap; Wilson for shares of one image per patient), subgroups.csv and its forest plot,
    calibration.csv and reliability.png. The operating point is the model's; without one it is
    searched on the val split (with this TTA) and stored there with a calibrator (and with
    --operating-points, named points).

    Several --checkpoint options (or an ensemble file) evaluate their ensemble.
    `--split oof` takes a cv folder or its ensemble.json.

    Example: ptxseg evaluate --checkpoint runs/r1/best.ckpt --data work --split test
    --out runs/r1/eval-test --tta hflip
    """
    from rich.console import Console

    from ptxseg.evaluation.evaluate_split import evaluate_checkpoint
    from ptxseg.evaluation.evidence import EvidenceSettings

    try:
        evidence = EvidenceSettings(bootstrap, bootstrap_seed, subgroups)
        if subgroups is not None and not subgroups.is_file():
            raise FileNotFoundError(
                f"--subgroups {subgroups} not found: expected a CSV of ImageId plus columns"
            )
        if split == "oof":
            if model_card:
                raise ValueError("--model-card describes a model on a test split, not --split oof")
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
                evidence=evidence,
                operating_points=operating_points,
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
            evidence=evidence,
            operating_points=operating_points,
            model_card=model_card,
        )
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:  # EnsembleError too
        fail(str(err))
    print_summary(summary)
    Console().print(f"wrote {', '.join(summary['files'])} to {out}")
    if summary.get("model_card"):
        Console().print(f"model card: {summary['model_card']}")


@app.command(rich_help_panel="Evaluation")
@guarded(
    inputs={"evaluations": READ},
    outputs={"out": Out(owns=("comparison.csv", "comparison.md", "comparison.json"), lock=False)},
)
def compare(
    evaluations: list[Path] = typer.Argument(
        ..., help="Two or more `ptxseg evaluate` --out folders of the same images."
    ),
    out: Path | None = typer.Option(
        None, help="Also write comparison.csv, comparison.md and comparison.json here."
    ),
    bootstrap: int = typer.Option(2000, help="Paired bootstrap resamples (at least 100)."),
    bootstrap_seed: int = typer.Option(0, help="Seed of the resamples."),
) -> None:
    """Paired comparison of models on the same images: the difference in competition Dice,
    Dice on positives and ROC AUC for each pair, with a 95% paired-bootstrap interval over
    patients and a p-value (DeLong beside it for the AUC); Holm-adjusted for more than two.

    Example: ptxseg compare runs/b0/eval/test runs/r50/eval/test --out comparison
    """
    from rich.console import Console
    from rich.table import Table

    from ptxseg.evaluation.compare import (
        METRICS,
        CompareError,
        compare_evaluations,
        comparison_markdown,
        comparison_rows,
        read_evaluation,
    )
    from ptxseg.evaluation.evaluate_split import write_outputs
    from ptxseg.util.jsonio import jsonable

    try:
        result = compare_evaluations(
            [read_evaluation(e) for e in evaluations], bootstrap, bootstrap_seed
        )
    except CompareError as err:
        fail(str(err))
    table = Table(
        title=f"paired comparison: {result['n_images']} images, {result['n_positive']} positive, "
        f"{result['n_patients']} {result['resampled'].split(' ')[0]}"
    )
    for column in ("pair", "metric", "first", "second", "difference [95% CI], p"):
        table.add_column(column, justify="left" if column in ("pair", "metric") else "right")
    for pair in result["pairs"]:
        for metric, entry in pair["metrics"].items():
            table.add_row(
                f"{pair['a']} − {pair['b']}",
                METRICS[metric],
                _fmt(entry["a"]),
                _fmt(entry["b"]),
                entry["sentence"].split(": ", 1)[-1],
            )
    console = Console()
    console.print(table)
    console.print(result["method"], style="dim")
    if out is not None:
        write_outputs(
            out,
            {
                "comparison.csv": comparison_rows(result),
                "comparison.json": jsonable(result, finite=True),
            },
        )
        from ptxseg.util import atomic

        atomic.write_text(out / "comparison.md", comparison_markdown(result))
        console.print(f"wrote comparison.csv, comparison.md, comparison.json to {out}")
