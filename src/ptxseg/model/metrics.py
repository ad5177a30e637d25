"""Segmentation and detection metrics with one definition for training, evaluation and reports.

Everything is built from per-image confusion counts (TP, FP, FN, TN). The rule for empty masks:
Dice and IoU of an empty truth with an empty prediction are 1, of an empty truth with a non-empty
prediction (or the reverse) 0. Metrics come in two kinds that can differ a lot on this data:

- **pooled** (micro): counts are summed over all pixels of the split, then one ratio is taken;
- **per-image** (macro): one value per image, then the mean. The SIIM-ACR competition metric is
  the per-image mean Dice (`dice_per_image`).

Image-level detection (is there a pneumothorax at all?) uses "the prediction is non-empty" as the
decision and a per-image score (maximum probability or predicted area) for the ROC curve.

How probabilities become masks is `ptxseg.model.operating_point`; the accumulator takes one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

SCORES = ("max_prob", "area")
"""Per-image detection scores: the maximum probability, or the predicted area in pixels."""

METRIC_KINDS: dict[str, tuple[str, str]] = {
    "dice_per_image": ("per-image", "competition metric: mean per-image Dice, empty/empty = 1"),
    "iou_per_image": ("per-image", "mean per-image IoU, empty/empty = 1"),
    "pixel_accuracy_per_image": ("per-image", "mean per-image pixel accuracy"),
    "dice_positive_per_image": ("per-image", "mean Dice over images with a pneumothorax"),
    "iou_positive_per_image": ("per-image", "mean IoU over images with a pneumothorax"),
    "dice_pooled": ("pooled", "Dice over all pixels of the split"),
    "iou_pooled": ("pooled", "IoU over all pixels of the split"),
    "pixel_accuracy_pooled": ("pooled", "pixel accuracy over all pixels of the split"),
    "sensitivity": ("image-level", "share of positive images with a non-empty prediction"),
    "specificity": ("image-level", "share of negative images with an empty prediction"),
    "ppv": (
        "image-level",
        "positive predictive value: share of images with pneumothorax among non-empty predictions",
    ),
    "npv": (
        "image-level",
        "negative predictive value: share of images without pneumothorax among empty predictions",
    ),
    "roc_auc": ("image-level", "ROC AUC of the per-image score against 'has pneumothorax'"),
    "empty_baseline_dice_per_image": (
        "per-image",
        "competition metric of predicting every mask empty (= share of negative images)",
    ),
}
"""What each key of `summarise` means: (kind, description); kind is pooled, per-image or
image-level."""


# --------------------------------------------------------------------------- counts


def as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        if not x.flags.writeable:  # e.g. a read-only memory map; torch wants writable memory
            x = np.array(x)
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def batched(x: torch.Tensor, name: str) -> torch.Tensor:
    """(H, W), (N, H, W) or (N, 1, H, W) -> (N, H*W)."""
    if x.ndim == 2:
        return x.reshape(1, -1)
    if x.ndim == 3 or (x.ndim == 4 and x.shape[1] == 1):
        return x.reshape(x.shape[0], -1)
    raise ValueError(
        f"{name} has shape {tuple(x.shape)}: expected (H, W), (N, H, W) or (N, 1, H, W)"
    )


def _as_mask(x: Any, name: str) -> torch.Tensor:
    """A boolean (N, P) view of a mask given as bool or 0/1 numbers; anything else is an error."""
    t = batched(as_tensor(x, name), name)
    if t.dtype == torch.bool:
        return t
    if t.numel() and bool(((t != 0) & (t != 1)).any()):
        raise ValueError(
            f"{name} has values other than 0 and 1 (range {float(t.min()):g}..{float(t.max()):g}): "
            "expected a binary mask; binarise probabilities with an OperatingPoint first"
        )
    return t != 0


def confusion_counts(
    pred: Any, target: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-image (TP, FP, FN, TN) pixel counts of binary masks, as int64 arrays of length N.

    `pred` and `target` are numpy arrays or torch tensors (any device) of the same shape:
    (H, W), (N, H, W) or (N, 1, H, W), boolean or 0/1.
    """
    p, t = _as_mask(pred, "prediction"), _as_mask(target, "target")
    if p.shape != t.shape:
        raise ValueError(
            f"prediction and target shapes differ: {tuple(as_tensor(pred, 'p').shape)} vs "
            f"{tuple(as_tensor(target, 't').shape)}; expected masks of the same size"
        )
    t = t.to(p.device)
    tp = (p & t).sum(1)
    fp = (p & ~t).sum(1)
    fn = (~p & t).sum(1)
    tn = p.shape[1] - tp - fp - fn
    return tuple(c.cpu().numpy().astype(np.int64) for c in (tp, fp, fn, tn))  # type: ignore[return-value]


def count_stats(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Summed TP, FP, FN, TN and the sum of per-image Dice of boolean batches, on their device.

    For a training loop that must not wait for the device: no transfer to the host and no value
    check (both must be bool tensors of shape (N, ...)). Returns float64 (5,) with the empty rule
    of `dice_scores` (empty truth and empty prediction: Dice 1).
    """
    p, t = pred.reshape(pred.shape[0], -1), target.reshape(target.shape[0], -1)
    tp = (p & t).sum(1)
    fp = (p & ~t).sum(1)
    fn = (~p & t).sum(1)
    tn = p.shape[1] - tp - fp - fn
    den = (2 * tp + fp + fn).double()
    dice = torch.where(den > 0, 2 * tp.double() / den.clamp_min(1), torch.ones_like(den))
    return torch.cat(
        [torch.stack([tp.sum(), fp.sum(), fn.sum(), tn.sum()]).double(), dice.sum()[None]]
    )


# --------------------------------------------------------------------------- formulas


def _ratio(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, float(empty))
    np.divide(num, den, out=out, where=den > 0)
    return out


def dice_scores(tp: Any, fp: Any, fn: Any, empty: float = 1.0) -> np.ndarray:
    """Dice 2TP / (2TP + FP + FN) per entry; `empty` where truth and prediction are both empty."""
    tp = np.asarray(tp)
    return _ratio(2 * tp, 2 * tp + np.asarray(fp) + np.asarray(fn), empty)


def iou_scores(tp: Any, fp: Any, fn: Any, empty: float = 1.0) -> np.ndarray:
    """IoU TP / (TP + FP + FN) per entry; `empty` where truth and prediction are both empty."""
    tp = np.asarray(tp)
    return _ratio(tp, tp + np.asarray(fp) + np.asarray(fn), empty)


def pixel_accuracy_scores(tp: Any, fp: Any, fn: Any, tn: Any) -> np.ndarray:
    """(TP + TN) / all pixels, per entry."""
    right = np.asarray(tp) + np.asarray(tn)
    return _ratio(right, right + np.asarray(fp) + np.asarray(fn), 1.0)


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else math.nan


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(xs) != 0) + 1]
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(labels: Any, scores: Any) -> float:
    """ROC AUC from ranks (Mann-Whitney U; ties count half); NaN when only one class is present."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with "positive" meaning score >= threshold.

    Thresholds run from +inf (nothing positive) down to the lowest score, one per distinct score;
    a rate is NaN when its class is absent.
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1] if len(s) else np.array([], int)
    tps = np.cumsum(y)[last].astype(np.float64)
    fps = (last + 1) - tps
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    thresholds = np.r_[np.inf, s[last]]
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = fps / fps[-1] if fps[-1] > 0 else np.full_like(fps, np.nan)
        tpr = tps / tps[-1] if tps[-1] > 0 else np.full_like(tps, np.nan)
    return fpr, tpr, thresholds


def summarise(tp: Any, fp: Any, fn: Any, tn: Any, scores: Any | None = None) -> dict[str, float]:
    """All metrics of a split from per-image counts (and per-image detection scores).

    Keys are described in `METRIC_KINDS`; counts `n_images`, `n_positive`, `n_negative`,
    `n_predicted_positive` come along. Undefined values (no positive images, one class) are NaN.
    """
    tp, fp, fn, tn = (np.asarray(c, dtype=np.int64) for c in (tp, fp, fn, tn))
    truth = (tp + fn) > 0
    predicted = (tp + fp) > 0
    dice = dice_scores(tp, fp, fn)
    iou = iou_scores(tp, fp, fn)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    out = {
        "dice_per_image": _mean(dice),
        "iou_per_image": _mean(iou),
        "pixel_accuracy_per_image": _mean(pixel_accuracy_scores(tp, fp, fn, tn)),
        "dice_positive_per_image": _mean(dice[truth]),
        "iou_positive_per_image": _mean(iou[truth]),
        "dice_pooled": float(dice_scores(tp.sum(), fp.sum(), fn.sum())),
        "iou_pooled": float(iou_scores(tp.sum(), fp.sum(), fn.sum())),
        "pixel_accuracy_pooled": float(
            pixel_accuracy_scores(tp.sum(), fp.sum(), fn.sum(), tn.sum())
        )
        if len(tp)
        else math.nan,
        "sensitivity": float((predicted & truth).sum() / n_pos) if n_pos else math.nan,
        "specificity": float((~predicted & ~truth).sum() / n_neg) if n_neg else math.nan,
        "ppv": float((predicted & truth).sum() / predicted.sum()) if predicted.any() else math.nan,
        "npv": float((~predicted & ~truth).sum() / (~predicted).sum())
        if (~predicted).any()
        else math.nan,
        "roc_auc": roc_auc(truth, scores) if scores is not None else math.nan,
        "empty_baseline_dice_per_image": n_neg / len(tp) if len(tp) else math.nan,
        "n_images": len(tp),
        "n_positive": n_pos,
        "n_negative": n_neg,
        "n_predicted_positive": int(predicted.sum()),
    }
    if not len(tp):
        out["dice_pooled"] = out["iou_pooled"] = math.nan
    return out


# --------------------------------------------------------------------------- checks


def check_probability(prob: torch.Tensor, name: str = "probability") -> None:
    """Raise ValueError unless all values are in [0, 1] (catches logits passed by mistake)."""
    if prob.dtype == torch.bool or not prob.numel():
        return
    lo, hi = float(prob.min()), float(prob.max())
    if lo < 0.0 or hi > 1.0 or math.isnan(lo) or math.isnan(hi):
        raise ValueError(
            f"{name} values range {lo:g}..{hi:g}: expected probabilities in [0, 1]; "
            "apply torch.sigmoid to model logits first"
        )


# --------------------------------------------------------------------------- accumulator


class MetricAccumulator:
    """Collects per-image counts batch by batch, so training and evaluation share one definition.

    `update(prob_or_mask, target)` takes a batch of probabilities in [0, 1] (binarised with the
    operating point) or of boolean masks, plus 0/1 targets; `compute()` returns `summarise`'s dict.
    """

    def __init__(self, operating_point: Any = None, score: str = "max_prob"):
        if score not in SCORES:
            raise ValueError(f"unknown detection score {score!r}: expected one of {SCORES}")
        self.operating_point = operating_point  # anything with apply(prob); None: plain 0.5
        self.score = score
        self.reset()

    def reset(self) -> None:
        self._parts: dict[str, list[np.ndarray]] = {
            k: [] for k in ("tp", "fp", "fn", "tn", "max_prob")
        }

    def __len__(self) -> int:
        return int(sum(len(x) for x in self._parts["tp"]))

    def update(self, prob_or_mask: Any, target: Any) -> None:
        t = as_tensor(prob_or_mask, "probability")
        if t.dtype == torch.bool:
            mask = t
            max_prob = batched(t, "mask").any(1).to(torch.float64)
        else:
            check_probability(t)
            mask = self.operating_point.apply(t) if self.operating_point is not None else t > 0.5
            max_prob = batched(t, "probability").amax(1).to(torch.float64)
        counts = confusion_counts(mask, target)
        for key, value in zip(("tp", "fp", "fn", "tn"), counts, strict=True):
            self._parts[key].append(value)
        self._parts["max_prob"].append(max_prob.cpu().numpy())

    def per_image(self) -> dict[str, np.ndarray]:
        """Per-image arrays: tp, fp, fn, tn, truth_area, predicted_area, dice, iou, max_prob,
        score."""
        d = {
            k: np.concatenate(v) if v else np.zeros(0, np.float64 if k == "max_prob" else np.int64)
            for k, v in self._parts.items()
        }
        d["truth_area"] = d["tp"] + d["fn"]
        d["predicted_area"] = d["tp"] + d["fp"]
        d["dice"] = dice_scores(d["tp"], d["fp"], d["fn"])
        d["iou"] = iou_scores(d["tp"], d["fp"], d["fn"])
        d["score"] = (
            d["max_prob"] if self.score == "max_prob" else d["predicted_area"].astype(np.float64)
        )
        return d

    def compute(self) -> dict[str, float]:
        d = self.per_image()
        return summarise(d["tp"], d["fp"], d["fn"], d["tn"], d["score"])
