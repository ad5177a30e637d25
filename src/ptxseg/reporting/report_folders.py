"""Which folders under a report's root are runs, evaluations, cross-validation, ablation grids
and benchmarks, and reading their files (configs, summaries, curves, panels, ROC) for the
sections of `ptxseg.reporting.html_report`. Unreadable files read as empty, so the report can say
what is missing instead of failing.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ptxseg.reporting import plots
from ptxseg.util.jsonio import read_json
from ptxseg.util.run_folders import CvFolder, EvalFolder, RunFolder

EVAL_FILES = (EvalFolder.SUMMARY, EvalFolder.PER_IMAGE, EvalFolder.ROC, EvalFolder.PANELS)
PANEL_ORDER = ("best", "worst", "false_positive", "false_negative")


# --------------------------------------------------------------------------- discovery


@dataclass
class RunInfo:
    """What was found in one run folder."""

    path: Path
    name: str
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)  # train_summary.json
    evals: dict[str, Path] = field(default_factory=dict)  # split -> evaluate output folder


def is_run_dir(path: Path) -> bool:
    run = RunFolder(path)
    return run.config.is_file() and any(
        p.exists() for p in (run.metrics, run.train_summary, run.checkpoints)
    )


def is_eval_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in EVAL_FILES)


def find_evals(run: Path) -> dict[str, Path]:
    """Evaluation folders of a run: `RUN/eval/<split>/` (the layout `ptxseg demo` and `ablate`
    write), `RUN/eval/` itself, or `RUN/eval-*/` next to the run's files."""
    root = run / "eval"
    found: dict[str, Path] = {}
    if root.is_dir():
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            if is_eval_dir(sub):
                found[sub.name] = sub
        if not found and is_eval_dir(root):
            found[split_of(root)] = root
    for sub in sorted(run.glob("eval-*")):
        if sub.is_dir() and is_eval_dir(sub):
            split = split_of(sub)
            found[split if split not in found else sub.name] = sub
    return found


def split_of(eval_dir: Path) -> str:
    summary = read_json(EvalFolder(eval_dir).summary, default=None) or {}
    return str(summary.get("split", "eval"))


def read_yaml_file(path: Path) -> dict:
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def load_run(path: Path, root: Path | None = None) -> RunInfo:
    if root and path != root:
        name = str(path.relative_to(root))
    else:  # the report of one run: name it with its parent (`runs/resnet50`, `<cell>/run`)
        name = f"{path.resolve().parent.name}/{path.resolve().name}"
    return RunInfo(
        path=path,
        name=name or path.name,
        config=read_yaml_file(RunFolder(path).config),
        summary=read_json(RunFolder(path).train_summary, default=None) or {},
        evals=find_evals(path),
    )


def discover(root: Path) -> dict:
    """Runs, grids and benchmark folders under `root` (itself included, three levels deep)."""
    root = Path(root)
    runs, grids, benchmarks, cvs = [], [], [], []
    candidates = [root] + sorted(
        p for depth in ("*", "*/*", "*/*/*") for p in root.glob(depth) if p.is_dir()
    )
    for path in candidates:
        if "cells" in path.relative_to(root).parts:
            continue  # the runs inside a grid are summarised by its ablation table
        if is_run_dir(path):
            runs.append(load_run(path, root))
        if (path / "ablation.csv").is_file():
            grids.append(path)
        if (path / "benchmark.csv").is_file():
            benchmarks.append(path)
        if CvFolder(path).spec.is_file():
            cvs.append(path)
    return {"runs": runs, "grids": grids, "benchmarks": benchmarks, "cvs": cvs}


# --------------------------------------------------------------------------- readers


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _find_column(columns: list[str], split: str, metric: str) -> str | None:
    """`train_loss`, `train/loss`, `train_loss_epoch`, `val_dice`, ... (Lightning's names)."""
    pattern = re.compile(rf"^{split}[_/]{metric}(_epoch)?$")
    matches = [c for c in columns if pattern.match(c)]
    return sorted(matches, key=len, reverse=True)[0] if matches else None


def read_curves(path: Path) -> tuple[list[int], dict[str, dict[str, list[float]]]]:
    """Per-epoch train/val loss, IoU and Dice from a Lightning CSV log (rows per step or epoch,
    empty cells where a metric was not logged): the last logged value of each epoch."""
    rows = read_csv_rows(path)
    columns = list(rows[0]) if rows else []
    wanted = {}
    for metric, _ in plots.CURVE_METRICS:
        for split in ("train", "val"):
            column = _find_column(columns, split, metric)
            if column:
                wanted[(metric, split)] = column
    by_epoch: dict[int, dict] = {}
    for row in rows:
        epoch = as_float(row.get("epoch"))
        if math.isnan(epoch):
            continue
        slot = by_epoch.setdefault(int(epoch), {})
        for key, column in wanted.items():
            value = as_float(row.get(column))
            if not math.isnan(value):
                slot[key] = value
    epochs = sorted(by_epoch)
    curves: dict[str, dict[str, list[float]]] = {}
    for (metric, split), _column in wanted.items():
        curves.setdefault(metric, {})[split] = [
            by_epoch[e].get((metric, split), math.nan) for e in epochs
        ]
    return epochs, curves


def flatten_summary(summary: dict, prefix: str = "") -> dict[str, object]:
    """Nested summary.json -> flat `a.b` keys (numbers and short strings only)."""
    flat: dict[str, object] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_summary(value, name + "."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = value
    return flat


def metric_kind(key: str) -> tuple[str, str]:
    """(kind, description) of a metric name: pooled, per-image, image-level or other."""
    try:
        from ptxseg.model.metrics import METRIC_KINDS
    except ImportError:
        METRIC_KINDS = {}
    if key in METRIC_KINDS:
        return METRIC_KINDS[key]
    if key.endswith("_pooled"):
        return "pooled", ""
    if key.endswith("_per_image"):
        return "per-image", ""
    return "other", ""


def summary_metrics(summary: dict) -> dict[str, tuple[str, float, str]]:
    """name -> (kind, value, description) from evaluate's summary.json, whose `metrics` maps each
    name to {value, kind, description}; a flat {name: value} summary is accepted too."""
    out: dict[str, tuple[str, float, str]] = {}
    nested = summary.get("metrics")
    if isinstance(nested, dict):
        for name, entry in nested.items():
            if isinstance(entry, dict):
                kind, text = metric_kind(name)
                out[name] = (
                    str(entry.get("kind", kind)),
                    as_float(entry.get("value")),
                    str(entry.get("description", text)),
                )
        return out
    for name, value in summary.items():
        kind, text = metric_kind(name)
        if kind != "other" or name == "roc_auc":
            out[name] = (kind, as_float(value), text)
    return out


def read_panels(path: Path) -> list[dict]:
    """Panel groups from evaluate's `panels.npz`: [{category, images, truths, predictions,
    titles}] in figure order. Arrays: `images` (uint8), `truths` (ground truth), `masks` (the
    prediction at the operating point), `kinds`, `image_ids`, `dice`."""
    with np.load(path, allow_pickle=False) as data:
        keys = set(data.files)
        required = {"images", "truths", "masks"}
        if not required <= keys:
            raise ValueError(
                f"{path}: expected arrays {sorted(required)} (from ptxseg evaluate); "
                f"found {sorted(keys)}"
            )
        images, truths, preds = data["images"], data["truths"], data["masks"]
        n = len(images)
        kinds = [str(k) for k in data["kinds"]] if "kinds" in keys else ["examples"] * n
        ids = [str(i) for i in data["image_ids"]] if "image_ids" in keys else None
        dice = data["dice"] if "dice" in keys else None
    groups: dict[str, dict] = {}
    for i in range(n):
        title = _short(ids[i]) if ids is not None else f"#{i}"
        if dice is not None:
            title += f"\nDice {float(dice[i]):.3f}"
        group = groups.setdefault(
            kinds[i],
            {"category": kinds[i], "images": [], "truths": [], "predictions": [], "titles": []},
        )
        group["images"].append(np.squeeze(images[i]))
        group["truths"].append(np.squeeze(truths[i]).astype(bool))
        group["predictions"].append(np.squeeze(preds[i]).astype(bool))
        group["titles"].append(title)
    order = {c: i for i, c in enumerate(PANEL_ORDER)}
    return sorted(groups.values(), key=lambda g: order.get(g["category"], len(order)))


def _short(image_id: str, keep: int = 14) -> str:
    """SIIM ImageIds are long DICOM UIDs: keep the distinctive tail for a figure label."""
    return image_id if len(image_id) <= keep + 1 else "…" + image_id[-keep:]


def read_roc(path: Path) -> tuple[list[float], list[float]]:
    rows = read_csv_rows(path)
    if not rows or "fpr" not in rows[0] or "tpr" not in rows[0]:
        raise ValueError(f"{path}: expected columns fpr, tpr")
    pairs = [(as_float(r["fpr"]), as_float(r["tpr"])) for r in rows]
    pairs = [p for p in pairs if not (math.isnan(p[0]) or math.isnan(p[1]))]
    return [p[0] for p in pairs], [p[1] for p in pairs]
