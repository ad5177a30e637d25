"""The ablation grid's tables: mean and spread over seeds per (encoder, augmentation), as CSV,
Markdown and a bar chart, and the encoders compared pair by pair on the test images.

`ptxseg.reporting` reads `ablation.csv` back through `read_ablation_csv`.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from ptxseg.util import atomic
from ptxseg.util.jsonio import jsonable, write_json
from ptxseg.util.run_folders import EvalFolder, RunFolder

# Metric key in done.json -> header in the tables. "Dice", "IoU" and "pixel accuracy" are pooled
# over all pixels of the split; the competition Dice is the mean of per-image Dice (empty/empty=1).
METRICS: dict[str, str] = {
    "val_dice": "Val Dice (pooled)",
    "test_dice": "Test Dice (pooled)",
    "test_iou": "Test IoU (pooled)",
    "test_pixel_accuracy": "Test pixel acc. (pooled)",
    "test_competition_dice": "Test competition Dice (per-image)",
    "infer_ms": "Inference (ms/image)",
    "mem_mb": "Inference memory (MB)",
}


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def aggregate(results: Sequence[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds for each (encoder, aug)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for result in results:
        groups.setdefault((result["encoder"], result["aug"]), []).append(result)
    rows = []
    for (encoder, aug), members in groups.items():
        row: dict = {"encoder": encoder, "aug": aug, "n_seeds": len(members)}
        for key in METRICS:
            values = [_number(m.get(key)) for m in members]
            values = [v for v in values if not math.isnan(v)]
            row[f"{key}_mean"] = statistics.fmean(values) if values else math.nan
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return sorted(rows, key=row_order)


def row_order(row: dict) -> tuple:
    """Encoders alphabetically, augmentations in the order of `augment.STRATEGIES`."""
    order = ("none", "geometric", "photometric", "noise", "elastic", "full")
    aug = row["aug"]
    return (row["encoder"], order.index(aug) if aug in order else len(order), aug)


def ablation_columns() -> list[str]:
    return ["encoder", "aug", "n_seeds"] + [f"{k}_{s}" for k in METRICS for s in ("mean", "std")]


def _pm(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def ablation_markdown(rows: Sequence[dict]) -> str:
    """The aggregated grid as a Markdown table (mean ± std over seeds)."""
    headers = ["Encoder", "Augmentation", "Seeds"] + list(METRICS.values())
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        cells = [row["encoder"], row["aug"], str(row["n_seeds"])]
        for key in METRICS:
            digits = 1 if key in ("infer_ms", "mem_mb") else 4
            cells.append(_pm(_number(row[f"{key}_mean"]), _number(row[f"{key}_std"]), digits))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def read_ablation_csv(path: Path) -> list[dict]:
    """Rows of ablation.csv with numbers parsed back."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in row:
            if key not in ("encoder", "aug"):
                row[key] = _number(row[key])
    return rows


def plot_ablation(rows: Sequence[dict], path: Path) -> Path:
    """Grouped bars (augmentation on x, one bar per encoder) with std error bars."""
    from ptxseg.util.plotting import pyplot

    plt = pyplot()

    encoders = list(dict.fromkeys(r["encoder"] for r in rows))
    augs = list(dict.fromkeys(r["aug"] for r in rows))
    lookup = {(r["encoder"], r["aug"]): r for r in rows}
    panels = [("test_dice", "Test Dice (pooled)"), ("test_competition_dice", "Competition Dice")]
    width = 0.8 / max(len(encoders), 1)
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.8), sharey=True)
    for ax, (key, title) in zip(axes, panels, strict=True):
        for j, encoder in enumerate(encoders):
            means = [_number(lookup.get((encoder, a), {}).get(f"{key}_mean")) for a in augs]
            stds = [_number(lookup.get((encoder, a), {}).get(f"{key}_std")) for a in augs]
            xs = [i + (j - (len(encoders) - 1) / 2) * width for i in range(len(augs))]
            ax.bar(xs, means, width, yerr=stds, capsize=3, label=encoder)
        ax.set_xticks(range(len(augs)), augs)
        ax.set_title(title)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("mean ± std over seeds")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=110)


def write_ablation(rows: Sequence[dict], grid_dir: Path) -> dict[str, Path]:
    """Write ablation.csv, ablation.md and ablation.png into the grid folder."""

    grid_dir = Path(grid_dir)
    paths = {k: grid_dir / f"ablation.{k}" for k in ("csv", "md", "png")}
    atomic.write_csv(paths["csv"], ablation_columns(), rows)
    text = (
        "# Ablation: encoder x augmentation\n\n"
        + ablation_markdown(rows)
        + "\nMean ± sample standard deviation over seeds. Dice, IoU and pixel accuracy are pooled"
        " over all pixels of the split; the competition Dice is the mean per-image Dice (an"
        " empty truth with an empty prediction counts 1). Inference time and memory come from"
        " the benchmark of the architecture (batch 1, fresh process).\n"
    )
    atomic.write_text(paths["md"], text)
    plot_ablation(rows, paths["png"])
    return paths


def compare_encoders(grid_dir: Path, results: Sequence[dict]) -> dict[str, Path]:
    """For each augmentation, the encoders compared pair by pair on the test images
    (`evaluation.compare`): each image's Dice and score are averaged over an encoder's seeds
    first, then resampled over patients. Writes comparison.json and comparison.md."""
    from ptxseg.evaluation.compare import (
        CompareError,
        average_over_seeds,
        compare_evaluations,
        comparison_markdown,
        read_evaluation,
    )

    groups = []
    text = ["# Encoders compared on the test images", ""]
    for aug in dict.fromkeys(r["aug"] for r in results):
        by_encoder: dict[str, list] = {}
        for r in results:
            eval_dir = RunFolder(Path(str(r.get("run_dir", "")))).eval("test").root
            if r["aug"] == aug and EvalFolder(eval_dir).per_image.is_file():
                by_encoder.setdefault(r["encoder"], []).append(read_evaluation(eval_dir))
        if len(by_encoder) < 2:
            continue
        try:
            pooled = [average_over_seeds(e, name) for name, e in sorted(by_encoder.items())]
            comparison = compare_evaluations(pooled)
        except CompareError as err:
            text += [f"## augmentation {aug}", "", f"not compared: {err}", ""]
            continue
        seeds = min(len(e) for e in by_encoder.values())
        groups.append({"aug": aug, "seeds": seeds, "comparison": comparison})
        text += [
            f"## augmentation {aug} (per-image scores averaged over {seeds} seed(s))",
            "",
            comparison_markdown(comparison),
        ]
    if not groups:
        return {}
    paths = {
        "comparison.json": Path(grid_dir) / "comparison.json",
        "comparison.md": Path(grid_dir) / "comparison.md",
    }

    write_json(paths["comparison.json"], jsonable({"groups": groups}, finite=True))
    atomic.write_text(paths["comparison.md"], "\n".join(text))
    return paths
