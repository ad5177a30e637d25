"""The files of an evaluation: `per_image.csv` rows, the panels chosen for figures, JSON-ready
values, and writing every output atomically (CSV, JSON, NPZ, PNG)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg.util import atomic

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


def write_evaluation(out_dir: Path, files: Mapping[str, Any]) -> dict[str, str]:
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


def table_rows(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> list[list[Any]]:
    return [list(columns)] + [[row[c] for c in columns] for row in rows]


def number_text(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.6g}"
