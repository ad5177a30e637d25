"""Metrics of a trained model on one split of the work folder, and the files a report draws on.

`evaluate_checkpoint` runs the model over the cached split at the model's input size (optionally
with horizontal-flip test-time augmentation), decides the operating point (stored in the
checkpoint; searched on the validation split and stored when missing; command-line overrides on
top), and writes into the output folder:

- `per_image.csv`: one row per image (areas, Dice, IoU, maximum probability, detection score);
- `summary.json`: `metrics` maps each name to {value, kind (pooled / per-image / image-level),
  description}; the operating point and where it came from, the split, the checkpoint, counts
  and the all-empty baseline;
- `roc.csv`: the image-level ROC curve (fpr, tpr, thresholds);
- `panels.npz`: ~16 chosen images (best, worst, false positives, false negatives): `images`,
  `truths`, `probabilities` (float16), `masks` (the prediction at the operating point), `kinds`,
  `image_ids`, `dice`, for figure panels without rerunning the model;
- `probs-<split>.npz` (only when asked): every probability map of the split.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ptxseg import atomic
from ptxseg.evaluation.search import search_operating_point
from ptxseg.model.metrics import (
    METRIC_KINDS,
    SCORES,
    MetricAccumulator,
    OperatingPoint,
    roc_curve,
    store_operating_point,
    summarise,
)
from ptxseg.progress import progress_bar

TTA_MODES = ("none", "hflip")
PER_IMAGE_COLUMNS = (
    "image_id",
    "truth_area",
    "predicted_area",
    "dice",
    "iou",
    "max_probability",
    "score",
    "has_truth",
    "has_prediction",
)
PANEL_KINDS = ("best", "worst", "false_positive", "false_negative")


# --------------------------------------------------------------------------- running the model


@torch.inference_mode()
def predict_probabilities(
    model: nn.Module, images: torch.Tensor, tta: str = "none"
) -> torch.Tensor:
    """Sigmoid probabilities (B, 1, H, W) for images (B, 1, H, W) in [0, 1].

    With `tta="hflip"` the result is the mean of the plain probability and the probability of the
    horizontally flipped image, flipped back.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r}: expected one of {TTA_MODES}")
    prob = torch.sigmoid(model(images).float())
    if tta == "hflip":
        flipped = torch.sigmoid(model(images.flip(-1)).float()).flip(-1)
        prob = (prob + flipped) / 2
    return prob


@dataclass
class SplitPredictions:
    """The probabilities of one split at the model's input size, with truth and images."""

    split: str
    image_ids: list[str]
    probs: np.ndarray  # float32 (N, S, S)
    targets: np.ndarray  # uint8 (N, S, S), 0/1
    images: np.ndarray  # uint8 (N, S, S), memory-mapped from the cache


def collect_probabilities(
    model: nn.Module,
    work: str | os.PathLike,
    split: str,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    tta: str = "none",
    progress: bool = True,
) -> SplitPredictions:
    """Run `model` over the cached `split` at `model.input_size` and keep every probability map."""
    from torch.utils.data import DataLoader

    from ptxseg.data.dataset import SegmentationDataset

    size = int(model.input_size)
    dataset = SegmentationDataset(work, split, size)  # names `prepare --size` when missing
    if len(dataset) == 0:
        raise ValueError(f"split {split!r} in {work} has no images: nothing to evaluate")
    images, masks = dataset.arrays()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    probs = np.empty((len(dataset), size, size), np.float32)
    model = model.to(device).eval()
    done = 0
    with progress_bar(progress, transient=True) as bar:
        task = bar.add_task(f"{split}: predicting", total=len(dataset))
        for batch in loader:
            prob = predict_probabilities(model, batch["image"].to(device), tta)
            n = prob.shape[0]
            probs[done : done + n] = prob[:, 0].cpu().numpy()
            done += n
            bar.advance(task, n)
    return SplitPredictions(split, list(dataset.image_ids), probs, np.asarray(masks), images)


def _accumulate(pred: SplitPredictions, op: OperatingPoint, score: str) -> MetricAccumulator:
    acc = MetricAccumulator(op, score=score)
    for start in range(0, len(pred.probs), 64):
        acc.update(pred.probs[start : start + 64], pred.targets[start : start + 64])
    return acc


# --------------------------------------------------------------------------- operating point


def apply_overrides(
    op: OperatingPoint,
    threshold: float | None = None,
    top: float | None = None,
    bottom: float | None = None,
    min_area: int | None = None,
) -> OperatingPoint:
    """`op` with command-line values on top: a plain `threshold` sets top = bottom (and no area
    gate unless `min_area` is given); `top`, `bottom`, `min_area` replace single fields."""
    if threshold is not None and (top is not None or bottom is not None):
        raise ValueError(
            "give either a plain threshold or top/bottom, not both: --threshold sets top and bottom"
        )
    fields = op.to_dict()
    if threshold is not None:
        fields.update(top=threshold, bottom=threshold, min_area=0)
    for name, value in (("top", top), ("bottom", bottom), ("min_area", min_area)):
        if value is not None:
            fields[name] = value
    return OperatingPoint.from_dict(fields)


def _fully_overridden(overrides: Mapping[str, Any]) -> bool:
    given = {k for k, v in overrides.items() if v is not None}
    return "threshold" in given or {"top", "bottom", "min_area"} <= given


# --------------------------------------------------------------------------- outputs


def _json_ready(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def per_image_rows(image_ids: list[str], per: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Rows of `per_image.csv` from `MetricAccumulator.per_image()`."""
    return [
        {
            "image_id": image_id,
            "truth_area": int(per["truth_area"][i]),
            "predicted_area": int(per["predicted_area"][i]),
            "dice": round(float(per["dice"][i]), 6),
            "iou": round(float(per["iou"][i]), 6),
            "max_probability": round(float(per["max_prob"][i]), 6),
            "score": round(float(per["score"][i]), 6),
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
        else:
            raise ValueError(f"no writer for output {name!r}")
        written[name] = str(path)
    return written


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> list[list[Any]]:
    return [list(columns)] + [[row[c] for c in columns] for row in rows]


# --------------------------------------------------------------------------- evaluation


def evaluate(
    model: nn.Module,
    work: str | os.PathLike,
    out_dir: str | os.PathLike,
    split: str = "test",
    *,
    checkpoint: str | os.PathLike | None = None,
    tta: str = "none",
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    overrides: Mapping[str, Any] | None = None,
    search: bool | None = None,
    save_probs: bool = False,
    score: str = "max_prob",
    n_panels: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `model` on `split` and write the outputs to `out_dir`; returns the summary.

    The operating point is the model's stored one; it is searched on the validation split when
    there is none (`search=None`) or always (`search=True`, never with `False`), unless the
    overrides fully specify it. A searched point is stored in `checkpoint` when given. Overrides
    (`threshold`, `top`, `bottom`, `min_area`) apply last.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r}: expected one of {TTA_MODES}")
    if score not in SCORES:
        raise ValueError(f"unknown detection score {score!r}: expected one of {SCORES}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(overrides) - {"threshold", "top", "bottom", "min_area"}
    if unknown:
        raise ValueError(f"unknown operating point overrides {sorted(unknown)}")
    apply_overrides(OperatingPoint(), **overrides)  # fail on bad values before any work
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"output {out_dir} exists and is not a folder: choose another")

    stored = getattr(model, "operating_point", None)
    if isinstance(stored, Mapping):
        stored = OperatingPoint.from_dict(stored)
    do_search = (stored is None if search is None else search) and not (
        search is None and _fully_overridden(overrides)
    )
    run = {"batch_size": batch_size, "device": device, "tta": tta, "progress": progress}
    searched = None
    val_pred = None
    if do_search:
        val_pred = collect_probabilities(model, work, "val", **run)
        searched = search_operating_point(val_pred.probs, val_pred.targets)
        op = searched.operating_point
        val_metrics = _accumulate(val_pred, op, score).compute()
        source = "searched on the val split"
        if checkpoint is not None:
            store_operating_point(
                checkpoint,
                op,
                metrics={**val_metrics, "split": "val", "tta": tta, "detection_score": score},
            )
            source += " and stored in the checkpoint"
        model.operating_point = op
    elif stored is not None:
        op, source = stored, "checkpoint"
    else:
        op, source = OperatingPoint(), "default (plain threshold 0.5; none stored, search off)"
    if overrides:
        op = apply_overrides(op, **overrides)
        source += "; overridden on the command line: " + ", ".join(sorted(overrides))

    if val_pred is not None and split == "val":
        pred = val_pred
    else:
        pred = collect_probabilities(model, work, split, **run)
    acc = _accumulate(pred, op, score)
    per = acc.per_image()
    values = summarise(per["tp"], per["fp"], per["fn"], per["tn"], per["score"])
    fpr, tpr, thresholds = roc_curve(per["truth_area"] > 0, per["score"])

    summary = {
        "split": split,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "work": str(work),
        "encoder": getattr(model, "encoder", None),
        "input_size": int(model.input_size),
        "tta": tta,
        "detection_score": score,
        "operating_point": op.to_dict(),
        "operating_point_description": op.describe(),
        "operating_point_source": source,
        "operating_point_search": None if searched is None else searched.to_dict(),
        "counts": {k: values[k] for k in values if k.startswith("n_")},
        "competition_dice": values["dice_per_image"],
        "empty_baseline_competition_dice": values["empty_baseline_dice_per_image"],
        "metrics": {
            name: {"value": values[name], "kind": kind, "description": text}
            for name, (kind, text) in METRIC_KINDS.items()
        },
    }
    files: dict[str, Any] = {
        "per_image.csv": _table(per_image_rows(pred.image_ids, per), PER_IMAGE_COLUMNS),
        "roc.csv": [["fpr", "tpr", "threshold"]]
        + [
            [_fmt(f), _fmt(t), "inf" if math.isinf(h) else _fmt(h)]
            for f, t, h in zip(fpr, tpr, thresholds, strict=True)
        ],
        "panels.npz": _panels_arrays(pred, per, op, n_panels),
    }
    if save_probs:
        for p in {id(x): x for x in (val_pred, pred) if x is not None}.values():
            files[f"probs-{p.split}.npz"] = {
                "image_ids": np.array(p.image_ids, dtype=str),
                "probabilities": p.probs.astype(np.float16),
                "truths": p.targets.astype(np.uint8),
            }
    summary["files"] = sorted([*files, "summary.json"])
    files["summary.json"] = _json_ready(summary)
    write_outputs(out_dir, files)
    return files["summary.json"]


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.6g}"


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    work: str | os.PathLike,
    out_dir: str | os.PathLike,
    split: str = "test",
    device: str = "cpu",
    **options: Any,
) -> dict[str, Any]:
    """Load the model from `checkpoint` and `evaluate` it; see there for the options."""
    from ptxseg.model.unet import load_model

    model = load_model(checkpoint, device=device)
    return evaluate(model, work, out_dir, split, checkpoint=checkpoint, device=device, **options)
