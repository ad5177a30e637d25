"""The model card of a model: `README.md` in the layout of the model-sharing hub, and the same
facts stored in the model so that `serve` (`GET /v1/model`) and its page show them.

`evaluate --model-card` writes it from the evaluation it just made: YAML front matter whose
`model-index` lists the test metrics, then intended use, training data, metrics with their 95%
intervals, subgroups, calibration, operating points and limitations. The README goes into the
inference-model folder (or the folder of an ensemble file); for a `.ckpt` or `.onnx` file, which
has no folder of its own, into the evaluation's output folder. The facts (`card_facts`) are
stored as the model's `evaluation` entry.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ptxseg.evaluation.uncertainty import format_interval
from ptxseg.inference.ensemble import ensemble_file, is_ensemble, store_entries
from ptxseg.serving.card import INTENDED_USE, LIMITATIONS
from ptxseg.util import atomic

HEADLINE = (
    ("dice_per_image", "Competition Dice (mean per-image Dice, empty/empty = 1)", "dice"),
    ("dice_positive_per_image", "Dice on images with pneumothorax", "dice"),
    ("dice_pooled", "Dice (pooled over pixels)", "dice"),
    ("iou_pooled", "IoU (pooled over pixels)", "iou"),
    ("sensitivity", "Sensitivity (image level)", "recall"),
    ("specificity", "Specificity (image level)", "specificity"),
    ("ppv", "PPV (image level)", "precision"),
    ("npv", "NPV (image level)", "npv"),
    ("roc_auc", "ROC AUC (image level)", "roc_auc"),
)


def card_facts(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The facts of the card from evaluate's summary.json (what `/v1/model` shows)."""
    metrics = summary.get("metrics") or {}
    points = {}
    for name, entry in (summary.get("operating_points") or {}).items():
        test = entry.get("test") or {}
        points[name] = {
            "operating_point": entry.get("operating_point"),
            "chosen_for": entry.get("description"),
            "validation": entry.get("validation"),
            "test_sensitivity": test.get("sensitivity"),
            "test_specificity": test.get("specificity"),
        }
    calibration = summary.get("calibration") or {}
    subgroups = summary.get("subgroups") or {}
    return {
        "split": summary.get("split"),
        "work_folder": Path(str(summary.get("work") or "")).name or None,
        "scored_at": summary.get("scored_at"),
        "tta": summary.get("tta"),
        # the path the numbers describe (`ptxseg.inference.choice`: auto's choice and why)
        "inference_path": {
            "runtime": summary.get("runtime"),
            "precision": summary.get("precision"),
            "choice": (summary.get("inference_path") or {}).get("line"),
        },
        "counts": summary.get("counts"),
        "intervals": (summary.get("intervals") or {}).get("method"),
        "metrics": {
            key: {k: metrics[key].get(k) for k in ("value", "ci_low", "ci_high", "method", "n")}
            for key, _, _ in HEADLINE
            if key in metrics
        },
        "operating_points": points,
        "calibration": {
            "calibrator": calibration.get("calibrator_description"),
            "raw": _calibration_numbers(calibration.get("raw")),
            "calibrated": _calibration_numbers(calibration.get("calibrated")),
        },
        "subgroups": {
            "variables": subgroups.get("variables"),
            "tests": subgroups.get("n_tests"),
            "differences_after_holm": subgroups.get("called_out"),
        },
    }


def _calibration_numbers(entry: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not entry:
        return None
    return {"brier": entry.get("brier"), "ece": entry.get("ece")}


def card_markdown(facts: Mapping[str, Any], encoder: str | None, name: str) -> str:
    """README.md: YAML front matter with the model-index, then the sections."""
    dataset = facts.get("work_folder") or "SIIM-ACR Pneumothorax Segmentation"
    lines = [
        "---",
        yaml.safe_dump(_front_matter(facts, name, dataset), sort_keys=False).rstrip(),
        "---",
        "",
        f"# {name}",
        "",
        f"U-Net with a {encoder or 'unknown'} encoder that outlines pneumothorax on chest "
        "radiographs (ptxseg).",
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        "## Training data",
        "",
        f"Trained and validated on the work folder `{dataset}` (SIIM-ACR Pneumothorax "
        "Segmentation data, or data in its format); the operating point, its named variants and "
        "the calibrator were chosen on the validation split only.",
        "",
        *_metrics_lines(facts),
        *_subgroup_lines(facts.get("subgroups") or {}),
        *_calibration_lines(facts.get("calibration") or {}),
        *_point_lines(facts.get("operating_points") or {}),
        "",
        "## Limitations",
        "",
        *[f"- {text}" for text in LIMITATIONS],
        "",
    ]
    return "\n".join(lines)


def _front_matter(facts: Mapping[str, Any], name: str, dataset: str) -> dict[str, Any]:
    """The hub's metadata: tags and the model-index with the headline test metrics."""
    metrics = facts.get("metrics") or {}
    results = {
        "task": {"type": "image-segmentation", "name": "Pneumothorax segmentation"},
        "dataset": {"type": "siim-acr-pneumothorax", "name": dataset, "split": facts.get("split")},
        "metrics": [
            {
                "type": kind,
                "name": label,
                "value": round(float(metrics[key]["value"]), 4),
                "verified": False,
            }
            for key, label, kind in HEADLINE
            if metrics.get(key, {}).get("value") is not None
        ],
    }
    return {
        "library_name": "ptxseg",
        "pipeline_tag": "image-segmentation",
        "tags": ["medical-imaging", "chest-x-ray", "pneumothorax", "segmentation", "u-net"],
        "model-index": [{"name": name, "results": [results]}],
    }


def _metrics_lines(facts: Mapping[str, Any]) -> list[str]:
    metrics = facts.get("metrics") or {}
    counts = facts.get("counts") or {}
    lines = [
        "## Metrics",
        "",
        f"On the {facts.get('split')} split: {counts.get('n_images')} images, "
        f"{counts.get('n_positive')} with pneumothorax; {facts.get('scored_at')}; TTA "
        f"{facts.get('tta')}; {_path_text(facts.get('inference_path'))}. 95% intervals: "
        f"{facts.get('intervals')} (shares of one image per patient: Wilson).",
        "",
        "| metric | value [95% interval] | n | method |",
        "|---|---|---|---|",
    ]
    for key, label, _ in HEADLINE:
        if key in metrics:
            entry = metrics[key]
            lines.append(
                f"| {label} | {format_interval(entry)} | {entry.get('n', '')} | "
                f"{_short_method(entry.get('method'))} |"
            )
    return lines


def _subgroup_lines(subgroups: Mapping[str, Any]) -> list[str]:
    lines = [
        "",
        "## Subgroups",
        "",
        f"Variables: {', '.join(subgroups.get('variables') or []) or 'none'}; "
        f"{subgroups.get('tests') or 0} differences tested (each level against the rest), "
        "Holm-corrected. See `subgroups.csv` of the evaluation for every level with its interval.",
        "",
    ]
    called = subgroups.get("differences_after_holm") or []
    return lines + ([f"- {c}" for c in called] or ["- No difference survives the Holm correction."])


def _calibration_lines(calibration: Mapping[str, Any]) -> list[str]:
    lines = ["", "## Calibration", "", f"Calibrator: {calibration.get('calibrator')}.", ""]
    lines += ["| probability | Brier [95% interval] | ECE (10 equal-mass bins) |", "|---|---|---|"]
    for kind in ("raw", "calibrated"):
        numbers = calibration.get(kind)
        if numbers:
            ece = numbers.get("ece")
            lines.append(
                f"| {'raw score (max. pixel probability)' if kind == 'raw' else 'calibrated'} | "
                f"{format_interval(numbers.get('brier'))} | "
                f"{'–' if ece is None else f'{ece:.3f}'} |"
            )
    return lines + [
        "",
        "`probability` in the findings is the raw score; `calibrated_probability` is the "
        "calibrated one (None for a model without calibrator).",
    ]


def _point_lines(points: Mapping[str, Any]) -> list[str]:
    lines = [
        "",
        "## Operating points",
        "",
        "| name | chosen for | top / bottom / min area | test sensitivity | test specificity |",
        "|---|---|---|---|---|",
    ]
    for point_name, point in points.items():
        op = point.get("operating_point") or {}
        lines.append(
            f"| {point_name} | {point.get('chosen_for')} | {op.get('top')} / {op.get('bottom')} "
            f"/ {op.get('min_area')} | {format_interval(point.get('test_sensitivity'))} | "
            f"{format_interval(point.get('test_specificity'))} |"
        )
    return lines + [
        "",
        "Pick one with `--operating-point NAME` in predict, serve, listen and dicomweb.",
    ]


def _path_text(path: Mapping[str, Any] | None) -> str:
    """'run with openvino fp32 (path: ...)': the runtime and precision the metrics describe."""
    if not path or not path.get("runtime"):
        return "runtime not recorded"
    text = f"run with {path['runtime']} {path['precision']}"
    return text + (f" (path: {path['choice']})" if path.get("choice") else "")


def _short_method(method: str | None) -> str:
    if not method:
        return ""
    return "Wilson" if method.startswith("Wilson") else method


def write_model_card(
    model: str | os.PathLike, summary: Mapping[str, Any], out_dir: str | os.PathLike
) -> Path:
    """Store the card's facts in `model` and write its README.md; returns the README's path."""
    facts = card_facts(summary)
    model = Path(model)
    if model.suffix.lower() != ".onnx":  # an ONNX file's metadata is fixed at export
        store_entries(model, {"evaluation": facts})
    if is_ensemble(model):
        folder = ensemble_file(model).parent
    elif model.is_dir():
        folder = model
    else:
        folder = Path(out_dir)
    encoder = summary.get("encoder")
    name = f"ptxseg-unet-{encoder}" if encoder else "ptxseg-unet"
    return atomic.write_text(folder / "README.md", card_markdown(facts, encoder, name))
