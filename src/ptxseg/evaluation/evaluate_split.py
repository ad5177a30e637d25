"""Metrics of a model on one split of the work folder, through the Predictor that ships.

`evaluate` runs the `Predictor` (the same preprocessing, runtime, TTA and operating point that
`predict` and `serve` use) over the split's cached model inputs, which `prepare` made with the
Predictor's own preprocessing. Masks are scored **at the original resolution against the original
RLE**, as the Kaggle scorer does (`WORK/annotations.csv`); the model-size scores against the cached
masks are kept as a labelled secondary table. The operating point is the model's stored one;
it is searched on the validation split (at the model's size, with this TTA) and stored when there
is none; command-line overrides apply last. Written into the output folder:

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

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg.data.dataset import FullSizeTruth, read_manifest
from ptxseg.data.folds import fold_name, open_split
from ptxseg.evaluation.evidence import EvidenceSettings, gather_evidence, search_extras
from ptxseg.evaluation.named_points import Target, parse_targets
from ptxseg.evaluation.search import search_operating_point
from ptxseg.inference.ensemble import store_operating_point
from ptxseg.inference.predictor import Predictor, full_size_mask
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
from ptxseg.util import atomic, schemas
from ptxseg.util.jsonio import jsonable
from ptxseg.util.progress import progress_bar
from ptxseg.util.run_folders import EvalFolder

RESOLUTIONS = ("full", "model")
SCORED_AT = {
    "full": "full size: masks at the original resolution against the original RLE (as Kaggle)",
    "model": "model size: masks at the model's input size against the cached, resized masks",
}
PER_IMAGE_COLUMNS = (
    "image_id",
    "truth_area",
    "predicted_area",
    "dice",
    "iou",
    "max_probability",
    "score",
    "dice_model_size",
    "has_truth",
    "has_prediction",
)
PANEL_KINDS = ("best", "worst", "false_positive", "false_negative")


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

    return gather_evidence(
        pred.image_ids,
        scored.per,
        scored.values,
        pred.probs,
        op,
        rows,
        true_mask,
        named,
        calibrator,
        settings,
    )


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
        EvalFolder.PER_IMAGE: _table(rows, columns),
        "roc.csv": [["fpr", "tpr", "threshold"]]
        + [
            [_fmt(f), _fmt(t), "inf" if math.isinf(h) else _fmt(h)]
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


# --------------------------------------------------------------------------- operating point


def _fully_overridden(overrides: Mapping[str, Any]) -> bool:
    given = {k for k, v in overrides.items() if v is not None}
    return "threshold" in given or {"top", "bottom", "min_area"} <= given


# --------------------------------------------------------------------------- outputs


def per_image_rows(
    image_ids: list[str], per: Mapping[str, np.ndarray], dice_model_size: np.ndarray
) -> list[dict[str, Any]]:
    """Rows of `per_image.csv` from per-image arrays (as `MetricAccumulator.per_image()`)."""
    return [
        {
            "image_id": image_id,
            "truth_area": int(per["truth_area"][i]),
            "predicted_area": int(per["predicted_area"][i]),
            "dice": round(float(per["dice"][i]), 6),
            "iou": round(float(per["iou"][i]), 6),
            "max_probability": round(float(per["max_prob"][i]), 6),
            "score": round(float(per["score"][i]), 6),
            "dice_model_size": round(float(dice_model_size[i]), 6),
            "has_truth": int(per["truth_area"][i] > 0),
            "has_prediction": int(per["predicted_area"][i] > 0),
        }
        for i, image_id in enumerate(image_ids)
    ]


def choose_panels(per: Mapping[str, np.ndarray], n: int = 16) -> list[tuple[int, str]]:
    """Up to `n` (index, kind) pairs, taken in turn from each kind (a quarter each when there are
    enough): best and worst Dice among images with truth or prediction, false positives (largest
    predicted area on empty truth), false negatives (largest missed truth). No image twice."""
    truth, pred = per["truth_area"] > 0, per["predicted_area"] > 0
    dice, index = per["dice"], np.arange(len(per["dice"]))
    either = index[truth | pred]
    candidates = {
        "best": either[np.argsort(-dice[either], kind="stable")],
        "worst": either[np.argsort(dice[either], kind="stable")],
        "false_positive": index[~truth & pred][
            np.argsort(-per["predicted_area"][~truth & pred], kind="stable")
        ],
        "false_negative": index[truth & ~pred][
            np.argsort(-per["truth_area"][truth & ~pred], kind="stable")
        ],
    }
    chosen: list[tuple[int, str]] = []
    taken: set[int] = set()
    queues = {kind: list(candidates[kind]) for kind in PANEL_KINDS}
    while len(chosen) < n and any(queues.values()):  # one of each kind per round
        for kind in PANEL_KINDS:
            queue = queues[kind]
            while queue and int(queue[0]) in taken:
                queue.pop(0)
            if queue and len(chosen) < n:
                i = int(queue.pop(0))
                chosen.append((i, kind))
                taken.add(i)
    return chosen


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


def write_outputs(out_dir: Path, files: Mapping[str, Any]) -> dict[str, str]:
    """Write every prepared output (name -> rows, dict or arrays) atomically; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, content in files.items():
        path = out_dir / name
        if name.endswith(".csv"):

            def write_csv(f, rows=content):
                writer = csv.writer(f)
                writer.writerows(rows)

            atomic.write_through(path, write_csv)
        elif name.endswith(".json"):
            atomic.write_through(path, lambda f, c=content: f.write(json.dumps(c, indent=2) + "\n"))
        elif name.endswith(".npz"):

            def write_npz(f, arrays=content):
                buffer = io.BytesIO()
                np.savez_compressed(buffer, **arrays)
                f.write(buffer.getvalue())

            atomic.write_through(path, write_npz, binary=True)
        elif name.endswith(".png"):
            atomic.write_bytes(path, content)
        else:
            raise ValueError(f"no writer for output {name!r}")
        written[name] = str(path)
    return written


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> list[list[Any]]:
    return [list(columns)] + [[row[c] for c in columns] for row in rows]


# --------------------------------------------------------------------------- evaluation


def _summaries(per: Mapping[str, np.ndarray]) -> tuple[dict[str, float], dict[str, Any]]:
    values = summarise(per["tp"], per["fp"], per["fn"], per["tn"], per["score"])
    metrics = {
        name: {"value": values[name], "kind": kind, "description": text}
        for name, (kind, text) in METRIC_KINDS.items()
    }
    return values, metrics


def _as_predictor(model: Any, tta: str | None, batch_size: int, device: str) -> Predictor:
    if isinstance(model, Predictor):
        if tta is not None and tta != model.tta:
            raise ValueError(
                f"the Predictor runs TTA {model.tta!r}; evaluate was asked for {tta!r}"
            )
        return model
    return Predictor(model, device=str(device), tta=tta, batch_size=batch_size)


def evaluate(
    model: Any,
    work: str | os.PathLike,
    out_dir: str | os.PathLike,
    split: str = "test",
    *,
    checkpoint: str | os.PathLike | None = None,
    tta: str | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    overrides: Mapping[str, Any] | None = None,
    search: bool | None = None,
    save_probs: bool = False,
    score: str = "max_prob",
    n_panels: int = 16,
    progress: bool = True,
    resolution: str = "full",
    evidence: EvidenceSettings | None = None,
    operating_points: str | Sequence[Target] | None = None,
) -> dict[str, Any]:
    """Evaluate a model (a `Predictor`, a loaded model or a model path) on `split`; write the
    outputs to `out_dir` and return the summary.

    The operating point is the model's stored one; it is searched on the validation split when
    there is none (`search=None`) or always (`search=True`, never with `False`), unless the
    overrides fully specify it. A searched point records this TTA and input size and is stored
    in `checkpoint` when given. Overrides (`threshold`, `top`, `bottom`, `min_area`: the same
    meaning as in `predict`) apply last. `tta=None` uses the TTA the stored point was searched
    with. `resolution="full"` scores at the original size (the default, as the competition);
    `"model"` only at the model's input size (for work folders without annotations.csv).
    A search also fits the calibrator and the named `operating_points` (targets such as
    "triage:sensitivity=0.95") and stores them with the point; `evidence` sets the bootstrap
    and the subgroups (`ptxseg.evaluation.evidence`).
    """
    evidence = evidence or EvidenceSettings()
    targets = (
        parse_targets(operating_points)
        if isinstance(operating_points, str) or operating_points is None
        else list(operating_points)
    )
    if score not in SCORES:
        raise ValueError(f"unknown detection score {score!r}: expected one of {SCORES}")
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unknown resolution {resolution!r}: expected one of {RESOLUTIONS}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(overrides) - {"threshold", "top", "bottom", "min_area"}
    if unknown:
        raise ValueError(f"unknown operating point overrides {sorted(unknown)}")
    OperatingPoint().with_overrides(**overrides)  # fail on bad values before any work
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"output {out_dir} exists and is not a folder: choose another")
    truth = FullSizeTruth(work) if resolution == "full" else None  # missing file: fail first

    with warnings.catch_warnings():
        # the TTA check belongs to the point finally applied, below
        warnings.simplefilter("ignore", OperatingPointWarning)
        predictor = _as_predictor(model, tta, batch_size, device)
    stored = predictor.stored_operating_point
    do_search = (stored is None if search is None else search) and not (
        search is None and _fully_overridden(overrides)
    )
    if targets and not do_search:
        raise ValueError(
            "--operating-points are searched with the operating point: add --search (the "
            "model's stored point is searched again, with its calibrator)"
        )
    searched = None
    val_pred = None
    named, calibrator = predictor.named_points, predictor.calibrator
    calibration_note = None
    if do_search:
        on = validation_split(predictor)
        val_pred = collect_probabilities(predictor, work, on, progress)
        searched = search_operating_point(val_pred.probs, val_pred.targets)
        op = searched.operating_point.with_path(predictor.tta, predictor.input_size)
        val_metrics = _accumulate(val_pred, op, score).compute()
        val_truth = val_pred.targets.reshape(len(val_pred.targets), -1).any(1)
        extra, calibration_note = search_extras(
            val_pred.probs, val_truth, op, targets, on, predictor.tta
        )
        named, calibrator = extra["operating_points"] or {}, Calibrator.coerce(extra["calibrator"])
        source = f"searched on the {on} split"
        if checkpoint is not None:
            store_operating_point(
                checkpoint,
                op,
                metrics={
                    **val_metrics,
                    "split": on,
                    "tta": predictor.tta,
                    "detection_score": score,
                },
                extra=extra,
            )
            source += " and stored with the model"
        if predictor.model is not None:
            predictor.model.operating_point = op
            for key, value in extra.items():
                setattr(predictor.model, key, value)
        predictor.named_points, predictor.calibrator = named, calibrator
    elif stored is not None:
        op, source = stored, "stored with the model"
    else:
        op, source = OperatingPoint(), "default (plain threshold 0.5; none stored, search off)"
    if overrides:
        op = op.with_overrides(**overrides)
        source += "; overridden on the command line: " + ", ".join(sorted(overrides))
    predictor.set_operating_point(op)

    if val_pred is not None and split == val_pred.split:
        pred = val_pred
    else:
        pred = collect_probabilities(predictor, work, split, progress)
    scored = score_predictions(pred, op, truth, score)
    found, evidence_files, columns = split_evidence(
        pred, scored, op, work, truth, named, calibrator, evidence
    )
    if calibration_note is not None:
        found["calibration"]["fitted"] = calibration_note
    elif calibrator is None:
        found["calibration"]["fitted"] = (
            "this model stores no calibrator (searched before calibration existed, or its "
            "validation split could not fit one): search again with --search to add one"
        )

    summary = {
        "schema_version": schemas.EVALUATION_SUMMARY,
        "split": split,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "work": str(work),
        "encoder": predictor.encoder,
        "input_size": int(predictor.input_size),
        "runtime": predictor.runtime,
        "precision": predictor.precision,
        "inference_path": predictor.path_choice,
        "tta": predictor.tta,
        "detection_score": score,
        "operating_point": op.to_dict(),
        "operating_point_description": op.describe(),
        "operating_point_source": source,
        "operating_point_search": None if searched is None else searched.to_dict(),
        **score_summary(scored, resolution, found),
    }
    files = evaluation_files(pred, scored, op, n_panels, columns)
    files.update(evidence_files)
    if save_probs:
        for p in {id(x): x for x in (val_pred, pred) if x is not None}.values():
            files[f"probs-{p.split}.npz"] = probability_arrays(p)
    summary["files"] = sorted([*files, EvalFolder.SUMMARY])
    files[EvalFolder.SUMMARY] = jsonable(summary, finite=True)
    write_outputs(out_dir, files)
    return files[EvalFolder.SUMMARY]


def probability_arrays(pred: SplitPredictions) -> dict[str, np.ndarray]:
    """What `probs-<split>.npz` holds: ids, float16 probabilities and the truth at model size."""
    return {
        "image_ids": np.array(pred.image_ids, dtype=str),
        "probabilities": pred.probs.astype(np.float16),
        "truths": pred.targets.astype(np.uint8),
    }


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.6g}"


def evaluate_checkpoint(
    checkpoint: str | os.PathLike | Sequence[str | os.PathLike],
    work: str | os.PathLike,
    out_dir: str | os.PathLike,
    split: str = "test",
    device: str = "cpu",
    runtime: str = "torch",
    precision: str = "fp32",
    tta: str | None = None,
    batch_size: int = 8,
    model_card: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Build the Predictor of `checkpoint` (a .ckpt, a model folder, an .onnx file, an ensemble
    file, or a list of models to average) and `evaluate` it; a searched operating point is
    stored with the model (not with a list: write an ensemble file to keep one). See `evaluate`.
    `model_card` writes the model's README.md and stores its facts (`evaluation.model_card`).

    `runtime`/`precision` `auto` choose the path that `predict` would run on this CPU
    (`ptxseg.inference.choice`), checked on the validation split of `work`, which also
    calibrates and checks int8; the summary's `inference_path` says which path was scored.
    """
    from ptxseg.inference.choice import (
        CHECK_IMAGES,
        INT8_CHECK_IMAGES,
        build_predictor,
        default_check_images,
    )

    models = list(checkpoint) if isinstance(checkpoint, list | tuple) else [checkpoint]
    if model_card and len(models) > 1:
        raise ValueError(
            "--model-card describes one model: write an ensemble file of these models first "
            "(`ptxseg ensemble`) and evaluate that"
        )
    n = INT8_CHECK_IMAGES if precision == "int8" else CHECK_IMAGES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OperatingPointWarning)
        predictor = build_predictor(
            models[0] if len(models) == 1 else models,
            runtime=runtime,
            device=device,
            precision=precision,
            tta=tta,
            batch_size=batch_size,
            images=lambda size, config: default_check_images(config, size, n=n, work=work),
        )
    single = len(models) == 1 and Path(models[0]).suffix.lower() != ".onnx"
    summary = evaluate(
        predictor, work, out_dir, split, checkpoint=models[0] if single else None, **options
    )
    summary["checkpoint"] = str(models[0]) if len(models) == 1 else [str(m) for m in models]
    if model_card:
        from ptxseg.evaluation.model_card import write_model_card

        summary["model_card"] = str(write_model_card(models[0], summary, out_dir))
        write_outputs(Path(out_dir), {EvalFolder.SUMMARY: summary})
    return summary
