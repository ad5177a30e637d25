"""Commands: cv, ablate, average-checkpoints, ensemble: folds, the ablation grid, checkpoint
averaging, ensembles."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer
from rich.console import Console

from ptxseg.cli import options
from ptxseg.cli.app import app, fail
from ptxseg.cli.config_options import (
    config_overrides,
    config_parameters,
    parse_set,
    set_parameter,
    with_parameters,
)
from ptxseg.cli.guarded import MODEL, READ, Out, guarded, shard_lock
from ptxseg.cli.options import split_list
from ptxseg.cli.train import CONFIG_OPTION, TRAIN_READS
from ptxseg.util import path_guard

console = Console()


def _cv_options(
    data: Path = typer.Option(..., help="Work folder prepared with `ptxseg prepare --folds K`."),
    folds: int = typer.Option(..., help="Number of folds (must match the work folder's)."),
    out: Path = typer.Option(..., help="Cross-validation folder (fold<k>/, ensemble.json)."),
    folds_to_run: str = typer.Option(
        None,
        help="Train only shard i/n of the folds (0-based, e.g. 1/5; or auto), to spread them "
        "over GPUs or machines sharing --out.",
    ),
    tta: str = typer.Option(
        None, help="TTA of the ensemble's operating point search: none or hflip (default none)."
    ),
    device: str = typer.Option("cpu", help="torch device of the out-of-fold evaluation."),
    eval_batch_size: int = typer.Option(8, min=1, help="Images per forward pass when evaluating."),
) -> None:
    """The options of `cv` besides those it shares with `train`."""


# cv takes every option of train except the ones it sets itself for each fold.
_OWN = list(inspect.signature(_cv_options, eval_str=True).parameters.values())
_SHARED = config_parameters(leave_out=("data", "out", "fold", "resume"))


def cv(**params) -> None:
    """Cross-validation: train every fold (resumably), then ensemble the folds and search the
    ensemble's operating point on the pooled out-of-fold predictions.

    Writes OUT/fold<k>/ (a run folder each), OUT/ensemble.json and OUT/eval/oof/. Any `train`
    option applies to every fold. Example: ptxseg cv --data work --folds 5 --config study
    --encoder resnet50 --average-top 3 --positive-fraction 0.8:0.4 --out cv/r50
    """
    from ptxseg.experiments.cross_validation import CvOptions, run_cv
    from ptxseg.model.unet import EncoderWeightsError
    from ptxseg.reporting.terminal import fold_event_printer, print_cv_outcome

    shared = {k: v for k, v in params.items() if k not in {p.name for p in _OWN}}
    own = {k: v for k, v in params.items() if k in {p.name for p in _OWN}}
    options = CvOptions(
        **own, config=params["config"], overrides=config_overrides(shared, params["set_"])
    )
    try:
        outcome = run_cv(options, fold_event_printer(console, options.folds))
    except (ValueError, FileNotFoundError, FileExistsError, EncoderWeightsError) as error:
        fail(str(error))
    print_cv_outcome(outcome, options.out, options.data, console)


with_parameters(cv, [*_OWN, CONFIG_OPTION, *_SHARED, set_parameter()])
app.command("cv", rich_help_panel="Training")(
    guarded(TRAIN_READS, {"out": Out(lock=shard_lock("folds_to_run"))})(cv)
)


def _averaged(params) -> list:
    out = params["out"]
    return [(out, path_guard.FILE if out.suffix.lower() == ".ckpt" else path_guard.REPLACE)]


def _ensemble_file(params) -> list:
    out = params["out"]
    return [(out / "ensemble.json" if out.is_dir() else out, path_guard.FILE)]


@app.command("average-checkpoints", rich_help_panel="Training")
@guarded(inputs={"checkpoints": MODEL, "data": READ}, outputs={"out": Out(paths=_averaged)})
def average_checkpoints(
    checkpoints: list[Path] = typer.Argument(..., help=".ckpt files or model folders."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="A .ckpt file, or a folder for an inference model."
    ),
    data: Path | None = typer.Option(
        None, help="Work folder for the BatchNorm batches (default: the checkpoint's own)."
    ),
    bn_batches: int = typer.Option(
        100, help="Training batches that recompute BatchNorm statistics (0: keep the mean)."
    ),
    device: str = typer.Option("cpu", help="torch device for the BatchNorm pass."),
) -> None:
    """Average the weights of checkpoints of one architecture; recompute BatchNorm statistics
    on training batches of the first checkpoint's config (its fold, augmentation, sampler).

    Example: ptxseg average-checkpoints runs/a/checkpoints/top/*.ckpt --out runs/a/averaged.ckpt
    """
    from ptxseg.model.checkpoint import CheckpointError
    from ptxseg.training.averaging import average_and_refresh, batch_norm_images, write_model

    try:
        images = batch_norm_images(checkpoints[0], data, bn_batches)
        model, source = average_and_refresh(checkpoints, images, device)
        path = write_model(model.cpu(), out, {**source, "checkpoints": list(map(str, checkpoints))})
    except (ValueError, FileNotFoundError, CheckpointError) as error:
        fail(str(error))
    console.print(
        f"wrote {path}: the mean of {len(checkpoints)} models, BatchNorm recomputed on "
        f"{source['bn_batches']} training batches"
    )


@app.command(rich_help_panel="Training")
@guarded(inputs={"models": MODEL}, outputs={"out": Out(paths=_ensemble_file)})
def ensemble(
    models: list[Path] = typer.Argument(..., help=".ckpt files or model folders (same size)."),
    out: Path = typer.Option(..., "--out", "-o", help="The ensemble file to write (.json)."),
    threshold: float | None = options.THRESHOLD,
) -> None:
    """Write an ensemble file over several models (their probabilities are averaged), so that
    predict, serve, evaluate and export load them as one path. `ptxseg cv` writes one too.

    Example: ptxseg ensemble runs/a/model runs/b/model --out ensemble.json
    """
    from ptxseg.inference.ensemble import EnsembleError, write_ensemble
    from ptxseg.model.operating_point import OperatingPoint

    op = None if threshold is None else OperatingPoint.plain(threshold)
    try:
        path = write_ensemble(out, models, operating_point=op)
    except (EnsembleError, FileNotFoundError, ValueError) as error:
        fail(str(error))
    console.print(
        f"wrote {path} ({len(models)} members). Choose its operating point with `ptxseg "
        f"evaluate --checkpoint {path} --data WORK --split val --out DIR --search` (members "
        "trained on the train split) or --split oof (members of a cv run)."
    )


@app.command(rich_help_panel="Evaluation")
@guarded(
    inputs={"data": READ, "config": READ, "encoder_weights": READ},
    outputs={"out": Out(lock=shard_lock("cells"))},
)
def ablate(
    data: Path = typer.Option(..., help="Work folder written by `ptxseg prepare`."),
    out: Path = typer.Option(Path("ablation"), help="Grid folder (cells/, ablation.md/.csv/.png)."),
    encoders: str = typer.Option("resnet50,efficientnet-b0,xception", help="Comma-separated."),
    augs: str = typer.Option(
        "none,geometric,photometric,noise,elastic,full", help="Augmentation strategies."
    ),
    epochs: int = typer.Option(10, help="Maximum epochs per cell."),
    seeds: int = typer.Option(3, help="Seeds per (encoder, augmentation): 0..seeds-1."),
    size: int = typer.Option(None, help="Training resolution (a cached size; default: config)."),
    config: str = typer.Option(None, help="Base config: a preset name (study, demo) or a YAML."),
    encoder_weights: str = typer.Option(
        None, help="imagenet, none or a local weights file (default: from the config)."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Extra config override KEY=VALUE (e.g. data.batch_size=4); repeatable."
    ),
    cells: str = typer.Option(
        None,
        help="Run only shard i/n of the cells (0-based, e.g. 1/4; or auto), for several GPUs "
        "or machines.",
    ),
    device: str = typer.Option("cpu", help="Device for evaluation and the inference timing."),
) -> None:
    """Train and evaluate every encoder x augmentation x seed cell, resumably; aggregate."""
    from ptxseg.experiments.ablation_grid import AblationOptions, run_ablation
    from ptxseg.reporting.terminal import cell_event_printer, print_ablation_outcome

    overrides = parse_set(set_)
    if encoder_weights is not None:
        overrides["model.encoder_weights"] = encoder_weights
    options = AblationOptions(
        data, out, split_list(encoders), split_list(augs), epochs, seeds, size, config,
        overrides, cells, device,
    )  # fmt: skip
    try:
        outcome = run_ablation(options, cell_event_printer(console))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    print_ablation_outcome(outcome, console)
    if len(outcome.finished) < len(outcome.todo):
        raise typer.Exit(1)
