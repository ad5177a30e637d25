"""Paired comparison of models evaluated on the same images: is a difference real or noise?

`compare_evaluations` reads the `per_image.csv` of several `evaluate` outputs of the same images
and, for each pair of models, gives the difference (first minus second) of the competition Dice,
the Dice on positive images and the ROC AUC, with a 95% interval and a two-sided p-value from a
paired bootstrap over patients: each resample draws patients once and scores both models on the
same images, so what the models share (hard images) cancels. For the AUC, DeLong's test is given
beside it (it treats images as independent). With more than two models, each metric's p-values
over all pairs are Holm-adjusted. Evaluations of different images (or of different truth) are
refused: a paired comparison needs the same images.

`average_over_seeds` pools several evaluations of one configuration (seeds) image by image first,
as `ablate` compares encoders.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg.stats.bootstrap import (
    DEFAULT_RESAMPLES,
    PatientBootstrap,
    bootstrap_p_value,
    percentile_interval,
    ratio,
    weighted_auc,
)
from ptxseg.stats.intervals import delong, holm
from ptxseg.util.jsonio import read_json
from ptxseg.util.run_folders import EvalFolder

METRICS = {
    "competition_dice": "competition Dice",
    "positive_dice": "Dice on positive images",
    "roc_auc": "ROC AUC",
}
ALPHA = 0.05


class CompareError(ValueError):
    """Evaluations that cannot be compared; the message is one line that says why."""


@dataclass
class Evaluation:
    """The per-image results of one evaluation (or of several seeds averaged)."""

    name: str
    path: str
    split: str
    image_ids: list[str]
    groups: list[str] | None  # hashed patient keys; None when the file has none
    truth_area: np.ndarray
    dice: np.ndarray
    score: np.ndarray

    @property
    def truth(self) -> np.ndarray:
        return self.truth_area > 0


def model_name(eval_dir: Path) -> str:
    """`runs/resnet50/eval/test` -> `resnet50`; another folder -> its own name."""
    parts = Path(eval_dir).resolve().parts
    if "eval" in parts:
        i = len(parts) - 1 - parts[::-1].index("eval")
        if i > 0:
            return parts[i - 1]
    return Path(eval_dir).name


def read_evaluation(eval_dir: str | Path, name: str | None = None) -> Evaluation:
    """An evaluation folder's per_image.csv (and its split from summary.json)."""
    eval_dir = Path(eval_dir)
    path = EvalFolder(eval_dir).per_image
    if not path.is_file():
        raise CompareError(
            f"{eval_dir} has no per_image.csv: expected a `ptxseg evaluate` --out folder"
        )
    with path.open(newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["image_id"])
    try:
        summary = read_json(EvalFolder(eval_dir).summary)
    except (OSError, ValueError):
        summary = {}
    groups = [r["patient_group"] for r in rows] if rows and "patient_group" in rows[0] else None
    return Evaluation(
        name=name or model_name(eval_dir),
        path=str(eval_dir),
        split=str(summary.get("split", "?")),
        image_ids=[r["image_id"] for r in rows],
        groups=groups,
        truth_area=np.array([int(r["truth_area"]) for r in rows]),
        dice=np.array([float(r["dice"]) for r in rows]),
        score=np.array([float(r["max_probability"]) for r in rows]),
    )


def check_same_images(evaluations: Sequence[Evaluation]) -> None:
    """A CompareError (one line) unless every evaluation scored the same images with the same
    truth."""
    first = evaluations[0]
    for other in evaluations[1:]:
        if other.image_ids != first.image_ids:
            a, b = set(first.image_ids), set(other.image_ids)
            raise CompareError(
                f"{first.path} and {other.path} evaluated different images ({len(a)} and "
                f"{len(b)}; {len(a - b)} only in the first, {len(b - a)} only in the second): "
                "compare evaluations of the same split of the same work folder"
            )
        if not np.array_equal(other.truth_area, first.truth_area):
            raise CompareError(
                f"{first.path} and {other.path} scored the same images against different truth "
                "(another resolution or work folder): evaluate both the same way"
            )


def _groups(evaluations: Sequence[Evaluation]) -> tuple[list[str], str]:
    for e in evaluations:
        if e.groups is not None:
            return e.groups, "patients"
    return list(evaluations[0].image_ids), "images (no patient keys in per_image.csv)"


def compare_pair(
    a: Evaluation, b: Evaluation, boot: PatientBootstrap, resamples: int
) -> dict[str, dict[str, Any]]:
    """metric -> {a, b, difference, ci_low, ci_high, p} of a minus b (paired bootstrap)."""
    truth = a.truth
    matrix = np.stack(
        [np.ones(len(truth)), a.dice, b.dice, truth, a.dice * truth, b.dice * truth], 1
    )
    sums = boot.sums(matrix)[0]
    auc_a, auc_b = boot.auc(truth, a.score), boot.auc(truth, b.score)
    replicates = {
        "competition_dice": ratio(sums, 1, 0) - ratio(sums, 2, 0),
        "positive_dice": ratio(sums, 4, 3) - ratio(sums, 5, 3),
        "roc_auc": auc_a[0] - auc_b[0],
    }
    values = {
        "competition_dice": (float(a.dice.mean()), float(b.dice.mean())),
        "positive_dice": (
            float(a.dice[truth].mean()) if truth.any() else float("nan"),
            float(b.dice[truth].mean()) if truth.any() else float("nan"),
        ),
        "roc_auc": (weighted_auc(truth, a.score), weighted_auc(truth, b.score)),
    }
    out = {}
    for metric, d in replicates.items():
        low, high = percentile_interval(d)
        va, vb = values[metric]
        out[metric] = {
            "a": va,
            "b": vb,
            "difference": va - vb,
            "ci_low": low,
            "ci_high": high,
            "p": bootstrap_p_value(d),
        }
    out["roc_auc"]["delong"] = delong(truth, a.score, b.score)
    return out


def compare_evaluations(
    evaluations: Sequence[Evaluation], resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """Every pair of `evaluations` (at least two, of the same images): differences, intervals,
    p-values, Holm-adjusted p-values when there are more than two models."""
    if len(evaluations) < 2:
        raise CompareError("compare needs at least two evaluations")
    if resamples < 100:
        raise CompareError(
            f"--bootstrap {resamples}: a paired comparison needs at least 100 resamples "
            "(2000 by default)"
        )
    check_same_images(evaluations)
    groups, unit = _groups(evaluations)
    boot = PatientBootstrap(groups, resamples, seed)
    pairs = []
    for a, b in itertools.combinations(evaluations, 2):
        pairs.append({"a": a.name, "b": b.name, "metrics": compare_pair(a, b, boot, resamples)})
    adjust = len(evaluations) > 2
    for metric in METRICS:
        raw = [p["metrics"][metric]["p"] for p in pairs]
        adjusted = holm(raw) if adjust else raw
        for pair, value in zip(pairs, adjusted, strict=True):
            entry = pair["metrics"][metric]
            entry["p_holm"] = value if adjust else None
            entry["sentence"] = sentence(pair["a"], pair["b"], entry, adjust)
    truth = evaluations[0].truth
    return {
        "models": [{"name": e.name, "path": e.path, "split": e.split} for e in evaluations],
        "n_images": len(truth),
        "n_positive": int(truth.sum()),
        "n_patients": boot.n_patients,
        "resampled": unit,
        "method": f"paired {boot.describe()}; p two-sided from the bootstrap distribution"
        + ("; Holm-adjusted over the pairs of each metric" if adjust else ""),
        "pairs": pairs,
    }


def sentence(a: str, b: str, entry: dict[str, Any], adjusted: bool) -> str:
    """'b0 - r50: +0.170 [+0.050, +0.290], p = 0.004' or 'no evidence of a difference (...)'."""
    p = entry["p_holm"] if adjusted and entry.get("p_holm") is not None else entry["p"]
    if entry["ci_low"] is None or not np.isfinite(entry["difference"]):
        return f"{a} − {b}: undefined on these images"
    label = "Holm p" if adjusted else "p"
    text = (
        f"{entry['difference']:+.3f} [{entry['ci_low']:+.3f}, {entry['ci_high']:+.3f}], "
        f"{label} = {_p(p)}"
    )
    if p < ALPHA:
        return f"{a} − {b}: {text}"
    return f"{a} − {b}: no evidence of a difference ({text})"


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def average_over_seeds(evaluations: Sequence[Evaluation], name: str) -> Evaluation:
    """One evaluation whose per-image Dice and score are the means over `evaluations` (seeds of
    one configuration, on the same images)."""
    check_same_images(evaluations)
    first = evaluations[0]
    return replace(
        first,
        name=name,
        path=", ".join(e.path for e in evaluations),
        dice=np.mean([e.dice for e in evaluations], axis=0),
        score=np.mean([e.score for e in evaluations], axis=0),
    )


CSV_COLUMNS = (
    "a",
    "b",
    "metric",
    "value_a",
    "value_b",
    "difference",
    "ci_low",
    "ci_high",
    "p",
    "p_holm",
    "delong_p",
    "conclusion",
)


def comparison_rows(result: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = [list(CSV_COLUMNS)]
    for pair in result["pairs"]:
        for metric, entry in pair["metrics"].items():
            delong_p = entry.get("delong", {}).get("p") if metric == "roc_auc" else None
            rows.append(
                [pair["a"], pair["b"], metric]
                + [
                    _r(entry[k])
                    for k in ("a", "b", "difference", "ci_low", "ci_high", "p", "p_holm")
                ]
                + [_r(delong_p), entry["sentence"]]
            )
    return rows


def _r(x):
    if x is None:
        return ""
    x = float(x)
    return "" if not np.isfinite(x) else round(x, 6)


def comparison_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Paired comparison on {result['n_images']} images ({result['n_positive']} positive, "
        f"{result['n_patients']} {result['resampled'].split(' ')[0]}); {result['method']}.",
        "",
        "| pair | metric | first | second | difference [95% CI] | p | conclusion |",
        "|---|---|---|---|---|---|---|",
    ]
    for pair in result["pairs"]:
        for metric, e in pair["metrics"].items():
            p = e["p_holm"] if e.get("p_holm") is not None else e["p"]
            ci = (
                "–"
                if e["ci_low"] is None
                else f"{e['difference']:+.3f} [{e['ci_low']:+.3f}, {e['ci_high']:+.3f}]"
            )
            lines.append(
                f"| {pair['a']} − {pair['b']} | {METRICS[metric]} | {e['a']:.3f} | {e['b']:.3f} | "
                f"{ci} | {_p(p)} | {e['sentence'].split(': ', 1)[-1]} |"
            )
    return "\n".join(lines) + "\n"


def write_comparison(out_dir: str | Path, result: dict[str, Any]) -> list[str]:
    """Write comparison.csv, comparison.json and comparison.md into `out_dir` (each atomically);
    returns their names."""
    from ptxseg.evaluation.eval_files import write_evaluation
    from ptxseg.util import atomic
    from ptxseg.util.jsonio import jsonable

    out_dir = Path(out_dir)
    write_evaluation(
        out_dir,
        {
            "comparison.csv": comparison_rows(result),
            "comparison.json": jsonable(result, finite=True),
        },
    )
    atomic.write_text(out_dir / "comparison.md", comparison_markdown(result))
    return ["comparison.csv", "comparison.md", "comparison.json"]
