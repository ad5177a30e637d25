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
    RESOLUTIONS,
    collect_probabilities,
    concatenate_predictions,
    evaluation_files,
    probability_arrays,
    score_predictions,
    score_summary,
    split_evidence,
    write_outputs,
)
from ptxseg.evaluation.evidence import EvidenceSettings, search_extras
from ptxseg.evaluation.named_points import parse_targets
from ptxseg.evaluation.search import search_operating_point
from ptxseg.evaluation.uncertainty import metric_intervals, patient_groups
from ptxseg.inference.ensemble import EnsembleError, read_ensemble, store_ensemble_operating_point
from ptxseg.inference.predictor import Predictor
from ptxseg.model.metrics import SCORES
from ptxseg.model.operating_point import OperatingPoint, OperatingPointWarning, check_tta
from ptxseg.util import schemas
from ptxseg.util.jsonio import jsonable
from ptxseg.util.run_folders import EvalFolder

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
    *,
    tta: str | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    search: bool | None = None,
    overrides: Mapping[str, Any] | None = None,
    score: str = "max_prob",
    n_panels: int = 16,
    progress: bool = True,
    resolution: str = "full",
    save_probs: bool = False,
    evidence: EvidenceSettings | None = None,
    operating_points: str | None = None,
) -> dict[str, Any]:
    """Evaluate an ensemble out of fold on `work`; write the outputs and return the summary.

    The operating point is searched on the pooled OOF predictions when the ensemble has none
    (`search=None`) or always (`search=True`) and stored in the ensemble file; `tta=None` uses
    the stored point's TTA (none when there is none). Overrides apply last, as in `evaluate`.
    A search also fits the calibrator and the named `operating_points` on the pooled OOF
    predictions; the metrics get the intervals of `evaluate` (`evidence`), each fold its own.
    """
    evidence = evidence or EvidenceSettings()
    targets = parse_targets(operating_points)
    if score not in SCORES:
        raise ValueError(f"unknown detection score {score!r}: expected one of {SCORES}")
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unknown resolution {resolution!r}: expected one of {RESOLUTIONS}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    OperatingPoint().with_overrides(**overrides)  # bad values fail before any work
    spec = read_ensemble(ensemble)
    members = fold_members(ensemble, work)
    truth = FullSizeTruth(work) if resolution == "full" else None
    stored = spec.operating_point
    tta = check_tta(tta) if tta is not None else ((stored.tta if stored else None) or "none")

    parts = []
    for k, member in enumerate(members):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OperatingPointWarning)
            predictor = Predictor(member, device=device, tta=tta, batch_size=batch_size)
        parts.append(collect_probabilities(predictor, work, fold_name(k), progress))
    pooled = concatenate_predictions(parts, OOF)
    size = int(predictor.input_size)

    fully = "threshold" in overrides or {"top", "bottom", "min_area"} <= set(overrides)
    do_search = (stored is None if search is None else search) and not (search is None and fully)
    if targets and not do_search:
        raise ValueError("--operating-points are searched with the operating point: add --search")
    searched = None
    extra: dict[str, Any] = {}
    named, calibrator, note = spec.extra.get("operating_points"), spec.extra.get("calibrator"), None
    if do_search:
        searched = search_operating_point(pooled.probs, pooled.targets)
        op = searched.operating_point.with_path(tta, size)
        truth_small = pooled.targets.reshape(len(pooled.targets), -1).any(1)
        extra, note = search_extras(pooled.probs, truth_small, op, targets, OOF, tta)
        named, calibrator = extra["operating_points"], extra["calibrator"]
        source = "searched on the pooled out-of-fold predictions and stored in the ensemble file"
    elif stored is not None:
        op, source = stored, "stored with the ensemble"
    else:
        op, source = OperatingPoint(), "default (plain threshold 0.5; none stored, search off)"
    if overrides:
        op = op.with_overrides(**overrides)
        source += "; overridden on the command line: " + ", ".join(sorted(overrides))
    op.warn_if_other_path(tta, size)

    rows = {row["image_id"]: row for row in read_manifest(work)}
    folds = []
    for k, part in enumerate(parts):
        scored = score_predictions(part, op, truth, score)
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
                **score_summary(scored, resolution, {"metric_intervals": intervals}),
            }
        )
    scored = score_predictions(pooled, op, truth, score)
    from ptxseg.stats.calibration import Calibrator

    found, evidence_files, columns = split_evidence(
        pooled, scored, op, work, truth, named, Calibrator.coerce(calibrator), evidence
    )
    if note is not None:
        found["calibration"]["fitted"] = note
    summary = {
        "schema_version": schemas.EVALUATION_SUMMARY,
        "split": OOF,
        "checkpoint": str(spec.path),
        "work": str(work),
        "encoder": predictor.encoder,
        "input_size": size,
        "runtime": "torch",
        "precision": "fp32",
        "tta": tta,
        "detection_score": score,
        "operating_point": op.to_dict(),
        "operating_point_description": op.describe(),
        "operating_point_source": source,
        "operating_point_search": None if searched is None else searched.to_dict(),
        **score_summary(scored, resolution, found),
        "folds": folds,
    }
    if searched is not None:
        store_ensemble_operating_point(
            spec.path,
            op,
            metrics={
                "split": OOF,
                "tta": tta,
                "competition_dice": summary["competition_dice"],
                "competition_dice_per_fold": [f["competition_dice"] for f in folds],
                "scored_at": summary["scored_at"],
            },
            extra=extra,
        )
    fold_column = [k for k, part in enumerate(parts) for _ in part.image_ids]
    files = evaluation_files(pooled, scored, op, n_panels, {"fold": fold_column, **columns})
    files.update(evidence_files)
    if save_probs:
        files[f"probs-{OOF}.npz"] = dict(probability_arrays(pooled), folds=fold_column)
    summary["files"] = sorted([*files, EvalFolder.SUMMARY])
    files[EvalFolder.SUMMARY] = jsonable(summary, finite=True)
    write_outputs(Path(out_dir), files)
    return files[EvalFolder.SUMMARY]
