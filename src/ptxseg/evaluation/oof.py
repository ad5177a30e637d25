"""Out-of-fold evaluation of a cross-validated ensemble: each fold, and all folds pooled.

Every image of the train and val splits belongs to one fold, and one member of the ensemble
(`fold<k>/model` of `ptxseg cv`) never trained on fold k. Its predictions on fold k, through the
Predictor with the ensemble's TTA, are the out-of-fold (OOF) predictions; pooled over the folds
they cover the whole pool with models that did not see the images. That is where the
ensemble's operating point is searched (at the model's size, as `evaluate` searches one on the
val split) and stored in the ensemble file; the OOF masks are then scored at full size against
the original RLE, fold by fold and pooled.

The ensemble itself is sharper than any one member, so a point chosen on single members' OOF
predictions is the honest choice, not a perfect one: no image is left that no member saw.

Written into the output folder (as `evaluate` writes, plus the folds): `summary.json` with
`folds` (one entry per fold: counts, competition Dice, metrics) and the pooled metrics,
`per_image.csv` with a `fold` column, `roc.csv` and `panels.npz` of the pooled predictions.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ptxseg.data.dataset import FullSizeTruth, read_manifest
from ptxseg.data.folds import fold_name, read_folds
from ptxseg.evaluation.evaluate_split import (
    EvalRequest,
    PointChoice,
    SplitPredictions,
    checked_overrides,
    checked_targets,
    collect_probabilities,
    concatenate_predictions,
    eval_request,
    evaluation_files,
    finish_evaluation,
    overridden,
    probability_arrays,
    score_predictions,
    score_summary,
    scored_truth,
    searched_point,
    split_evidence,
    unsearched_point,
    wants_search,
)
from ptxseg.evaluation.uncertainty import metric_intervals, patient_groups
from ptxseg.inference.ensemble import EnsembleError, read_ensemble, store_ensemble_operating_point
from ptxseg.inference.predictor import Predictor
from ptxseg.model.operating_point import OperatingPoint, OperatingPointWarning, check_tta
from ptxseg.stats.calibration import Calibrator
from ptxseg.util import schemas

OOF = "oof"


def fold_members(ensemble: str | os.PathLike, work: str | os.PathLike) -> list[Path]:
    """The member of each fold of `work`, in fold order; an error unless there is exactly one."""
    spec = read_ensemble(ensemble)
    folds = read_folds(work)
    by_fold: dict[int, Path] = {}
    for member, fold in zip(spec.members, spec.folds, strict=True):
        if fold is None:
            raise EnsembleError(
                f"member {member} of {spec.path} has no fold: out-of-fold evaluation needs the "
                "ensemble of a `ptxseg cv` run (one member per fold)"
            )
        if fold in by_fold:
            raise EnsembleError(f"{spec.path} has two members for fold {fold}")
        by_fold[int(fold)] = member
    if sorted(by_fold) != list(range(len(folds))):
        raise EnsembleError(
            f"{spec.path} has members for folds {sorted(by_fold)} but {work} has {len(folds)} "
            f"folds (0 to {len(folds) - 1}): evaluate the ensemble on the work folder its cv run "
            "used"
        )
    return [by_fold[k] for k in range(len(folds))]


def evaluate_oof(
    ensemble: str | os.PathLike,
    work: str | os.PathLike,
    out_dir: str | os.PathLike,
    **options: Any,
) -> dict[str, Any]:
    """`evaluate_out_of_fold` with the request given as keywords (`eval_request`: `tta`,
    `batch_size`, `device`, `search`, `overrides`, `operating_points`, `evidence`, ...)."""
    return evaluate_out_of_fold(eval_request(ensemble, work, out_dir, OOF, **options))


def evaluate_out_of_fold(request: EvalRequest) -> dict[str, Any]:
    """Evaluate the ensemble `request.model` out of fold on `request.work`; write the outputs
    and return the summary.

    The operating point is searched on the pooled OOF predictions when the ensemble has none
    (`search=None`) or always (`search=True`) and stored in the ensemble file; `tta=None` uses
    the stored point's TTA (none when there is none). Overrides apply last, as in `evaluate`.
    A search also fits the calibrator and the named `operating_points` on the pooled OOF
    predictions; the metrics get the intervals of `evaluate` (`evidence`), each fold its own.
    """
    ensemble = _one_ensemble(request)
    overrides = checked_overrides(request.scoring)
    targets = checked_targets(request.scoring)
    spec = read_ensemble(ensemble)
    members = fold_members(ensemble, request.work)
    truth = scored_truth(request)
    stored = spec.operating_point
    tta = request.predictor.tta
    tta = check_tta(tta) if tta is not None else ((stored.tta if stored else None) or "none")
    parts, predictor = _fold_predictions(members, request, tta)
    pooled = concatenate_predictions(parts, OOF)
    size = int(predictor.input_size)
    if wants_search(request.scoring, stored, overrides, targets):
        source = "searched on the pooled out-of-fold predictions and stored in the ensemble file"
        choice = searched_point(pooled, targets, tta, size, source)
    else:
        choice = unsearched_point(stored, "stored with the ensemble")
        choice.named = spec.extra.get("operating_points")
        choice.calibrator = Calibrator.coerce(spec.extra.get("calibrator"))
    choice = overridden(choice, overrides)
    choice.op.warn_if_other_path(tta, size)

    folds = _fold_summaries(parts, members, choice.op, truth, request)
    scored = score_predictions(pooled, choice.op, truth, request.scoring.score)
    found, evidence_files, columns = split_evidence(
        pooled, scored, choice.op, request.work, truth, choice.named, choice.calibrator,
        request.evidence,
    )  # fmt: skip
    if choice.note is not None:
        found["calibration"]["fitted"] = choice.note
    summary = {
        **_oof_head(spec.path, request, predictor, tta),
        **choice.point_fields(),
        **score_summary(scored, request.scoring.resolution, found),
        "folds": folds,
    }
    if choice.searched is not None:
        _store_in_ensemble(spec.path, choice, summary)
    fold_column = [k for k, part in enumerate(parts) for _ in part.image_ids]
    files = evaluation_files(
        pooled, scored, choice.op, request.scoring.n_panels, {"fold": fold_column, **columns}
    )
    files.update(evidence_files)
    if request.scoring.save_probs:
        files[f"probs-{OOF}.npz"] = dict(probability_arrays(pooled), folds=fold_column)
    return finish_evaluation(Path(request.out_dir), summary, files)


def _one_ensemble(request: EvalRequest) -> Any:
    """The one cross-validated ensemble of the request (a cv folder or its ensemble.json)."""
    if request.model_card:
        raise ValueError("--model-card describes a model on a test split, not --split oof")
    models = request.model if isinstance(request.model, (list, tuple)) else [request.model]
    if len(models) != 1:
        raise ValueError(
            "--split oof evaluates one cross-validated ensemble: give its cv folder or "
            "ensemble.json as the only --checkpoint"
        )
    return models[0]


def _oof_head(path: Path, request: EvalRequest, predictor: Predictor, tta: str) -> dict[str, Any]:
    """The first entries of the OOF `summary.json`: what was scored, and how."""
    return {
        "schema_version": schemas.EVALUATION_SUMMARY,
        "split": OOF,
        "checkpoint": str(path),
        "work": str(request.work),
        "encoder": predictor.encoder,
        "input_size": int(predictor.input_size),
        "runtime": "torch",
        "precision": "fp32",
        "tta": tta,
        "detection_score": request.scoring.score,
    }


def _fold_predictions(
    members: list[Path], request: EvalRequest, tta: str
) -> tuple[list[SplitPredictions], Predictor]:
    """Each fold's predictions by the member that did not train on it (and the last Predictor,
    for the model's facts)."""
    settings, parts = request.predictor, []
    for k, member in enumerate(members):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OperatingPointWarning)
            predictor = Predictor(
                member, device=settings.device, tta=tta, batch_size=settings.batch_size
            )
        parts.append(
            collect_probabilities(predictor, request.work, fold_name(k), request.scoring.progress)
        )
    return parts, predictor


def _fold_summaries(
    parts: list[SplitPredictions],
    members: list[Path],
    op: OperatingPoint,
    truth: FullSizeTruth | None,
    request: EvalRequest,
) -> list[dict[str, Any]]:
    """One entry per fold: its member, counts, competition Dice and metrics with intervals."""
    rows = {row["image_id"]: row for row in read_manifest(request.work)}
    evidence, folds = request.evidence, []
    for k, part in enumerate(parts):
        scored = score_predictions(part, op, truth, request.scoring.score)
        intervals = metric_intervals(
            scored.per,
            scored.values,
            patient_groups(rows, part.image_ids),
            evidence.resamples,
            evidence.seed,
        )
        folds.append(
            {
                "fold": k,
                "member": str(members[k]),
                **score_summary(
                    scored, request.scoring.resolution, {"metric_intervals": intervals}
                ),
            }
        )
    return folds


def _store_in_ensemble(path: Path, choice: PointChoice, summary: Mapping[str, Any]) -> None:
    store_ensemble_operating_point(
        path,
        choice.op,
        metrics={
            "split": OOF,
            "tta": summary["tta"],
            "competition_dice": summary["competition_dice"],
            "competition_dice_per_fold": [f["competition_dice"] for f in summary["folds"]],
            "scored_at": summary["scored_at"],
        },
        extra=choice.extra,
    )
