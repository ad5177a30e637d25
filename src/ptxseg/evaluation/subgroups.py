"""Metrics by subgroup, with intervals, and the differences that survive a Holm correction.

The subgroups of an evaluated split (`subgroups.csv`):

- sex, age band ([0, 18), [18, 40), [40, 60), [60, 80), >= 80) and view position, from the
  manifest (the DICOM header);
- the size class of the true pneumothorax by BTS and by ACCP, estimated from the true mask as
  the findings estimate a predicted one (`inference.size_classes`): the "large against small"
  split of clearance summaries; images without pneumothorax form their own level;
- the image width (<= 1024, <= 2048, > 2048 px) and the pixel spacing (terciles of the split);
- any column of a user's CSV (`--subgroups CSV`: ImageId plus columns), e.g. a chest drain.

Each level gets n, patients, positives, and the competition Dice, sensitivity, specificity and
ROC AUC with 95% intervals (`evaluation.uncertainty`: bootstrap over patients, Wilson for shares
of one image per patient). A level of fewer than `MIN_IMAGES` images is shown but flagged and not
tested. The tests: within a variable, each level against the rest of the split (a variable of
two levels: one test between them), for the competition Dice, sensitivity and specificity, each
a paired difference over the same resamples. All tests of the table form one family: a
difference is called out only when its Holm-adjusted p-value is below 0.05, and the table says
how many tests were made.
"""

from __future__ import annotations

import contextlib
import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg.evaluation.uncertainty import share_interval
from ptxseg.stats.bootstrap import (
    PatientBootstrap,
    bootstrap_p_value,
    percentile_interval,
    ratio,
    weighted_auc,
)
from ptxseg.stats.intervals import holm

MIN_IMAGES = 10
ALPHA = 0.05
UNKNOWN = "unknown"
NO_PNEUMOTHORAX = "no pneumothorax"
AGE_BANDS = ((0, 18, "0-17"), (18, 40, "18-39"), (40, 60, "40-59"), (60, 80, "60-79"))
WIDTH_BINS = ((1024, "<= 1024 px"), (2048, "1025-2048 px"), (math.inf, "> 2048 px"))
BUILT_IN = ("sex", "age", "view", "size_bts", "size_accp", "width", "pixel_spacing")
TESTED = ("competition_dice", "sensitivity", "specificity")
MATRIX = ("one", "dice", "truth", "true_positive_image", "negative", "true_negative_image")
STATS = {
    "competition_dice": ("dice", "one"),
    "sensitivity": ("true_positive_image", "truth"),
    "specificity": ("true_negative_image", "negative"),
}
METRICS = (*TESTED, "auc")


# --------------------------------------------------------------------------- the values


def age_band(text: str | None) -> str:
    try:
        age = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return UNKNOWN
    for low, high, label in AGE_BANDS:
        if low <= age < high:
            return label
    return "80+" if age >= 80 else UNKNOWN


def width_bin(text: str | None) -> str:
    try:
        width = int(float(text))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return UNKNOWN
    return next(label for edge, label in WIDTH_BINS if width <= edge)


def spacing_bins(values: Sequence[str | None]) -> list[str]:
    """Terciles of the split's pixel spacings (fewer bins when values repeat)."""
    numbers = []
    for v in values:
        try:
            numbers.append(float(v))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            numbers.append(math.nan)
    x = np.asarray(numbers)
    known = x[np.isfinite(x)]
    if not len(known):
        return [UNKNOWN] * len(x)
    edges = np.unique(np.quantile(known, [1 / 3, 2 / 3]))
    labels = []
    for value in x:
        if not np.isfinite(value):
            labels.append(UNKNOWN)
            continue
        k = int(np.searchsorted(edges, value, side="left"))
        low = known.min() if k == 0 else edges[k - 1]
        high = edges[k] if k < len(edges) else known.max()
        labels.append(f"{low:.3f}-{high:.3f} mm" if k else f"<= {high:.3f} mm")
    return labels


def size_classes(mask: np.ndarray, spacing: float | None, view: str) -> tuple[str, str]:
    """(BTS, ACCP) class of a true mask: large, small, 'not measurable', or no pneumothorax."""
    if not mask.any():
        return NO_PNEUMOTHORAX, NO_PNEUMOTHORAX
    from ptxseg.inference.findings import side_convention
    from ptxseg.inference.size_classes import estimate_sizes

    frontal, _ = side_convention(view)
    sizes = estimate_sizes(mask, [spacing, spacing] if spacing else None, measurable=frontal)
    return (
        sizes["bts_class_est"] or "not measurable",
        sizes["accp_class_est"] or "not measurable",
    )


def read_subgroups_csv(path: str | Path, image_ids: Sequence[str]) -> dict[str, list[str]]:
    """A user's subgroup columns (ImageId plus columns), one value per image of `image_ids`
    (`unknown` for images it does not list). A file without ImageId is a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"--subgroups {path} not found: expected a CSV with ImageId and columns"
        )
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    if "ImageId" not in fields:
        raise ValueError(
            f"--subgroups {path}: no ImageId column (found {fields}); expected ImageId plus columns"
        )
    columns = [c for c in fields if c != "ImageId"]
    if not columns:
        raise ValueError(f"--subgroups {path} has no column besides ImageId")
    by_id = {r["ImageId"]: r for r in rows}
    return {c: [(by_id.get(i) or {}).get(c) or UNKNOWN for i in image_ids] for c in columns}


def subgroup_values(
    image_ids: Sequence[str],
    rows: Mapping[str, Mapping[str, str]],
    true_mask,
    extra: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, list[str]]:
    """variable -> each image's level. `rows` are manifest rows by image id; `true_mask(i)` the
    (mask, pixel spacing in mm) of image i at the size it is scored at (None: no size classes)."""

    def get(i, key):
        return (rows.get(image_ids[i]) or {}).get(key) or ""

    n = len(image_ids)
    values: dict[str, list[str]] = {
        "sex": [get(i, "patient_sex").upper() or UNKNOWN for i in range(n)],
        "age": [age_band(get(i, "patient_age")) for i in range(n)],
        "view": [get(i, "view_position").upper() or UNKNOWN for i in range(n)],
    }
    if true_mask is not None:
        classes = [size_classes(*true_mask(i), get(i, "view_position")) for i in range(n)]
        values["size_bts"] = [c[0] for c in classes]
        values["size_accp"] = [c[1] for c in classes]
    values["width"] = [width_bin(get(i, "width")) for i in range(n)]
    values["pixel_spacing"] = spacing_bins([get(i, "pixel_spacing") for i in range(n)])
    for name, column in (extra or {}).items():
        if name in values:
            name = f"user_{name}"
        values[name] = [str(v) for v in column]
    return values


# --------------------------------------------------------------------------- the table


def _matrix(per: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    truth = np.asarray(per["truth_area"]) > 0
    pred = np.asarray(per["predicted_area"]) > 0
    columns = {
        "one": np.ones(len(truth)),
        "dice": np.asarray(per["dice"], float),
        "truth": truth,
        "true_positive_image": truth & pred,
        "negative": ~truth,
        "true_negative_image": ~truth & ~pred,
    }
    return np.stack([np.asarray(columns[c], float) for c in MATRIX], 1), truth, pred


def _ratio(sums: np.ndarray, stat: str) -> np.ndarray:
    num, den = STATS[stat]
    return ratio(sums, MATRIX.index(num), MATRIX.index(den))


@dataclass
class _Scored:
    """What every level's row reads: the per-image matrix, truth and score, the bootstrap, and
    its replicate sums (whole split first, then each level) and AUCs (each level); None when
    the bootstrap is off."""

    matrix: np.ndarray
    truth: np.ndarray
    scores: np.ndarray
    boot: PatientBootstrap
    sums: np.ndarray | None
    aucs: np.ndarray | None


def subgroup_table(
    variables: Mapping[str, Sequence[str]],
    per: Mapping[str, np.ndarray],
    groups: Sequence,
    resamples: int,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows of `subgroups.csv` and a summary (tests made, differences called out)."""
    matrix, truth, _pred = _matrix(per)
    scores = np.asarray(per["score"], float)
    boot = PatientBootstrap(groups, max(resamples, 1), seed)
    levels: list[tuple[str, str, np.ndarray]] = []
    for variable, column in variables.items():
        column = np.asarray(column, dtype=object)
        for value in sorted(set(column), key=lambda v: (v == UNKNOWN, str(v))):
            levels.append((variable, str(value), np.flatnonzero(column == value)))
    subsets = [None] + [idx for _, _, idx in levels]
    sums = aucs = None
    if resamples:
        sums, aucs = boot.replicates(matrix, truth, scores, subsets, subsets[1:])
    data = _Scored(matrix, truth, scores, boot, sums, aucs)
    rows = [_level_row(data, k, level) for k, level in enumerate(levels)]
    points = np.stack([matrix.sum(0)] + [matrix[idx].sum(0) for _, _, idx in levels])
    summary = _tests(rows, levels, sums, points, resamples)
    for row in rows:
        row["n_tests"] = summary["n_tests"]
    summary["method"] = boot.describe() if resamples else "none (bootstrap off)"
    return rows, summary


def _level_row(data: _Scored, k: int, level: tuple[str, str, np.ndarray]) -> dict[str, Any]:
    """The row of level `k`: its counts, each tested statistic and the AUC with intervals."""
    variable, value, idx = level
    row: dict[str, Any] = {
        "variable": variable,
        "value": value,
        "n": len(idx),
        "n_patients": len(np.unique(data.boot.patient[idx])),
        "n_positive": int(data.truth[idx].sum()),
        "flag": f"fewer than {MIN_IMAGES} images" if len(idx) < MIN_IMAGES else "",
    }
    methods = {}
    for stat in TESTED:
        cells, method = _stat_cells(data, k, idx, stat)
        row.update(cells)
        methods[stat] = "Wilson" if method.startswith("Wilson") else method.split(" (")[0]
    truth, scores = data.truth, data.scores
    auc_value = weighted_auc(truth[idx], scores[idx]) if len(idx) else math.nan
    aucs = data.aucs
    low, high = percentile_interval(aucs[k]) if aucs is not None else (None, None)
    row.update(_cells("auc", auc_value, low, high))
    methods["auc"] = "patient-level bootstrap percentile" if aucs is not None else "none"
    row["methods"] = "; ".join(f"{m}: {t}" for m, t in methods.items())
    return row


def _stat_cells(data: _Scored, k: int, idx: np.ndarray, stat: str) -> tuple[dict[str, Any], str]:
    """One statistic of a level with its interval: the competition Dice by the bootstrap,
    shares by `share_interval` (Wilson for one image per patient)."""
    reps = None if data.sums is None else _ratio(data.sums[k + 1], stat)
    num, den = STATS[stat]
    if stat == "competition_dice":
        value = float(_ratio(data.matrix[idx].sum(0)[None], stat)[0])
        low, high = percentile_interval(reps) if reps is not None else (None, None)
        method = data.boot.describe() if reps is not None else "none"
        return _cells(stat, value, low, high), method
    in_level = np.zeros(len(data.truth), bool)
    in_level[idx] = True
    entry = share_interval(
        data.boot,
        in_level & (data.matrix[:, MATRIX.index(num)] > 0),
        in_level & (data.matrix[:, MATRIX.index(den)] > 0),
        reps,
    )
    cells = _cells(stat, entry["value"], entry["ci_low"], entry["ci_high"])
    return cells, entry["method"]


def _cells(stat: str, value, low, high) -> dict[str, Any]:
    def clean(x):
        return None if x is None or not np.isfinite(x) else round(float(x), 6)

    return {stat: clean(value), f"{stat}_ci_low": clean(low), f"{stat}_ci_high": clean(high)}


def _tests(rows, levels, sums, points, resamples) -> dict[str, Any]:
    """Fill compared_with, p_<stat>, holm_<stat> and called_out; returns the family's summary."""
    tests = []  # (row index, stat, difference replicates, observed difference, other label)
    by_variable: dict[str, list[int]] = {}
    for k, (variable, value, idx) in enumerate(levels):
        if len(idx) >= MIN_IMAGES and value != UNKNOWN:
            by_variable.setdefault(variable, []).append(k)
    for row in rows:
        row["compared_with"] = ""
        for stat in TESTED:
            row[f"p_{stat}"] = row[f"holm_{stat}"] = None
        row["called_out"] = ""
    if not resamples:
        return {"n_tests": 0, "called_out": []}
    total = sums[0]
    for variable, ks in by_variable.items():
        if len(ks) < 2:
            continue
        pairs = [(ks[0], ks[1])] if len(ks) == 2 else [(k, None) for k in ks]
        for k, other in pairs:
            mine = sums[k + 1]
            theirs = total - mine if other is None else sums[other + 1]
            label = "the rest" if other is None else f"{variable} {levels[other][1]}"
            rows[k]["compared_with"] = label
            for stat in TESTED:
                d = _ratio(mine, stat) - _ratio(theirs, stat)
                if np.isfinite(d).sum() < len(d) // 2:
                    continue  # the statistic is undefined in most resamples (no positives...)
                mine_point = points[k + 1]
                other_point = points[0] - mine_point if other is None else points[other + 1]
                observed_mine = float(_ratio(mine_point[None], stat)[0])
                observed_other = float(_ratio(other_point[None], stat)[0])
                tests.append((k, stat, d, observed_mine, observed_other, label))
    p = [bootstrap_p_value(d) for _, _, d, *_ in tests]
    adjusted = holm(p)
    called = []
    for (k, stat, d, mine, other, label), raw, adj in zip(tests, p, adjusted, strict=True):
        rows[k][f"p_{stat}"] = round(raw, 6)
        rows[k][f"holm_{stat}"] = round(adj, 6)
        if adj < ALPHA and np.isfinite(mine) and np.isfinite(other):
            low, high = percentile_interval(d)
            text = (
                f"{stat.replace('_', ' ')} {mine:.3f} vs {other:.3f} ({label}): "
                f"{mine - other:+.3f} [{low:+.3f}, {high:+.3f}], Holm p = {adj:.3g}"
            )
            rows[k]["called_out"] = "; ".join(filter(None, [rows[k]["called_out"], text]))
            called.append(f"{rows[k]['variable']} {rows[k]['value']}: {text}")
    return {"n_tests": len(tests), "called_out": called}


CSV_COLUMNS = (
    "variable",
    "value",
    "n",
    "n_patients",
    "n_positive",
    "flag",
    *(f"{m}{s}" for m in METRICS for s in ("", "_ci_low", "_ci_high")),
    "methods",
    "compared_with",
    *(f"p_{m}" for m in TESTED),
    *(f"holm_{m}" for m in TESTED),
    "called_out",
    "n_tests",
)


def csv_rows(rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """`subgroups.csv` as rows (header first)."""
    return [list(CSV_COLUMNS)] + [
        ["" if r.get(c) is None else r.get(c) for c in CSV_COLUMNS] for r in rows
    ]


def read_subgroup_rows(path: str | Path) -> list[dict[str, Any]]:
    """`subgroups.csv` back, numbers parsed (None where empty)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key, value in row.items():
            if key in ("variable", "value", "flag", "methods", "compared_with", "called_out"):
                continue
            with contextlib.suppress(ValueError):
                row[key] = float(value) if value != "" else None
    return rows
