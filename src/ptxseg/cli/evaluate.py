"""Commands: evaluate."""

from __future__ import annotations

from pathlib import Path

import typer

from ptxseg.cli import options
from ptxseg.cli.app import app, fail
from ptxseg.cli.guarded import MODEL, READ, Out, guarded


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

    from ptxseg.evaluation.evaluate_split import EvalRequest, ScoringOptions, evaluate_predictor
    from ptxseg.evaluation.evidence import EvidenceSettings
    from ptxseg.evaluation.oof import evaluate_out_of_fold
    from ptxseg.reporting.terminal import print_folds, print_summary

    try:
        # the PredictorSpec of the options, as `predict` builds it
        settings = options.predictor_spec(checkpoint, runtime, precision, device, tta, batch_size)
        scoring = ScoringOptions(
            search=search,
            overrides=options.overrides(threshold, top, bottom, min_area),
            operating_points=operating_points,
            score=score,
            resolution=resolution,
            save_probs=save_probs,
        )
        request = EvalRequest(
            settings.model, data, out, split, settings, scoring,
            EvidenceSettings(bootstrap, bootstrap_seed, subgroups), model_card=model_card,
        )  # fmt: skip
        run = evaluate_out_of_fold if split == "oof" else evaluate_predictor
        summary = run(request)
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:  # EnsembleError too
        fail(str(err))
    (print_folds if split == "oof" else print_summary)(summary)
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

    from ptxseg.evaluation.compare import (
        CompareError,
        compare_evaluations,
        read_evaluation,
        write_comparison,
    )
    from ptxseg.reporting.terminal import print_comparison

    try:
        result = compare_evaluations(
            [read_evaluation(e) for e in evaluations], bootstrap, bootstrap_seed
        )
    except CompareError as err:
        fail(str(err))
    console = Console()
    print_comparison(result, console)
    if out is not None:
        written = write_comparison(out, result)
        console.print(f"wrote {', '.join(written)} to {out}")
