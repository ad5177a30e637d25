"""Metrics of a model on one split of the work folder, through the Predictor that ships.

`evaluate_predictor` runs the `Predictor` (the same preprocessing, runtime, TTA and operating
point that `predict` and `serve` use) over the split's cached model inputs, which `prepare` made
with the Predictor's own preprocessing. Masks are scored **at the original resolution against
the original RLE**, as the Kaggle scorer does (`WORK/annotations.csv`); the model-size scores
against the cached masks are kept as a labelled secondary table. The operating point is the
model's stored one; it is searched on the validation split (at the model's size, with this TTA)
and stored when there is none; command-line overrides apply last. The request (`EvalRequest`)
groups the model, the folders, the split, how the Predictor is built (the `PredictorSpec`), how
the split is scored (`ScoringOptions`) and the evidence (`EvidenceSettings`).
Written into the output folder:

- `per_image.csv`: one row per image (full-size areas, Dice, IoU; model-size Dice; maximum
  probability, detection score);
- `summary.json`: `metrics` (full size) and `model_size.metrics` map each name to {value, kind
  (pooled / per-image / image-level), description}; `scored_at` says which is which; the
  operating point and where it came from, TTA, the split, counts and the all-empty baseline;
- `roc.csv`: the image-level ROC curve (fpr, tpr, thresholds);
- `panels.npz`: ~16 chosen images at the model's size (best, worst, false positives, false
  negatives), for figure panels and the report's failure gallery without rerunning the model;
- with the evidence of `ptxseg.evaluation.evidence`: 95% intervals in `summary.json` (each
  metric's `ci_low`, `ci_high`, `method`, `n`), `subgroups.csv` and `subgroups.png` (forest
  plot), `calibration.csv` and `reliability.png`, the stored operating points' test sensitivity
  and specificity (`operating_points`); `per_image.csv` gains the calibrated probability, a
  hashed patient key and each image's subgroup levels;
- `probs-<split>.npz` (only when asked): every model-size probability map of the split.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg.data.dataset import FullSizeTruth, read_manifest
from ptxseg.data.folds import fold_name, open_split
from ptxseg.evaluation.eval_files import (
    PER_IMAGE_COLUMNS,
    choose_panels,
    number_text,
    per_image_rows,
    table_rows,
    write_evaluation,
)
from ptxseg.evaluation.evidence import (
    EvidenceSettings,
    ScoredImages,
    gather_evidence,
    search_extras,
)
from ptxseg.evaluation.named_points import Target, parse_targets
from ptxseg.evaluation.search import OperatingPointSearch, search_operating_point
from ptxseg.inference.ensemble import store_model_operating_point
from ptxseg.inference.predictor import Predictor, full_size_mask
from ptxseg.inference.spec import PredictorSpec, one_or_many
from ptxseg.model.metrics import (
    METRIC_KINDS,
    SCORES,
    MetricAccumulator,
    confusion_counts,
    dice_scores,
    iou_scores,
    roc_curve,
    summarise,
)
from ptxseg.model.operating_point import OperatingPoint, OperatingPointWarning
from ptxseg.stats.calibration import Calibrator
from ptxseg.util import schemas
from ptxseg.util.jsonio import jsonable
from ptxseg.util.progress import progress_bar
from ptxseg.util.run_folders import EvalFolder

RESOLUTIONS = ("full", "model")
SCORED_AT = {
    "full": "full size: masks at the original resolution against the original RLE (as Kaggle)",
    "model": "model size: masks at the model's input size against the cached, resized masks",
}


# --------------------------------------------------------------------------- running the model


@dataclass
class SplitPredictions:
    """The probabilities of one split at the model's input size, with truth and images."""

    split: str
    image_ids: list[str]
    probs: np.ndarray  # float32 (N, S, S)
    targets: np.ndarray  # uint8 (N, S, S), 0/1
    images: Any  # uint8 (N, S, S), memory-mapped from the cache (rows of it for a fold)


def collect_probabilities(
    predictor: Predictor, work: str | os.PathLike, split: str, progress: bool = True
) -> SplitPredictions:
    """Run the Predictor over the cached model inputs of `split` (train, val, test or fold<k>)
    and keep every probability map."""
    size = int(predictor.input_size)
    dataset = open_split(work, split, size)  # names `prepare --size` when missing
    if len(dataset) == 0:
        raise ValueError(f"split {split!r} in {work} has no images: nothing to evaluate")
    images, masks = dataset.arrays()
    probs = np.empty((len(dataset), size, size), np.float32)
    step = predictor.batch_size
    with progress_bar(progress, transient=True) as bar:
        task = bar.add_task(f"{split}: predicting", total=len(dataset))
        for start in range(0, len(dataset), step):
            chunk = np.asarray(images[start : start + step])
            probs[start : start + len(chunk)] = predictor.probabilities(chunk)
            bar.advance(task, len(chunk))
    return SplitPredictions(split, list(dataset.image_ids), probs, np.asarray(masks), images)


def full_size_counts(
    pred: SplitPredictions, op: OperatingPoint, truth: FullSizeTruth
) -> dict[str, np.ndarray]:
    """Per-image confusion counts of the full-size masks (as `predict` writes them) against the
    original RLE at the original size."""
    counts = np.zeros((4, len(pred.image_ids)), np.int64)
    above = np.zeros(len(pred.image_ids), bool)
    for i, image_id in enumerate(pred.image_ids):
        prob, mask = full_size_mask(pred.probs[i], truth.shape(image_id), op)
        counts[:, i] = [c[0] for c in confusion_counts(mask, truth.mask(image_id))]
        above[i] = mask.any() or bool((prob > op.bottom).any())
    out = dict(zip(("tp", "fp", "fn", "tn"), counts, strict=True))
    out["above_bottom"] = above  # a kept mask would not be empty (named points gate on it)
    return out


def _accumulate(pred: SplitPredictions, op: OperatingPoint, score: str) -> MetricAccumulator:
    acc = MetricAccumulator(op, score=score)
    for start in range(0, len(pred.probs), 64):
        acc.update(pred.probs[start : start + 64], pred.targets[start : start + 64])
    return acc


def concatenate_predictions(parts: list[SplitPredictions], split: str) -> SplitPredictions:
    """Several splits' predictions as one (the pooled out-of-fold predictions of the folds)."""
    return SplitPredictions(
        split,
        [i for p in parts for i in p.image_ids],
        np.concatenate([p.probs for p in parts]),
        np.concatenate([p.targets for p in parts]),
        np.concatenate([np.asarray(p.images) for p in parts]),
    )


@dataclass
class ScoredSplit:
    """Per-image arrays and summaries of one split's masks at one operating point.

    `per`, `values`, `metrics` at the scored resolution (full size against the original RLE,
    or the model's size); `small*` always at the model's size.
    """

    per: dict[str, np.ndarray]
    values: dict[str, float]
    metrics: dict[str, Any]
    small: dict[str, np.ndarray]
    small_values: dict[str, float]
    small_metrics: dict[str, Any]


def score_predictions(
    pred: SplitPredictions, op: OperatingPoint, truth: FullSizeTruth | None, score: str
) -> ScoredSplit:
    """Score the masks of `pred` at `op`: at full size when `truth` is given, else model size."""
    small = _accumulate(pred, op, score).per_image()
    small["above_bottom"] = small["max_prob"] > op.bottom
    small_values, small_metrics = _summaries(small)
    if truth is None:
        return ScoredSplit(small, small_values, small_metrics, small, small_values, small_metrics)
    per = dict(full_size_counts(pred, op, truth), max_prob=small["max_prob"])
    per.update(truth_area=per["tp"] + per["fn"], predicted_area=per["tp"] + per["fp"])
    per["dice"] = dice_scores(per["tp"], per["fp"], per["fn"])
    per["iou"] = iou_scores(per["tp"], per["fp"], per["fn"])
    per["score"] = small["score"] if score == "max_prob" else per["predicted_area"] * 1.0
    values, metrics = _summaries(per)
    return ScoredSplit(per, values, metrics, small, small_values, small_metrics)


def score_summary(
    scored: ScoredSplit, resolution: str, evidence: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The metric part of `summary.json` (counts, competition Dice, both tables); with
    `evidence` (`split_evidence`), each metric gains its interval and the rest comes along."""
    values = scored.values
    metrics = scored.metrics
    found = dict(evidence or {})
    intervals = found.pop("metric_intervals", {})
    if intervals:
        metrics = {
            name: dict(entry, **{k: v for k, v in intervals.get(name, {}).items() if k != "value"})
            for name, entry in metrics.items()
        }
    return {
        "scored_at": SCORED_AT[resolution],
        "counts": {k: values[k] for k in values if k.startswith("n_")},
        "competition_dice": values["dice_per_image"],
        "empty_baseline_competition_dice": values["empty_baseline_dice_per_image"],
        "metrics": metrics,
        **found,
        "model_size": {
            "scored_at": SCORED_AT["model"],
            "competition_dice": scored.small_values["dice_per_image"],
            "metrics": scored.small_metrics,
        },
    }


def split_evidence(
    pred: SplitPredictions,
    scored: ScoredSplit,
    op: OperatingPoint,
    work: str | os.PathLike,
    truth: FullSizeTruth | None,
    named: Mapping[str, Any] | None,
    calibrator: Calibrator | None,
    settings: EvidenceSettings,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, list]]:
    """`gather_evidence` of a scored split: manifest rows, and the true masks at the size the
    split is scored at (full size with its pixel spacing, or the model's size with the spacing
    scaled to it)."""
    rows = {row["image_id"]: row for row in read_manifest(work)}

    def spacing(i: int, scale: float = 1.0) -> float | None:
        text = (rows.get(pred.image_ids[i]) or {}).get("pixel_spacing") or ""
        try:
            return float(text) * scale
        except ValueError:
            return None

    def true_mask(i: int):
        image_id = pred.image_ids[i]
        if truth is not None:
            return truth.mask(image_id), spacing(i)
        width = (rows.get(image_id) or {}).get("width")
        scale = float(width) / pred.targets.shape[-1] if width else 1.0
        return pred.targets[i].astype(bool), spacing(i, scale)

    scored_images = ScoredImages(
        pred.image_ids, scored.per, scored.values, pred.probs, op, rows, true_mask
    )
    return gather_evidence(scored_images, named, calibrator, settings)


def evaluation_files(
    pred: SplitPredictions,
    scored: ScoredSplit,
    op: OperatingPoint,
    n_panels: int,
    extra_columns: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`per_image.csv` (plus `extra_columns`, one value per image), `roc.csv`, `panels.npz`."""
    per = scored.per
    fpr, tpr, thresholds = roc_curve(per["truth_area"] > 0, per["score"])
    rows = per_image_rows(pred.image_ids, per, scored.small["dice"])
    columns = PER_IMAGE_COLUMNS
    for name, column in (extra_columns or {}).items():
        columns = (*columns, name)
        for row, value in zip(rows, column, strict=True):
            row[name] = value
    return {
        EvalFolder.PER_IMAGE: table_rows(rows, columns),
        "roc.csv": [["fpr", "tpr", "threshold"]]
        + [
            [number_text(f), number_text(t), "inf" if math.isinf(h) else number_text(h)]
            for f, t, h in zip(fpr, tpr, thresholds, strict=True)
        ],
        "panels.npz": _panels_arrays(pred, per, op, n_panels),
    }


def validation_split(predictor: Predictor) -> str:
    """Where a model's operating point may be searched: the val split, or a fold model's own
    fold. An ensemble of fold models has none (its members trained on every fold but one):
    its point is searched out of fold (`ptxseg evaluate --split oof`)."""
    folds = getattr(predictor.model, "folds", None)
    if folds is not None and any(f is not None for f in folds):
        raise ValueError(
            "this ensemble's members were trained on cross-validation folds, so every val image "
            "trained some of them: search its operating point on the out-of-fold predictions "
            "with `ptxseg evaluate --checkpoint CV_FOLDER --data WORK --split oof --out DIR` "
            "(it is stored in the cv folder's ensemble.json), or give --threshold"
        )
    fold = (predictor.config.get("data") or {}).get("fold")
    return "val" if fold is None else fold_name(fold)


# --------------------------------------------------------------------------- outputs


def _panels_arrays(pred: SplitPredictions, per, op: OperatingPoint, n: int) -> dict[str, Any]:
    chosen = choose_panels(per, n)
    idx = np.array([i for i, _ in chosen], dtype=np.int64)
    probs = pred.probs[idx]
    return {
        "image_ids": np.array([pred.image_ids[i] for i in idx], dtype=str),
        "kinds": np.array([k for _, k in chosen], dtype=str),
        "images": np.asarray(pred.images[idx], dtype=np.uint8),
        "truths": pred.targets[idx].astype(np.uint8),
        "probabilities": probs.astype(np.float16),
        "masks": op.apply(probs).astype(np.uint8) if len(idx) else np.zeros_like(probs, np.uint8),
        "dice": per["dice"][idx].astype(np.float32),
        "operating_point": np.array(json.dumps(op.to_dict())),
    }


# --------------------------------------------------------------------------- the request


EVALUATION_SPEC = PredictorSpec(runtime="torch", precision="fp32", batch_size=8)
"""How a model path becomes a Predictor when the caller says nothing: torch fp32, the stored
point's TTA, batches of 8 (`evaluate` passes the spec of its options, `auto` by default)."""


@dataclass(frozen=True)
class ScoringOptions:
    """How the operating point is found and the split scored, and what is written beside it.

    `search`: None searches when the model stores no point (and the overrides do not fully
    specify one), True always, False never. `overrides` (`threshold`, `top`, `bottom`,
    `min_area`, as in `predict`) apply last. `operating_points`: named targets searched with the
    point ("triage:sensitivity=0.95"). `resolution` "full" scores at the original size against
    the original RLE, "model" only at the model's input size."""

    search: bool | None = None
    overrides: Mapping[str, Any] | None = None
    operating_points: str | Sequence[Target] | None = None
    score: str = "max_prob"
    resolution: str = "full"
    n_panels: int = 16
    save_probs: bool = False
    progress: bool = True


@dataclass(frozen=True)
class EvalRequest:
    """One evaluation: the model (a `Predictor`, a loaded model, a model path or a list of them
    to average), the work folder, the output folder and the split, with how to build the
    Predictor, how to score, the evidence (bootstrap, subgroups), `checkpoint` (where a loaded
    model's searched point is stored; a single model path stores its own) and `model_card`."""

    model: Any
    work: Path
    out_dir: Path
    split: str = "test"
    predictor: PredictorSpec = EVALUATION_SPEC
    scoring: ScoringOptions = field(default_factory=ScoringOptions)
    evidence: EvidenceSettings = field(default_factory=EvidenceSettings)
    checkpoint: str | os.PathLike | None = None
    model_card: bool = False


_GROUPS = {"predictor": PredictorSpec, "scoring": ScoringOptions}
_SPEC_KEYS = {"runtime", "precision", "device", "tta", "batch_size"}  # of the spec, here


def eval_request(
    model: Any,
    work: str | os.PathLike,
    out_dir: str | os.PathLike,
    split: str = "test",
    **options: Any,
) -> EvalRequest:
    """The `EvalRequest` of keyword options: each a field of the `PredictorSpec` (runtime,
    precision, device, tta, batch_size; the model is `model`),
    `ScoringOptions` or `EvalRequest` itself (`evidence`, `checkpoint`, `model_card`)."""
    grouped: dict[str, dict[str, Any]] = {name: {} for name in _GROUPS}
    top: dict[str, Any] = {}
    own = {f.name for f in fields(EvalRequest)} - {"model", "work", "out_dir", "split", *_GROUPS}
    for key, value in options.items():
        if key in _SPEC_KEYS:
            grouped["predictor"][key] = value
        elif key in _field_names(ScoringOptions):
            grouped["scoring"][key] = value
        elif key in own:
            top[key] = value
        else:
            raise TypeError(f"unknown evaluation option {key!r}")
    if top.get("evidence") is None:
        top.pop("evidence", None)
    return EvalRequest(
        model,
        Path(work),
        Path(out_dir),
        split,
        predictor=EVALUATION_SPEC.replace(**grouped["predictor"]),
        scoring=ScoringOptions(**grouped["scoring"]),
        **top,
    )


def _field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def checked_overrides(scoring: ScoringOptions) -> dict[str, Any]:
    """The given overrides, after checking the score, resolution and override values (bad
    values fail before any work)."""
    if scoring.score not in SCORES:
        raise ValueError(f"unknown detection score {scoring.score!r}: expected one of {SCORES}")
    if scoring.resolution not in RESOLUTIONS:
        raise ValueError(
            f"unknown resolution {scoring.resolution!r}: expected one of {RESOLUTIONS}"
        )
    overrides = {k: v for k, v in (scoring.overrides or {}).items() if v is not None}
    unknown = set(overrides) - {"threshold", "top", "bottom", "min_area"}
    if unknown:
        raise ValueError(f"unknown operating point overrides {sorted(unknown)}")
    OperatingPoint().with_overrides(**overrides)
    return overrides


def checked_targets(scoring: ScoringOptions) -> list[Target]:
    points = scoring.operating_points
    return parse_targets(points) if isinstance(points, str) or points is None else list(points)


# --------------------------------------------------------------------------- operating point


@dataclass
class PointChoice:
    """The operating point a split is scored at, where it came from, and what a search found
    beside it (`extra`: the named points and the calibrator it stores; `note`: how the
    calibrator was fitted)."""

    op: OperatingPoint
    source: str
    searched: OperatingPointSearch | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    named: Mapping[str, Any] | None = None
    calibrator: Calibrator | None = None
    note: str | None = None
    val_pred: SplitPredictions | None = None  # the validation split's predictions, if searched

    def point_fields(self) -> dict[str, Any]:
        """The operating point's entries of `summary.json`."""
        return {
            "operating_point": self.op.to_dict(),
            "operating_point_description": self.op.describe(),
            "operating_point_source": self.source,
            "operating_point_search": None if self.searched is None else self.searched.to_dict(),
        }


def wants_search(
    scoring: ScoringOptions,
    stored: OperatingPoint | None,
    overrides: Mapping[str, Any],
    targets: Sequence[Target],
) -> bool:
    """Search when asked, or when nothing is stored and the overrides leave something open."""
    search = scoring.search
    given = set(overrides)
    fully = "threshold" in given or {"top", "bottom", "min_area"} <= given
    do_search = (stored is None if search is None else search) and not (search is None and fully)
    if targets and not do_search:
        raise ValueError(
            "--operating-points are searched with the operating point: add --search (the "
            "model's stored point is searched again, with its calibrator)"
        )
    return do_search


def unsearched_point(stored: OperatingPoint | None, stored_source: str) -> PointChoice:
    """The stored point, or the plain default when there is none."""
    if stored is not None:
        return PointChoice(stored, stored_source)
    return PointChoice(OperatingPoint(), "default (plain threshold 0.5; none stored, search off)")


def searched_point(
    pred: SplitPredictions, targets: Sequence[Target], tta: str, size: int, source: str
) -> PointChoice:
    """Search the point on `pred` (model size) with the calibrator and the named points."""
    searched = search_operating_point(pred.probs, pred.targets)
    op = searched.operating_point.with_path(tta, size)
    truth = pred.targets.reshape(len(pred.targets), -1).any(1)
    extra, note = search_extras(pred.probs, truth, op, targets, pred.split, tta)
    calibrator = Calibrator.coerce(extra["calibrator"])
    return PointChoice(op, source, searched, extra, extra["operating_points"], calibrator, note)


def overridden(choice: PointChoice, overrides: Mapping[str, Any]) -> PointChoice:
    """The command line's overrides applied last, and said in the source."""
    if overrides:
        choice.op = choice.op.with_overrides(**overrides)
        choice.source += "; overridden on the command line: " + ", ".join(sorted(overrides))
    return choice


def _store_searched(
    predictor: Predictor, choice: PointChoice, request: EvalRequest, on: str
) -> None:
    """Store a searched point (with its validation metrics) in the checkpoint, and give it to
    the loaded model and the Predictor."""
    if request.checkpoint is not None:
        val_metrics = _accumulate(choice.val_pred, choice.op, request.scoring.score).compute()
        store_model_operating_point(
            request.checkpoint,
            choice.op,
            metrics={
                **val_metrics,
                "split": on,
                "tta": predictor.tta,
                "detection_score": request.scoring.score,
            },
            extra=choice.extra,
        )
        choice.source += " and stored with the model"
    if predictor.model is not None:
        predictor.model.operating_point = choice.op
        for key, value in choice.extra.items():
            setattr(predictor.model, key, value)
    predictor.named_points, predictor.calibrator = choice.named or {}, choice.calibrator


def choose_point(
    predictor: Predictor, request: EvalRequest, overrides: Mapping[str, Any]
) -> PointChoice:
    """The operating point of the evaluation: searched on the validation split (and stored),
    the model's stored one, or the default; overrides last. The Predictor is set to it."""
    targets = checked_targets(request.scoring)
    stored = predictor.stored_operating_point
    if wants_search(request.scoring, stored, overrides, targets):
        on = validation_split(predictor)
        val_pred = collect_probabilities(predictor, request.work, on, request.scoring.progress)
        choice = searched_point(
            val_pred, targets, predictor.tta, predictor.input_size, f"searched on the {on} split"
        )
        choice.val_pred = val_pred
        _store_searched(predictor, choice, request, on)
    else:
        choice = unsearched_point(stored, "stored with the model")
        choice.named, choice.calibrator = predictor.named_points, predictor.calibrator
    choice = overridden(choice, overrides)
    predictor.set_operating_point(choice.op)
    return choice


# --------------------------------------------------------------------------- evaluation


def _summaries(per: Mapping[str, np.ndarray]) -> tuple[dict[str, float], dict[str, Any]]:
    values = summarise(per["tp"], per["fp"], per["fn"], per["tn"], per["score"])
    metrics = {
        name: {"value": values[name], "kind": kind, "description": text}
        for name, (kind, text) in METRIC_KINDS.items()
    }
    return values, metrics


def checked_output(out_dir: Path) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"output {out_dir} exists and is not a folder: choose another")
    return out_dir


def scored_truth(request: EvalRequest) -> FullSizeTruth | None:
    """The original masks to score against at full size (a missing file fails first)."""
    return FullSizeTruth(request.work) if request.scoring.resolution == "full" else None


def evaluation_predictor(request: EvalRequest) -> tuple[Predictor, Any]:
    """The Predictor of the request's model and where a searched point is stored: a single
    model path stores its own (not an .onnx file, not a list: write an ensemble file to keep
    one); a `Predictor` or loaded model stores it in `request.checkpoint`. Model paths get the
    runtime and precision asked (`auto`: the path `predict` would run on this CPU, checked on
    the validation split of the work folder, which also calibrates and checks int8)."""
    model, settings = request.model, request.predictor
    if isinstance(model, Predictor):
        if settings.tta is not None and settings.tta != model.tta:
            raise ValueError(
                f"the Predictor runs TTA {model.tta!r}; evaluate was asked for {settings.tta!r}"
            )
        return model, request.checkpoint
    if not _is_path(model):
        with warnings.catch_warnings():  # the TTA check belongs to the point finally applied
            warnings.simplefilter("ignore", OperatingPointWarning)
            return Predictor(
                model, device=str(settings.device), tta=settings.tta, batch_size=settings.batch_size
            ), request.checkpoint
    return _built_predictor(request), _own_store(model)


def _is_path(model: Any) -> bool:
    return isinstance(model, (str, os.PathLike, list, tuple))


def _checkpoint_label(request: EvalRequest) -> str | list[str] | None:
    """What `summary.json` names as the model: its path(s), or where its point is stored."""
    if _is_path(request.model):
        models = [str(m) for m in _model_list(request.model)]
        return models[0] if len(models) == 1 else models
    return None if request.checkpoint is None else str(request.checkpoint)


def _model_list(model: Any) -> list:
    return list(model) if isinstance(model, (list, tuple)) else [model]


def _own_store(model: Any) -> Any:
    models = _model_list(model)
    single = len(models) == 1 and Path(models[0]).suffix.lower() != ".onnx"
    return models[0] if single else None


def _built_predictor(request: EvalRequest) -> Predictor:
    from ptxseg.inference.choice import (
        CHECK_IMAGES,
        INT8_CHECK_IMAGES,
        ChoiceHooks,
        build_predictor,
        default_check_images,
    )

    models, settings, work = _model_list(request.model), request.predictor, request.work
    n = INT8_CHECK_IMAGES if settings.precision == "int8" else CHECK_IMAGES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OperatingPointWarning)
        return build_predictor(
            settings.replace(model=one_or_many(models)),
            ChoiceHooks(
                images=lambda size, config: default_check_images(config, size, n=n, work=work)
            ),
        )


def _calibration_note(choice: PointChoice) -> str | None:
    if choice.note is not None:
        return choice.note
    if choice.calibrator is None:
        return (
            "this model stores no calibrator (searched before calibration existed, or its "
            "validation split could not fit one): search again with --search to add one"
        )
    return None


def evaluation_summary(
    predictor: Predictor, request: EvalRequest, choice: PointChoice, scores: dict[str, Any]
) -> dict[str, Any]:
    """`summary.json` (less `files`): what was scored, with which path and point, and the
    metric part `scores` (`score_summary`)."""
    return {
        "schema_version": schemas.EVALUATION_SUMMARY,
        "split": request.split,
        "checkpoint": _checkpoint_label(request),
        "work": str(request.work),
        "encoder": predictor.encoder,
        "input_size": int(predictor.input_size),
        "runtime": predictor.runtime,
        "precision": predictor.precision,
        "inference_path": predictor.path_choice,
        "tta": predictor.tta,
        "detection_score": request.scoring.score,
        **choice.point_fields(),
        **scores,
    }


def finish_evaluation(
    out_dir: Path, summary: dict[str, Any], files: dict[str, Any]
) -> dict[str, Any]:
    """List the files in the summary, write them all, and return the summary as written."""
    summary["files"] = sorted([*files, EvalFolder.SUMMARY])
    files[EvalFolder.SUMMARY] = jsonable(summary, finite=True)
    write_evaluation(out_dir, files)
    return files[EvalFolder.SUMMARY]


def evaluate_predictor(request: EvalRequest) -> dict[str, Any]:
    """Evaluate the request's model on its split; write the outputs to its folder and return
    the summary (see the module docstring, `EvalRequest` and `ScoringOptions`).

    A searched point records this TTA and input size and is stored with the model; a search
    also fits the calibrator and the named operating points. `model_card` writes the model's
    README.md and stores its facts (`evaluation.model_card`)."""
    overrides = checked_overrides(request.scoring)
    checked_targets(request.scoring)
    if request.model_card and not (
        _is_path(request.model) and len(_model_list(request.model)) == 1
    ):
        raise ValueError(
            "--model-card describes one model: write an ensemble file of these models first "
            "(`ptxseg ensemble`) and evaluate that"
        )
    out_dir = checked_output(request.out_dir)
    truth = scored_truth(request)
    predictor, store = evaluation_predictor(request)
    request = replace(request, checkpoint=store)
    choice = choose_point(predictor, request, overrides)
    pred = choice.val_pred
    if pred is None or pred.split != request.split:
        pred = collect_probabilities(
            predictor, request.work, request.split, request.scoring.progress
        )
    scored = score_predictions(pred, choice.op, truth, request.scoring.score)
    found, evidence_files, columns = split_evidence(
        pred,
        scored,
        choice.op,
        request.work,
        truth,
        choice.named,
        choice.calibrator,
        request.evidence,
    )
    note = _calibration_note(choice)
    if note is not None:
        found["calibration"]["fitted"] = note
    summary = evaluation_summary(
        predictor, request, choice, score_summary(scored, request.scoring.resolution, found)
    )
    files = evaluation_files(pred, scored, choice.op, request.scoring.n_panels, columns)
    files.update(evidence_files)
    if request.scoring.save_probs:
        for p in {id(x): x for x in (choice.val_pred, pred) if x is not None}.values():
            files[f"probs-{p.split}.npz"] = probability_arrays(p)
    summary = finish_evaluation(out_dir, summary, files)
    if request.model_card:
        from ptxseg.evaluation.model_card import write_model_card

        summary["model_card"] = str(
            write_model_card(_model_list(request.model)[0], summary, out_dir)
        )
        write_evaluation(out_dir, {EvalFolder.SUMMARY: summary})
    return summary


def probability_arrays(pred: SplitPredictions) -> dict[str, np.ndarray]:
    """What `probs-<split>.npz` holds: ids, float16 probabilities and the truth at model size."""
    return {
        "image_ids": np.array(pred.image_ids, dtype=str),
        "probabilities": pred.probs.astype(np.float16),
        "truths": pred.targets.astype(np.uint8),
    }


def evaluate_checkpoint(
    model: Any,
    work: str | os.PathLike,
    out_dir: str | os.PathLike,
    split: str = "test",
    **options: Any,
) -> dict[str, Any]:
    """`evaluate_predictor` with the request given as keywords (`eval_request`): `model` is a
    .ckpt, a model folder, an .onnx file, an ensemble file, a list of models to average, a
    loaded model or a `Predictor`."""
    return evaluate_predictor(eval_request(model, work, out_dir, split, **options))
