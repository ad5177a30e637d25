"""The 95% intervals of evaluate's numbers: which method each metric gets, and its n.

Every metric of `model.metrics.summarise` is a ratio of two sums over images (a mean Dice, a
pooled Dice, a share of images) or the ROC AUC. Its interval comes from the patient-level
bootstrap (`ptxseg.stats.bootstrap`): the images of a patient are resampled together. A share of
images (sensitivity, specificity, PPV, NPV) whose images are one per patient is a count of
independent trials: it gets the Wilson score interval instead, which keeps its coverage at small
n and at shares of 0 or 1 where a bootstrap collapses to a point. Each entry names its method.
`resamples=0` turns the bootstrap off (Wilson intervals, which cost nothing, stay).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ptxseg.stats.bootstrap import PatientBootstrap, percentile_interval, ratio
from ptxseg.stats.intervals import WILSON, wilson

NO_INTERVAL = "none (bootstrap off: --bootstrap 0)"
COLUMNS = (
    "one",
    "dice",
    "iou",
    "pixel_accuracy",
    "truth",
    "dice_truth",
    "iou_truth",
    "two_tp",
    "dice_den",
    "tp",
    "iou_den",
    "right",
    "pixels",
    "true_positive_image",
    "negative",
    "true_negative_image",
    "predicted",
    "predicted_empty",
)
RATIOS: dict[str, tuple[str, str]] = {
    "dice_per_image": ("dice", "one"),
    "iou_per_image": ("iou", "one"),
    "pixel_accuracy_per_image": ("pixel_accuracy", "one"),
    "dice_positive_per_image": ("dice_truth", "truth"),
    "iou_positive_per_image": ("iou_truth", "truth"),
    "dice_pooled": ("two_tp", "dice_den"),
    "iou_pooled": ("tp", "iou_den"),
    "pixel_accuracy_pooled": ("right", "pixels"),
    "sensitivity": ("true_positive_image", "truth"),
    "specificity": ("true_negative_image", "negative"),
    "ppv": ("true_positive_image", "predicted"),
    "npv": ("true_negative_image", "predicted_empty"),
    "empty_baseline_dice_per_image": ("negative", "one"),
}
"""metric -> (numerator, denominator) columns of `image_matrix`."""
PROPORTIONS = ("sensitivity", "specificity", "ppv", "npv", "empty_baseline_dice_per_image")


def image_matrix(per: Mapping[str, np.ndarray]) -> np.ndarray:
    """(images, len(COLUMNS)): the per-image quantities every metric is a ratio of sums of."""
    tp, fp, fn, tn = (np.asarray(per[k], np.float64) for k in ("tp", "fp", "fn", "tn"))
    truth = (tp + fn) > 0
    pred = (tp + fp) > 0
    dice, iou = np.asarray(per["dice"], float), np.asarray(per["iou"], float)
    pixels = tp + fp + fn + tn
    accuracy = np.divide(tp + tn, pixels, out=np.ones_like(pixels), where=pixels > 0)
    columns = {
        "one": np.ones_like(tp),
        "dice": dice,
        "iou": iou,
        "pixel_accuracy": accuracy,
        "truth": truth,
        "dice_truth": dice * truth,
        "iou_truth": iou * truth,
        "two_tp": 2 * tp,
        "dice_den": 2 * tp + fp + fn,
        "tp": tp,
        "iou_den": tp + fp + fn,
        "right": tp + tn,
        "pixels": pixels,
        "true_positive_image": pred & truth,
        "negative": ~truth,
        "true_negative_image": ~pred & ~truth,
        "predicted": pred,
        "predicted_empty": ~pred,
    }
    return np.stack([np.asarray(columns[c], np.float64) for c in COLUMNS], axis=1)


def col(name: str) -> int:
    return COLUMNS.index(name)


def one_image_per_patient(boot: PatientBootstrap, images: np.ndarray) -> bool:
    """Whether the images selected by the boolean `images` come from distinct patients."""
    chosen = boot.patient[np.asarray(images, bool)]
    return len(chosen) == len(np.unique(chosen))


def share_interval(
    boot: PatientBootstrap | None,
    successes: np.ndarray,
    trials: np.ndarray,
    replicates: np.ndarray | None = None,
) -> dict[str, Any]:
    """A share of images (`successes` among `trials`, boolean per image) with its interval:
    Wilson where the trials are one image per patient (or no patient is known), else the
    bootstrap `replicates` of the share (None: no interval)."""
    successes, trials = np.asarray(successes, bool), np.asarray(trials, bool)
    k, n = int((successes & trials).sum()), int(trials.sum())
    value = k / n if n else float("nan")
    if boot is None or one_image_per_patient(boot, trials):
        low, high = wilson(k, n)
        return _entry(value, low, high, WILSON, n)
    if replicates is None:
        return _entry(value, None, None, NO_INTERVAL, n)
    low, high = percentile_interval(replicates)
    return _entry(value, low, high, boot.describe(), n)


def _entry(value, low, high, method: str, n: int) -> dict[str, Any]:
    def clean(x):
        return None if x is None or not np.isfinite(x) else float(x)

    return {
        "value": clean(value),
        "ci_low": clean(low),
        "ci_high": clean(high),
        "method": method,
        "n": int(n),
    }


def metric_intervals(
    per: Mapping[str, np.ndarray],
    values: Mapping[str, float],
    groups: Sequence,
    resamples: int,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """name -> {value, ci_low, ci_high, method, n} for every metric of `values` (summarise's
    dict of `per`): `groups` are the images' patient keys; `resamples` 0 skips the bootstrap."""
    boot = PatientBootstrap(groups, max(resamples, 1), seed)
    matrix = image_matrix(per)
    truth = matrix[:, col("truth")] > 0
    sums = auc = None
    if resamples:
        with_auc = "roc_auc" in values
        score = np.asarray(per["score"], float) if with_auc else None
        all_sums, aucs = boot.replicates(matrix, truth, score)
        sums, auc = all_sums[0], (aucs[0] if with_auc else None)
    out: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        if name in PROPORTIONS:
            num, den = RATIOS[name]
            reps = None if sums is None else ratio(sums, col(num), col(den))
            entry = share_interval(
                boot,
                matrix[:, col(num)] > 0,
                matrix[:, col(den)] > 0,
                reps,
            )
            entry["value"] = _entry(value, None, None, "", 0)["value"]
            out[name] = entry
        elif name in RATIOS:
            num, den = RATIOS[name]
            n = int((matrix[:, col(den)] > 0).sum()) if den in ("truth", "one") else len(matrix)
            if sums is None:
                out[name] = _entry(value, None, None, NO_INTERVAL, n)
            else:
                low, high = percentile_interval(ratio(sums, col(num), col(den)))
                out[name] = _entry(value, low, high, boot.describe(), n)
        elif name == "roc_auc":
            n = len(truth)
            if auc is None:
                out[name] = _entry(value, None, None, NO_INTERVAL, n)
            else:
                low, high = percentile_interval(auc)
                out[name] = _entry(value, low, high, boot.describe(), n)
    return out


def patient_groups(rows: Mapping[str, Mapping[str, str]], image_ids: Sequence[str]) -> list[str]:
    """Each image's patient key from manifest rows (`patient_id`); an image without one is its
    own patient."""
    keys = []
    for image_id in image_ids:
        patient = (rows.get(image_id) or {}).get("patient_id") or ""
        keys.append(f"patient:{patient}" if patient else f"image:{image_id}")
    return keys


def format_interval(entry: Mapping[str, Any] | None, digits: int = 3) -> str:
    """'0.812 [0.751, 0.866]' (or just the value when there is no interval)."""
    if not entry or entry.get("value") is None:
        return "–"
    text = f"{entry['value']:.{digits}f}"
    if entry.get("ci_low") is not None and entry.get("ci_high") is not None:
        text += f" [{entry['ci_low']:.{digits}f}, {entry['ci_high']:.{digits}f}]"
    return text
