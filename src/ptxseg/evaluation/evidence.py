"""What makes evaluate's numbers defensible, gathered in one place for `evaluate` and the
out-of-fold evaluation: intervals, subgroups, calibration, and the named operating points.

- At search time (`search_extras`): the named operating points (`named_points`) and the
  calibrator (`calibration`) fitted on the validation split, stored with the operating point.
- On the evaluated split (`gather_evidence`): every metric's 95% interval (`uncertainty`), the
  subgroup table and its forest plot (`subgroups`), the calibration of the raw and calibrated
  probability with the reliability diagram, and each stored operating point's sensitivity and
  specificity on these images, so a reader sees how a validation-chosen point holds on new ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg.evaluation import figures
from ptxseg.evaluation.named_points import Target, describe_target, search_named_points
from ptxseg.evaluation.score_calibration import calibration_report, fit_on_validation
from ptxseg.evaluation.subgroups import (
    csv_rows,
    read_subgroups_csv,
    subgroup_table,
    subgroup_values,
)
from ptxseg.evaluation.uncertainty import metric_intervals, patient_groups, share_interval
from ptxseg.model.operating_point import DEFAULT_NAME, OperatingPoint
from ptxseg.stats.bootstrap import DEFAULT_RESAMPLES, PatientBootstrap, ratio
from ptxseg.stats.calibration import Calibrator


@dataclass
class EvidenceSettings:
    """`--bootstrap` resamples (0: off), their seed, and `--subgroups` CSV."""

    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    subgroups_csv: str | Path | None = None

    def __post_init__(self) -> None:
        if int(self.resamples) != self.resamples or self.resamples < 0:
            raise ValueError(
                f"--bootstrap {self.resamples}: expected 0 (off) or a number of resamples, "
                "e.g. 2000"
            )
        if 0 < self.resamples < 100:
            raise ValueError(
                f"--bootstrap {self.resamples}: too few resamples for a 95% interval; use 2000 "
                "(or 0: off)"
            )
        if self.subgroups_csv is not None and not Path(self.subgroups_csv).is_file():
            raise FileNotFoundError(
                f"--subgroups {self.subgroups_csv} not found: expected a CSV of ImageId plus "
                "columns"
            )


def search_extras(
    probs: np.ndarray,
    truth: np.ndarray,
    op: OperatingPoint,
    targets: Sequence[Target],
    split: str,
    tta: str,
) -> tuple[dict[str, Any], str]:
    """The entries a search stores next to `op` (`operating_points`, `calibrator`) from the
    validation split's model-size probabilities, and a sentence about the calibrator."""
    flat = np.asarray(probs, np.float32).reshape(len(probs), -1)
    calibrator, note = fit_on_validation(flat.max(1), truth, split, tta, int(probs.shape[-1]))
    named = search_named_points(probs, truth, op, targets, split) if targets else None
    return {
        "operating_points": named,
        "calibrator": None if calibrator is None else calibrator.to_dict(),
    }, note


def _short_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass
class ScoredImages:
    """One scored split as the evidence reads it: the image ids, the scored per-image arrays
    and summary values, the model-size probabilities, the operating point, the manifest rows by
    image id, and `true_mask(i)`: the truth and pixel spacing of image i at the scored size
    (None: no size classes)."""

    image_ids: Sequence[str]
    per: Mapping[str, np.ndarray]
    values: Mapping[str, float]
    model_probs: np.ndarray
    op: OperatingPoint
    rows: Mapping[str, Mapping[str, str]]
    true_mask: Callable[[int], tuple[Any, float | None]]


def gather_evidence(
    scored: ScoredImages,
    named: Mapping[str, Any] | None,
    calibrator: Calibrator | None,
    settings: EvidenceSettings,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, list]]:
    """(summary entries, files, extra per-image columns) of one scored split, with the stored
    operating points `named` and the model's `calibrator`."""
    groups = patient_groups(scored.rows, scored.image_ids)
    b, seed = settings.resamples, settings.seed
    boot = PatientBootstrap(groups, max(b, 1), seed)
    truth = np.asarray(scored.per["truth_area"]) > 0
    scores = np.asarray(scored.per["max_prob"], float)

    extra_columns = None
    if settings.subgroups_csv is not None:
        extra_columns = read_subgroups_csv(settings.subgroups_csv, scored.image_ids)
    variables = subgroup_values(scored.image_ids, scored.rows, scored.true_mask, extra_columns)
    sub_rows, sub_summary = subgroup_table(variables, scored.per, groups, b, seed)
    cal_summary, cal_rows = calibration_report(scores, truth, calibrator, groups, b, seed)
    files = _evidence_files(sub_rows, cal_summary, cal_rows)
    columns: dict[str, list] = {
        "patient_group": [_short_hash(g) for g in groups],
        "calibrated_probability": [
            "" if calibrator is None else round(float(p), 6)
            for p in (calibrator.apply(scores) if calibrator is not None else scores)
        ],
        **{f"subgroup_{k}": list(v) for k, v in variables.items()},
    }
    summary = {
        "intervals": _interval_method(settings, boot, len(scored.image_ids)),
        "metric_intervals": metric_intervals(scored.per, scored.values, groups, b, seed),
        "operating_points": _point_rates(scored, named, boot, b),
        "calibration": cal_summary,
        "subgroups": dict(sub_summary, file="subgroups.csv", variables=list(variables)),
    }
    return summary, files, columns


def _point_rates(
    scored: ScoredImages, named: Mapping[str, Any] | None, boot: PatientBootstrap, b: int
) -> dict[str, Any]:
    """The main point and the named ones, each with its rates on these images."""
    points = {DEFAULT_NAME: {"operating_point": scored.op.to_dict(), "target": {}}}
    points.update({k: dict(v) for k, v in (named or {}).items()})
    for _name, entry in points.items():
        point = OperatingPoint.from_dict(entry["operating_point"])
        entry["description"] = describe_target(entry)
        entry["test"] = point_rates(point, scored.op, scored.per, scored.model_probs, boot, b)
    return points


def _evidence_files(
    sub_rows: list[dict[str, Any]], cal_summary: Mapping[str, Any], cal_rows: list[list[Any]]
) -> dict[str, Any]:
    return {
        "subgroups.csv": csv_rows(sub_rows),
        "subgroups.png": figures.forest_png(sub_rows),
        "calibration.csv": cal_rows,
        "reliability.png": figures.reliability_png(
            _points(cal_rows),
            {k: cal_summary[k]["ece"] for k in ("raw", "calibrated") if k in cal_summary},
        ),
    }


def _interval_method(
    settings: EvidenceSettings, boot: PatientBootstrap, n_images: int
) -> dict[str, Any]:
    b = settings.resamples
    return {
        "confidence": 0.95,
        "resamples": b,
        "seed": settings.seed,
        "n_images": n_images,
        "n_patients": boot.n_patients,
        "method": boot.describe() if b else "none (bootstrap off: --bootstrap 0)",
        "note": "shares of one image per patient get the Wilson score interval; each "
        "metric names its method",
    }


def _points(rows: list[list[Any]]) -> dict[str, list[dict[str, float]]]:
    header, out = rows[0], {}
    for row in rows[1:]:
        entry = dict(zip(header, row, strict=True))
        out.setdefault(entry["probability"], []).append(
            {k: float("nan") if entry[k] is None else float(entry[k]) for k in header[2:]}
        )
    return out


def point_rates(
    point: OperatingPoint,
    main: OperatingPoint,
    per: Mapping[str, np.ndarray],
    model_probs: np.ndarray,
    boot: PatientBootstrap,
    resamples: int,
) -> dict[str, Any]:
    """Sensitivity and specificity of the image-level decision of `point` on the scored images,
    with intervals. A kept image is positive when its mask is not empty: at full size that is
    `above_bottom` of the main point (the same `bottom`), else the model size decides."""
    truth = np.asarray(per["truth_area"]) > 0
    keep = np.asarray(point.keep(np.asarray(model_probs)), bool)
    if point.bottom == main.bottom and "above_bottom" in per:
        shows = np.asarray(per["above_bottom"], bool)
    else:
        shows = np.asarray(model_probs, np.float32).reshape(len(keep), -1).max(1) > point.bottom
    positive = keep & shows
    matrix = np.stack([truth, positive & truth, ~truth, ~positive & ~truth], 1).astype(float)
    sums = boot.sums(matrix)[0] if resamples else None
    out: dict[str, Any] = {"n_predicted_positive": int(positive.sum())}
    for name, num, den, successes, trials in (
        ("sensitivity", 1, 0, positive & truth, truth),
        ("specificity", 3, 2, ~positive & ~truth, ~truth),
    ):
        reps = None if sums is None else ratio(sums, num, den)
        out[name] = share_interval(boot, successes, trials, reps)
    return out
