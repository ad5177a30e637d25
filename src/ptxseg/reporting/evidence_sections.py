"""Report sections that say how far a number can be trusted: the stored operating points on the
test images, calibration, subgroups (forest plot, differences after Holm), the failure gallery,
and the paired comparison of models evaluated on the same images (runs of a folder, the encoders
of an ablation grid)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ptxseg.evaluation.uncertainty import format_interval
from ptxseg.reporting import plots
from ptxseg.reporting.pieces import esc, img, missing, png_file, table
from ptxseg.util.jsonio import read_json
from ptxseg.util.run_folders import EvalFolder

__all__ = ["format_interval"]
GALLERY = (
    ("false_negative", "Worst false negatives (largest missed pneumothorax)"),
    ("false_positive", "Worst false positives (largest predicted area on images without one)"),
)


def operating_points_section(summary: dict) -> str:
    points = summary.get("operating_points") or {}
    if not points:
        return ""
    rows = []
    for name, entry in points.items():
        op, test = entry.get("operating_point") or {}, entry.get("test") or {}
        validation = entry.get("validation") or {}
        val = (
            f"sens. {validation['sensitivity']:.3f}, spec. {validation['specificity']:.3f}"
            + ("" if validation.get("target_met", True) else " (target not reached)")
            if validation
            else "–"
        )
        rows.append(
            [
                name,
                entry.get("description", ""),
                f"{op.get('top')} / {op.get('bottom')} / {op.get('min_area')}",
                val,
                format_interval(test.get("sensitivity")),
                format_interval(test.get("specificity")),
            ]
        )
    return (
        "<h3>Operating points on these images</h3>"
        + table(
            [
                "name",
                "chosen for",
                "top / bottom / min area",
                "validation",
                "sensitivity [95%]",
                "specificity [95%]",
            ],
            rows,
            left=2,
        )
        + "<p class=meta>Named points move only the image-level decision (top); chosen on the"
        " validation split, measured here on images they were not chosen on.</p>"
    )


def calibration_section(summary: dict, eval_dir: Path) -> str:
    calibration = summary.get("calibration") or {}
    if not calibration:
        return ""
    rows = []
    for kind, label in (
        ("raw", "raw score (max. pixel probability)"),
        ("calibrated", "calibrated probability"),
    ):
        numbers = calibration.get(kind)
        if numbers:
            ece = numbers.get("ece")
            rows.append(
                [label, format_interval(numbers.get("brier")), "–" if ece is None else f"{ece:.3f}"]
            )
    note = calibration.get("fitted") or ""
    return (
        "<h3>Calibration of the image-level probability</h3>"
        f"<p>Calibrator: {esc(calibration.get('calibrator_description'))}. {esc(note)}</p>"
        + table(["probability", "Brier [95%]", f"ECE ({calibration.get('bins')})"], rows)
        + png_file(eval_dir / "reliability.png", "reliability diagram")
    )


def subgroups_section(summary: dict, eval_dir: Path) -> str:
    sub = summary.get("subgroups") or {}
    path = eval_dir / "subgroups.csv"
    if not sub or not path.is_file():
        return ""
    from ptxseg.evaluation.subgroups import read_subgroup_rows

    rows = read_subgroup_rows(path)
    called = sub.get("called_out") or []
    body = [
        [
            r["variable"],
            r["value"],
            int(r["n"] or 0),
            int(r["n_positive"] or 0),
            _cell(r, "competition_dice"),
            _cell(r, "sensitivity"),
            _cell(r, "specificity"),
            _cell(r, "auc"),
            r.get("flag") or "",
            r.get("called_out") or "",
        ]
        for r in rows
    ]
    return (
        "<h3>Subgroups</h3>"
        f"<p>{sub.get('n_tests', 0)} differences tested (each level against the rest of the"
        " split; a variable of two levels once), Holm-corrected as one family. "
        + (
            "Called out: " + "; ".join(esc(c) for c in called)
            if called
            else "No difference survives the Holm correction."
        )
        + "</p>"
        + png_file(eval_dir / "subgroups.png", "forest plot of the subgroups")
        + "<details><summary>Every subgroup with its 95% interval (subgroups.csv)</summary>"
        + table(
            [
                "variable",
                "level",
                "n",
                "positive",
                "competition Dice",
                "sensitivity",
                "specificity",
                "AUC",
                "flag",
                "difference after Holm",
            ],
            body,
            left=2,
            text_cols=2,
        )
        + "</details>"
    )


def _cell(row: dict, metric: str) -> str:
    return format_interval(
        {
            "value": row.get(metric),
            "ci_low": row.get(f"{metric}_ci_low"),
            "ci_high": row.get(f"{metric}_ci_high"),
        }
    )


def failure_gallery(eval_dir: Path) -> str:
    """The worst misses and false alarms of panels.npz, each with its overlay, its subgroup
    levels (per_image.csv) and its score."""
    panels, per_image = EvalFolder(eval_dir).panels, EvalFolder(eval_dir).per_image
    if not panels.is_file() or not per_image.is_file():
        return ""
    with open(per_image, newline="") as f:
        rows = {r["image_id"]: r for r in csv.DictReader(f)}
    with np.load(panels, allow_pickle=False) as data:
        if "kinds" not in data.files or "image_ids" not in data.files:
            return ""
        kinds = [str(k) for k in data["kinds"]]
        ids = [str(i) for i in data["image_ids"]]
        images, truths, masks = data["images"], data["truths"], data["masks"]
    parts = ["<h3>Failure gallery</h3>"]
    for kind, label in GALLERY:
        chosen = [i for i, k in enumerate(kinds) if k == kind]
        if not chosen:
            parts.append(f"<p>{esc(label)}: none on this split.</p>")
            continue
        titles = [_gallery_title(ids[i], rows.get(ids[i], {}), kind) for i in chosen]
        parts.append(f"<h4>{esc(label)}</h4>")
        parts.append(
            img(
                plots.panels_png(
                    images[chosen], truths[chosen].astype(bool), masks[chosen].astype(bool), titles
                ),
                label,
            )
        )
    return "".join(parts)


def _gallery_title(image_id: str, row: dict, kind: str) -> str:
    tail = image_id if len(image_id) <= 15 else "…" + image_id[-14:]
    area = row.get("truth_area") if kind == "false_negative" else row.get("predicted_area")
    what = "missed" if kind == "false_negative" else "predicted"
    score = f"p={float(row['max_probability']):.2f}" if row.get("max_probability") else ""
    if row.get("calibrated_probability"):
        score += f" (cal. {float(row['calibrated_probability']):.2f})"
    levels = [
        row.get(k, "")
        for k in ("subgroup_sex", "subgroup_age", "subgroup_view", "subgroup_size_bts")
        if row.get(k) and row.get(k) not in ("unknown", "no pneumothorax")
    ]
    levels += [
        f"{k[len('subgroup_') :]}={v}"
        for k, v in row.items()
        if k.startswith("subgroup_")
        and k[len("subgroup_") :]
        not in ("sex", "age", "view", "size_bts", "size_accp", "width", "pixel_spacing")
    ]
    return f"{tail}\n{what} {area} px, {score}\n" + ", ".join(levels)


def paired_comparison_section(runs) -> str:
    """Runs evaluated on the same split of the same images, compared pair by pair."""
    from ptxseg.evaluation.compare import CompareError, compare_evaluations, read_evaluation

    by_split: dict[str, list] = {}
    for run in runs:
        for split, eval_dir in run.evals.items():
            if EvalFolder(eval_dir).per_image.is_file():
                by_split.setdefault(split, []).append((run.name, eval_dir))
    parts = []
    for split, members in by_split.items():
        if len(members) < 2:
            continue
        evaluations = [read_evaluation(d, name=_short(name)) for name, d in members]
        try:
            result = compare_evaluations(evaluations)
        except CompareError as err:
            parts.append(missing(f"{split} split: no paired comparison: {err}"))
            continue
        parts.append(
            _comparison_html(result, f"Paired comparison of the runs on the {split} split")
        )
    return "".join(parts)


def _short(name: str) -> str:
    return name.split("/")[-1] if name.startswith("runs/") else name


def _comparison_html(result: dict, title: str) -> str:
    from ptxseg.evaluation.compare import METRICS

    rows = [
        [
            f"{pair['a']} − {pair['b']}",
            METRICS[metric],
            entry["a"],
            entry["b"],
            entry["sentence"].split(": ", 1)[-1],
        ]
        for pair in result["pairs"]
        for metric, entry in pair["metrics"].items()
    ]
    return (
        f"<h2>{esc(title)}</h2>"
        f"<p>{result['n_images']} images ({result['n_positive']} with pneumothorax, "
        f"{result['n_patients']} {esc(result['resampled'].split(' ')[0])}). "
        f"{esc(result['method'])}."
        " A difference whose interval excludes 0 is stated with its p-value; otherwise there is"
        " no evidence of a difference on these images.</p>"
        + table(
            ["pair", "metric", "first", "second", "difference [95% CI], p"],
            rows,
            left=2,
            text_cols=1,
        )
    )


def ablation_comparison(folder: Path) -> str:
    path = folder / "comparison.json"
    if not path.is_file():
        return ""
    data = read_json(path, default={})
    parts = []
    for group in data.get("groups", []):
        parts.append(
            _comparison_html(
                group["comparison"],
                f"Encoders compared with augmentation {group['aug']} (per-image scores averaged "
                f"over {group['seeds']} seed(s))",
            )
        )
    return "".join(parts) or missing(f"{path}: no comparison")
