"""Ablation grid: encoders x augmentation strategies x seeds, trained and evaluated cell by cell.

Each cell lives in `GRID/cells/<encoder>__<aug>__seed<k>/`; its `done.json` (the cell's metrics)
is written last and atomically, so an interrupted grid resumes by skipping the cells that have
one. Cells are independent: `shard(cells, "i/n")` picks every n-th cell so that n machines (or n
GPUs, one process each) can share a grid folder, or run in separate folders whose `cells/` are
copied together afterwards; a final `ptxseg ablate` (or `aggregate_grid`) then only aggregates.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ptxseg.util import atomic
from ptxseg.util.jsonio import jsonable, read_json, write_json
from ptxseg.util.run_folders import DONE, EvalFolder, RunFolder
from ptxseg.util.shards import parse_shard, take_shard

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


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    encoder: str
    aug: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.encoder}__{self.aug}__seed{self.seed}"


CellRunner = Callable[[Cell, Path], dict]
"""Trains and evaluates one cell in the given folder; returns the metrics of `METRICS`."""


def grid_cells(encoders: Sequence[str], augs: Sequence[str], seeds: int) -> list[Cell]:
    """All cells in a stable order: encoder, then augmentation, then seed (0..seeds-1)."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if not encoders or not augs:
        raise ValueError("the grid needs at least one encoder and one augmentation strategy")
    return [Cell(e, a, s) for e in encoders for a in augs for s in range(seeds)]


def shard(cells: Sequence[Cell], spec: str | None) -> list[Cell]:
    """The cells of shard `i/n` (0-based, as `--shard` everywhere: `0/2` and `1/2` split in two)."""
    index, count = parse_shard(spec, "--cells")
    return take_shard(list(cells), index, count)


def read_done(cell_dir: Path) -> dict | None:
    """The metrics of a finished cell, or None when it has not finished."""
    path = Path(cell_dir) / DONE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def run_grid(
    cells: Iterable[Cell],
    grid_dir: Path,
    run_cell: CellRunner,
    on_event: Callable[[str, Cell, dict | None], None] | None = None,
) -> list[dict]:
    """Run the cells one after another, skipping finished ones; a failing cell is logged to
    `<cell>/error.txt` and the grid goes on. Returns the results of the finished cells."""
    results = []
    for cell in cells:
        cell_dir = Path(grid_dir) / "cells" / cell.name
        done = read_done(cell_dir)
        if done is not None:
            results.append(done)
            if on_event:
                on_event("skipped", cell, done)
            continue
        cell_dir.mkdir(parents=True, exist_ok=True)
        if on_event:
            on_event("started", cell, None)
        start = time.perf_counter()
        try:
            metrics = run_cell(cell, cell_dir)
        except Exception as exc:
            (cell_dir / "error.txt").write_text(traceback.format_exc())
            if on_event:
                on_event("failed", cell, {"error": f"{type(exc).__name__}: {exc}"})
            continue
        result = {
            "encoder": cell.encoder,
            "aug": cell.aug,
            "seed": cell.seed,
            **metrics,
            "seconds": round(time.perf_counter() - start, 1),
        }
        # last: marks the cell as finished
        atomic.write_text(cell_dir / DONE, json.dumps(result, indent=2, default=str) + "\n")
        (cell_dir / "error.txt").unlink(missing_ok=True)
        results.append(result)
        if on_event:
            on_event("done", cell, result)
    return results


def collect_results(grid_dir: Path) -> list[dict]:
    """The results of every finished cell under `GRID/cells/` (all shards)."""
    cells_dir = Path(grid_dir) / "cells"
    if not cells_dir.is_dir():
        return []
    results = [read_done(d) for d in sorted(cells_dir.iterdir()) if d.is_dir()]
    return [r for r in results if r is not None]


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def aggregate_grid(grid_dir: Path) -> dict[str, Path]:
    """Aggregate every finished cell of a grid folder into its tables and plot, and compare its
    encoders (`compare_encoders`)."""
    results = collect_results(grid_dir)
    if not results:
        raise ValueError(f"no finished cells (cells/*/{DONE}) under {grid_dir}")
    paths = write_ablation(aggregate(results), grid_dir)
    paths.update(compare_encoders(grid_dir, results))
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


# --------------------------------------------------------------------------- the real cell


def architecture_cost(encoder: str, size: int, cache_dir: Path, device: str = "cpu") -> dict:
    """Inference ms per image and memory of the architecture (batch 1, fresh process), measured
    once per encoder and size and cached in `cache_dir`: weights and augmentation do not change
    them, so every cell of an encoder shares one measurement."""
    from ptxseg.benchmarks.backbones import BenchConfig, measure_isolated

    path = Path(cache_dir) / f"{encoder}__{size}__{device.replace(':', '')}.json"
    cached = read_json(path, default=None)
    if cached is not None:
        return cached
    row = measure_isolated(
        BenchConfig(encoder, size, batch_size=1, device=device, warmup=2, iters=5, train=False)
    )
    cost = {"infer_ms": row["latency_p50_ms"], "mem_mb": row["infer_mem_mb"]}
    if not row["error"]:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps(cost, indent=2, default=str) + "\n")
    return cost


def cell_config(
    cell: Cell,
    run_dir: Path,
    data: Path,
    epochs: int,
    size: int | None = None,
    config: str | None = None,
    overrides: dict | None = None,
):
    """The training config of one cell: a preset or YAML, overrides, then the cell's own keys."""
    from ptxseg.config import load_config

    keys = dict(overrides or {})
    keys.update(
        {
            "data.work": str(data),
            "data.aug": cell.aug,
            "model.encoder": cell.encoder,
            "trainer.seed": cell.seed,
            "trainer.epochs": epochs,
            "trainer.out": str(run_dir),
        }
    )
    if size:
        keys["data.size"] = size
    return load_config(config, keys)


def train_and_evaluate(
    cell: Cell,
    cell_dir: Path,
    *,
    data: Path,
    epochs: int,
    size: int | None = None,
    config: str | None = None,
    overrides: dict | None = None,
    device: str = "cpu",
) -> dict:
    """Train one cell with `ptxseg.training.fit.fit`, evaluate its best checkpoint on the test split
    (the operating point is searched on val, as `ptxseg evaluate` does), and return the metrics.

    The run lands in `<cell>/run/` with its evaluation in `<cell>/run/eval/test/`, so
    `ptxseg report <cell>/run` shows one cell in full. A cell interrupted during training
    continues from its `last.ckpt`.
    """
    from ptxseg.evaluation.evaluate_split import evaluate_checkpoint
    from ptxseg.training.fit import fit

    run_dir = Path(cell_dir) / "run"
    cfg = cell_config(cell, run_dir, data, epochs, size, config, overrides)
    cfg.trainer.resume = RunFolder(run_dir).last_checkpoint.is_file()
    run_dir = fit(cfg)
    summary = read_json(RunFolder(run_dir).train_summary, default=None) or {}
    test = evaluate_checkpoint(
        RunFolder(run_dir).best_checkpoint,
        data,
        RunFolder(run_dir).eval("test").root,
        split="test",
        device=device,
        progress=False,
    )
    values = {name: entry.get("value") for name, entry in test["metrics"].items()}
    cost = architecture_cost(
        cell.encoder, cfg.data.size, Path(cell_dir).parent.parent / "architecture", device
    )
    return {
        "val_dice": summary.get("best_val_dice"),
        "test_dice": values.get("dice_pooled"),
        "test_iou": values.get("iou_pooled"),
        "test_pixel_accuracy": values.get("pixel_accuracy_pooled"),
        "test_competition_dice": values.get("dice_per_image"),
        **cost,
        "best_epoch": summary.get("best_epoch"),
        "epochs_run": summary.get("epochs_run"),
        "run_dir": str(run_dir),
    }


def write_grid_spec(grid_dir: Path, spec: dict) -> None:
    """Record the grid's options in `GRID/grid.json`; a different grid in the same folder is an
    error (its cells would be mixed up with these)."""
    path = Path(grid_dir) / "grid.json"
    old = read_json(path, default=None)
    keep = ("data", "epochs", "size", "config", "overrides")
    if old is not None and any(old.get(k) != spec.get(k) for k in keep):
        diff = {k: (old.get(k), spec.get(k)) for k in keep if old.get(k) != spec.get(k)}
        raise ValueError(
            f"{path} was written for another grid (differences, old -> new: {diff}); "
            "use another --out, or the same options to resume"
        )
    Path(grid_dir).mkdir(parents=True, exist_ok=True)
    merged = dict(old or {}, **spec)
    for key in ("encoders", "augs"):  # extending a grid by encoders or augmentations is fine
        merged[key] = list(dict.fromkeys((old or {}).get(key, []) + list(spec.get(key, []))))
    atomic.write_text(path, json.dumps(merged, indent=2, default=str) + "\n")
