"""Commands: cv, average-checkpoints, ensemble: folds, checkpoint averaging, ensembles."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ptxseg.cli import options
from ptxseg.cli.app import app, fail
from ptxseg.cli.guarded import MODEL, READ, Out, guarded, shard_lock
from ptxseg.cli.train import TRAIN_READS, config_overrides, train
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
_OWN = inspect.signature(_cv_options, eval_str=True).parameters
_SHARED = {
    name: p
    for name, p in inspect.signature(train, eval_str=True).parameters.items()
    if name not in ("data", "out", "fold", "resume")
}


def cv(**params) -> None:
    """Cross-validation: train every fold (resumably), then ensemble the folds and search the
    ensemble's operating point on the pooled out-of-fold predictions.

    Writes OUT/fold<k>/ (a run folder each), OUT/ensemble.json and OUT/eval/oof/. Any `train`
    option applies to every fold. Example: ptxseg cv --data work --folds 5 --config study
    --encoder resnet50 --average-top 3 --positive-fraction 0.8:0.4 --out cv/r50
    """
    from ptxseg.config import load_config
    from ptxseg.evaluation import cross_validation as runner
    from ptxseg.model.unet import EncoderWeightsError
    from ptxseg.training.fit import fit

    data, folds, out = params["data"], params["folds"], params["out"]
    shared = {k: v for k, v in params.items() if k in _SHARED and k != "set_"}
    overrides = config_overrides(shared, params["set_"] or [])
    config = params["config"]
    try:
        runner.check_folds(data, folds)
        todo = runner.select_folds(folds, params["folds_to_run"])
        load_config(config, overrides)  # bad options fail before anything is written
        runner.write_spec(
            out, {"data": str(data), "folds": folds, "config": config, "overrides": overrides}
        )
    except (ValueError, FileNotFoundError) as error:
        fail(str(error))

    def event(kind: str, fold: int, summary) -> None:
        if kind == "skipped":
            console.print(f"fold {fold}: finished before, skipped")
        elif kind in ("started", "resumed"):
            console.rule(f"fold {fold} of {folds} ({kind})")
        else:
            console.print(
                f"fold {fold}: best val competition Dice "
                f"{summary.get('best_val_competition_dice')} in {summary['cv_seconds']} s"
            )

    try:
        finished = runner.run_folds(
            out,
            todo,
            lambda k: runner.fold_config(out, k, data, config, overrides),
            fit,
            event,
        )
    except (ValueError, FileNotFoundError, FileExistsError, EncoderWeightsError) as error:
        fail(str(error))
    missing = [k for k in range(folds) if runner.read_done(out, k) is None]
    if missing:
        console.print(
            f"{len(finished)} of the {len(todo)} folds of this run are finished; folds "
            f"{missing} are not (other shards, or failed): rerun without --folds-to-run once "
            "they are, to write the ensemble"
        )
        return
    try:
        summary = runner.finish_cv(
            out, data, folds, params["tta"], params["device"], params["eval_batch_size"]
        )
    except (ValueError, FileNotFoundError) as error:
        fail(str(error))
    print_oof(summary)
    console.print(
        f"ensemble: {out / 'ensemble.json'}; test it with: ptxseg evaluate --checkpoint "
        f"{out / 'ensemble.json'} --data {data} --split test --out {out / 'eval' / 'test'}"
    )


cv.__signature__ = inspect.Signature([*_OWN.values(), *_SHARED.values()])
cv.__annotations__ = {name: p.annotation for name, p in {**_OWN, **_SHARED}.items()}
app.command("cv", rich_help_panel="Training")(
    guarded(TRAIN_READS, {"out": Out(lock=shard_lock("folds_to_run"))})(cv)
)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def print_oof(summary: dict) -> None:
    """Each fold's and the pooled out-of-fold competition Dice, side by side, with their 95%
    intervals."""
    from ptxseg.evaluation.uncertainty import format_interval

    table = Table(title=f"out of fold, {summary['operating_point_description']}")
    for column in ("fold", "images", "positive", "competition Dice [95%]", "Dice (pooled) [95%]"):
        table.add_column(column, justify="right")

    def row(name, entry) -> None:
        counts, metrics = entry["counts"], entry["metrics"]
        table.add_row(
            name,
            str(counts["n_images"]),
            str(counts["n_positive"]),
            format_interval(metrics["dice_per_image"], 4),
            format_interval(metrics["dice_pooled"], 4),
        )

    for fold in summary.get("folds", []):
        row(str(fold["fold"]), fold)
    row("pooled", summary)
    console.print(table)
    console.print(f"operating point: {summary['operating_point_source']}")


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
    from ptxseg.config import TrainConfig
    from ptxseg.model.checkpoint import CheckpointError
    from ptxseg.training.averaging import average_and_refresh, training_images, write_model

    try:
        images = None
        if bn_batches:
            from ptxseg.model.checkpoint import read_info

            config = TrainConfig.from_dict(read_info(checkpoints[0])["config"])
            if data is not None:
                config.data.work = str(data)
            if not config.data.work or not Path(config.data.work).is_dir():
                fail(
                    f"the BatchNorm pass needs the training data: {checkpoints[0]} was trained "
                    f"on {config.data.work or 'an unknown folder'}; give --data WORK, or "
                    "--bn-batches 0 to keep the averaged statistics"
                )
            images = training_images(config, bn_batches)
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
