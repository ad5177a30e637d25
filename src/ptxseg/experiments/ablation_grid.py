"""Ablation grid: encoders x augmentation strategies x seeds, trained and evaluated cell by cell.

Each cell lives in `GRID/cells/<encoder>__<aug>__seed<k>/`; its `done.json` (the cell's metrics)
is written last and atomically, so an interrupted grid resumes by skipping the cells that have
one. Cells are independent: `shard(cells, "i/n")` picks every n-th cell so that n machines (or n
GPUs, one process each) can share a grid folder, or run in separate folders whose `cells/` are
copied together afterwards; a final `ptxseg ablate` (or `aggregate_grid`) then only aggregates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptxseg.experiments.ablation_tables import aggregate, compare_encoders, write_ablation
from ptxseg.experiments.jobs import EventHandler, Job, JobPolicy, read_done, run_jobs
from ptxseg.util.jsonio import read_json, write_json
from ptxseg.util.run_folders import DONE, RunFolder
from ptxseg.util.shards import parse_shard, take_shard


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


def run_grid(
    cells: Iterable[Cell],
    grid_dir: Path,
    run_cell: CellRunner,
    on_event: EventHandler | None = None,
) -> list[dict]:
    """Run the cells one after another, skipping finished ones; a failing cell is logged to
    `<cell>/error.txt` and the grid goes on. Returns the results of the finished cells."""
    jobs = [
        Job(
            cell,
            Path(grid_dir) / "cells" / cell.name,
            {"encoder": cell.encoder, "aug": cell.aug, "seed": cell.seed},
        )
        for cell in cells
    ]
    finished = run_jobs(
        jobs,
        lambda job: run_cell(job.key, job.folder),
        JobPolicy(keep_going=True, on_event=on_event),
    )
    return list(finished.values())


def collect_results(grid_dir: Path) -> list[dict]:
    """The results of every finished cell under `GRID/cells/` (all shards)."""
    cells_dir = Path(grid_dir) / "cells"
    if not cells_dir.is_dir():
        return []
    results = [read_done(d) for d in sorted(cells_dir.iterdir()) if d.is_dir()]
    return [r for r in results if r is not None]


def aggregate_grid(grid_dir: Path) -> dict[str, Path]:
    """Aggregate every finished cell of a grid folder into its tables and plot, and compare its
    encoders (`compare_encoders`)."""
    results = collect_results(grid_dir)
    if not results:
        raise ValueError(f"no finished cells (cells/*/{DONE}) under {grid_dir}")
    paths = write_ablation(aggregate(results), grid_dir)
    paths.update(compare_encoders(grid_dir, results))
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
        write_json(path, cost)
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


def train_and_evaluate(cell: Cell, cell_dir: Path, options: AblationOptions) -> dict:
    """Train one cell with `ptxseg.training.fit.fit`, evaluate its best checkpoint on the test split
    (the operating point is searched on val, as `ptxseg evaluate` does), and return the metrics.

    The run lands in `<cell>/run/` with its evaluation in `<cell>/run/eval/test/`, so
    `ptxseg report <cell>/run` shows one cell in full. A cell interrupted during training
    continues from its `last.ckpt`.
    """
    from ptxseg.evaluation.evaluate_split import evaluate_checkpoint
    from ptxseg.training.fit import fit

    run_dir = Path(cell_dir) / "run"
    o = options
    cfg = cell_config(cell, run_dir, o.data, o.epochs, o.size, o.config, o.overrides)
    cfg.trainer.resume = RunFolder(run_dir).last_checkpoint.is_file()
    run_dir = fit(cfg)
    summary = read_json(RunFolder(run_dir).train_summary, default=None) or {}
    test = evaluate_checkpoint(
        RunFolder(run_dir).best_checkpoint,
        o.data,
        run_dir / "eval" / "test",
        split="test",
        device=o.device,
        progress=False,
    )
    values = {name: entry.get("value") for name, entry in test["metrics"].items()}
    cost = architecture_cost(
        cell.encoder, cfg.data.size, Path(cell_dir).parent.parent / "architecture", o.device
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
    write_json(path, merged)


# --------------------------------------------------------------------------- the whole grid

ENCODERS = ("resnet50", "efficientnet-b0", "xception")
AUGMENTATIONS = ("none", "geometric", "photometric", "noise", "elastic", "full")


@dataclass(frozen=True)
class AblationOptions:
    """What `ptxseg ablate` was asked: the work folder, the grid folder, the grid's axes, the
    training of each cell (epochs, size, base config and dotted overrides), which cells this
    process runs (`cells`: shard i/n) and the device of evaluation and timing."""

    data: Path
    out: Path = Path("ablation")
    encoders: Sequence[str] = ENCODERS
    augs: Sequence[str] = AUGMENTATIONS
    epochs: int = 10
    seeds: int = 3
    size: int | None = None
    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    cells: str | None = None
    device: str = "cpu"

    def spec(self) -> dict[str, Any]:
        """What `GRID/grid.json` records."""
        return {
            "data": str(self.data),
            "encoders": list(self.encoders),
            "augs": list(self.augs),
            "seeds": self.seeds,
            "epochs": self.epochs,
            "size": self.size,
            "config": self.config,
            "overrides": self.overrides,
        }


@dataclass(frozen=True)
class AblationOutcome:
    """What a `run_ablation` call did: every cell of the grid, the cells of this process, the
    results finished by this call (or before), the count of finished cells of all shards, and
    the tables written from them."""

    cells: list[Cell]
    todo: list[Cell]
    finished: list[dict]
    done: int
    paths: dict[str, Path]


def plan_ablation(options: AblationOptions) -> tuple[list[Cell], list[Cell]]:
    """Check the options and record the grid in `GRID/grid.json`; returns every cell and the
    cells of this process. Bad options fail here (ValueError), before any cell runs."""
    cells = grid_cells(list(options.encoders), list(options.augs), options.seeds)
    todo = shard(cells, options.cells)
    o = options
    cell_config(cells[0], o.out / "check", o.data, o.epochs, o.size, o.config, o.overrides)
    write_grid_spec(o.out, o.spec())
    return cells, todo


def run_ablation(options: AblationOptions, on_event: EventHandler | None = None) -> AblationOutcome:
    """The ablation in its order: check and record the grid, run this process's cells
    (resumably; a failing cell is logged and the grid goes on), then aggregate every finished
    cell of the folder into its tables. `on_event` first hears `("planned", None, {"cells",
    "todo"})`, then each cell (`ptxseg.experiments.jobs`)."""
    cells, todo = plan_ablation(options)
    if on_event is not None:
        on_event("planned", None, {"cells": cells, "todo": todo, "shard": options.cells})
    finished = run_grid(
        todo, options.out, lambda cell, folder: train_and_evaluate(cell, folder, options), on_event
    )
    done = len(collect_results(options.out))
    paths = aggregate_grid(options.out) if done else {}
    return AblationOutcome(cells, todo, finished, done, paths)
