"""Calibration in evaluate: fit a calibrator at search time, measure it on the evaluated split.

At search time (`evaluate --search`, or a model without an operating point) a `Calibrator` of the
image-level score (the highest pixel probability, the findings' `probability`) is fitted on the
validation split and stored with the operating point (`ptxseg.stats.calibration` says how it is
chosen). On the evaluated split, the raw score and the calibrated probability are each measured:
Brier score (with its patient-level bootstrap interval), ECE over equal-mass bins, and the points
of the reliability diagram (`calibration.csv`, `reliability.png`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ptxseg.stats.bootstrap import PatientBootstrap, percentile_interval, ratio
from ptxseg.stats.calibration import (
    DEFAULT_BINS,
    Calibrator,
    brier,
    expected_calibration_error,
    fit_calibrator,
    reliability,
)

CSV_COLUMNS = (
    "probability",
    "bin",
    "n",
    "mean_probability",
    "observed",
    "observed_ci_low",
    "observed_ci_high",
)


def fit_on_validation(
    scores: np.ndarray, truth: np.ndarray, split: str, tta: str, input_size: int
) -> tuple[Calibrator | None, str]:
    """(calibrator, sentence): the fitted calibrator, or None and why none could be fitted."""
    try:
        calibrator = fit_calibrator(
            scores,
            truth,
            fitted={
                "split": split,
                "tta": tta,
                "input_size": int(input_size),
                "score": "max_probability",
            },
        )
    except ValueError as err:
        return None, f"no calibrator: {err}"
    return calibrator, f"{calibrator.describe()}; chosen by 5-fold cross-validation (Brier)"


def calibration_report(
    scores: np.ndarray,
    truth: np.ndarray,
    calibrator: Calibrator | None,
    groups: Sequence,
    resamples: int,
    seed: int = 0,
    n_bins: int = DEFAULT_BINS,
) -> tuple[dict[str, Any], list[list[Any]]]:
    """(summary.json's `calibration`, the rows of calibration.csv) on the evaluated split."""
    scores = np.asarray(scores, float)
    truth = np.asarray(truth, bool)
    kinds = {"raw": scores}
    if calibrator is not None:
        kinds["calibrated"] = np.asarray(calibrator.apply(scores), float)
    boot = PatientBootstrap(groups, max(resamples, 1), seed)
    matrix = np.stack([np.ones(len(scores))] + [(p - truth) ** 2 for p in kinds.values()], 1)
    sums = boot.sums(matrix)[0] if resamples and len(scores) else None
    summary: dict[str, Any] = {
        "score": "max_probability: the highest pixel probability at the model's size",
        "calibrator": None if calibrator is None else calibrator.to_dict(),
        "calibrator_description": "none stored with this model"
        if calibrator is None
        else calibrator.describe(),
        "n_images": len(scores),
        "n_positive": int(truth.sum()),
        "bins": f"{n_bins} equal-mass bins",
    }
    rows: list[list[Any]] = [list(CSV_COLUMNS)]
    for k, (kind, p) in enumerate(kinds.items()):
        low, high = (None, None) if sums is None else percentile_interval(ratio(sums, k + 1, 0))
        points = reliability(p, truth, n_bins)
        summary[kind] = {
            "brier": {
                "value": brier(p, truth),
                "ci_low": low,
                "ci_high": high,
                "method": boot.describe() if sums is not None else "none (bootstrap off)",
                "n": len(p),
            },
            "ece": expected_calibration_error(p, truth, n_bins),
        }
        for b, point in enumerate(points):
            rows.append([kind, b] + [_round(point[c]) for c in CSV_COLUMNS[2:]])
    return summary, rows


def _round(x):
    return (
        x
        if isinstance(x, int)
        else (None if x is None or not np.isfinite(x) else round(float(x), 6))
    )


def read_reliability(rows: list[dict[str, str]]) -> dict[str, list[dict[str, float]]]:
    """calibration.csv rows (csv.DictReader) -> kind -> points."""
    out: dict[str, list[dict[str, float]]] = {}
    for row in rows:
        point = {}
        for key in CSV_COLUMNS[2:]:
            try:
                point[key] = float(row[key])
            except (TypeError, ValueError, KeyError):
                point[key] = float("nan")
        out.setdefault(row.get("probability", "raw"), []).append(point)
    return out
