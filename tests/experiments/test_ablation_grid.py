"""Ablation grid: cell naming, sharding, resume after interruption, aggregation over seeds."""

import json
import math

import pytest

from ptxseg.cli import main
from ptxseg.experiments import ablation_grid
from ptxseg.experiments.ablation_grid import (
    Cell,
    aggregate_grid,
    cell_config,
    grid_cells,
    run_grid,
    shard,
    write_grid_spec,
)
from ptxseg.experiments.ablation_tables import METRICS, aggregate, read_ablation_csv


def fake_metrics(cell: Cell) -> dict:
    base = 0.5 + 0.1 * cell.seed
    return {key: base for key in METRICS}


class CountingRunner:
    """Stands in for training: counts calls, can fail on one cell to simulate an interruption."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[str] = []
        self.fail_on = fail_on

    def __call__(self, cell: Cell, cell_dir):
        self.calls.append(cell.name)
        if cell.name == self.fail_on:
            raise RuntimeError("interrupted")
        (cell_dir / "run").mkdir()
        return fake_metrics(cell)


def test_cells_are_named_and_ordered():
    cells = grid_cells(["resnet50", "xception"], ["none", "full"], seeds=2)
    assert len(cells) == 8
    assert cells[0].name == "resnet50__none__seed0" and cells[-1].name == "xception__full__seed1"


def test_shards_partition_the_grid():
    cells = grid_cells(["a", "b", "c"], ["none"], seeds=3)
    parts = [shard(cells, f"{i}/4") for i in range(4)]
    assert sorted(c.name for p in parts for c in p) == sorted(c.name for c in cells)
    assert not set(parts[0]) & set(parts[1])
    assert shard(cells, None) == cells


@pytest.mark.parametrize("spec", ["2/2", "-1/2", "1-2", "x/y"])
def test_bad_shard_spec_is_rejected(spec):
    with pytest.raises(ValueError, match="--cells"):
        shard(grid_cells(["a"], ["none"], 1), spec)


def test_interrupted_grid_resumes_without_retraining_done_cells(tmp_path):
    cells = grid_cells(["tiny"], ["none", "full"], seeds=1)
    first = CountingRunner(fail_on="tiny__full__seed0")
    results = run_grid(cells, tmp_path, first)
    assert first.calls == ["tiny__none__seed0", "tiny__full__seed0"]
    assert [r["aug"] for r in results] == ["none"]
    done = tmp_path / "cells" / "tiny__none__seed0" / "done.json"
    failed = tmp_path / "cells" / "tiny__full__seed0"
    assert done.is_file() and not (failed / "done.json").exists()
    assert "interrupted" in (failed / "error.txt").read_text()
    mtime = done.stat().st_mtime_ns

    second = CountingRunner()
    results = run_grid(cells, tmp_path, second)
    assert second.calls == ["tiny__full__seed0"]  # the finished cell was not retrained
    assert done.stat().st_mtime_ns == mtime
    assert [r["aug"] for r in results] == ["none", "full"]
    assert not (failed / "error.txt").exists()
    assert json.loads((failed / "done.json").read_text())["seed"] == 0


def test_aggregate_mean_and_std_over_seeds():
    results = [
        {"encoder": "e", "aug": "none", "seed": s, **fake_metrics(Cell("e", "none", s))}
        for s in range(3)
    ]
    (row,) = aggregate(results)
    assert row["n_seeds"] == 3
    assert row["test_dice_mean"] == pytest.approx(0.6)
    assert row["test_dice_std"] == pytest.approx(0.1)  # sample std of 0.5, 0.6, 0.7


def test_aggregate_grid_writes_tables_and_plot(tmp_path):
    cells = grid_cells(["a", "b"], ["none", "full"], seeds=2)
    run_grid(cells, tmp_path, CountingRunner())
    paths = aggregate_grid(tmp_path)
    rows = read_ablation_csv(paths["csv"])
    assert len(rows) == 4 and all(r["n_seeds"] == 2 for r in rows)
    assert rows[0]["val_dice_mean"] == pytest.approx(0.55)
    md = paths["md"].read_text()
    assert "| a | none | 2 | 0.5500 ± 0.0707 |" in md
    assert paths["png"].stat().st_size > 1000


def test_aggregate_grid_without_results_says_so(tmp_path):
    with pytest.raises(ValueError, match="no finished cells"):
        aggregate_grid(tmp_path)


def test_missing_metric_is_nan_not_a_crash():
    (row,) = aggregate([{"encoder": "e", "aug": "none", "seed": 0, "test_dice": 0.5}])
    assert math.isnan(row["mem_mb_mean"]) and row["test_dice_mean"] == 0.5


def test_grid_spec_refuses_a_different_grid_in_the_same_folder(tmp_path):
    spec = {"data": "w", "encoders": ["a"], "augs": ["none"], "epochs": 2, "size": 64}
    write_grid_spec(tmp_path, spec)
    write_grid_spec(tmp_path, {**spec, "encoders": ["b"]})  # more encoders: same grid, extended
    assert json.loads((tmp_path / "grid.json").read_text())["encoders"] == ["a", "b"]
    with pytest.raises(ValueError, match="another grid"):
        write_grid_spec(tmp_path, {**spec, "epochs": 3})


def test_cell_config_sets_the_cell_keys_over_the_preset(tmp_path):
    config = cell_config(
        Cell("resnet18", "noise", 3),
        tmp_path / "run",
        tmp_path,
        2,
        64,
        "demo",
        {"data.batch_size": "4", "model.encoder": "ignored"},
    )
    assert (config.model.encoder, config.data.aug, config.trainer.seed) == ("resnet18", "noise", 3)
    assert config.data.batch_size == 4 and config.trainer.epochs == 2
    assert config.trainer.out == str(tmp_path / "run")


def run_cli(argv):
    try:
        main(argv)
    except SystemExit as exc:
        return exc.code or 0
    return 0


def test_cli_shards_resume_and_aggregate(tmp_path, monkeypatch):
    calls = []

    def fake(cell, cell_dir, options):
        calls.append(cell.name)
        assert options.epochs == 1 and options.overrides["model.encoder_weights"] == "none"
        return fake_metrics(cell)

    monkeypatch.setattr(ablation_grid, "train_and_evaluate", fake)
    argv = ["ablate", "--data", str(tmp_path / "work"), "--out", str(tmp_path / "grid")]
    argv += ["--encoders", "a,b", "--augs", "none", "--seeds", "2", "--epochs", "1"]
    argv += ["--encoder-weights", "none"]
    assert run_cli([*argv, "--cells", "0/2"]) == 0
    assert calls == ["a__none__seed0", "b__none__seed0"]
    assert run_cli(argv) == 0  # the rest; the first shard's cells are skipped
    assert calls[2:] == ["a__none__seed1", "b__none__seed1"]
    rows = read_ablation_csv(tmp_path / "grid" / "ablation.csv")
    assert [r["n_seeds"] for r in rows] == [2, 2]


@pytest.mark.slow
def test_real_grid_trains_evaluates_and_resumes(tmp_path):
    from ptxseg.data.synthetic import generate_dataset
    from ptxseg.data.work_folder import PrepareOptions, prepare_work_folder

    generate_dataset(tmp_path / "raw", n_images=20, size=64, seed=0, positive_fraction=0.5)
    prepare_work_folder(
        tmp_path / "raw" / "dicom-images-train",
        tmp_path / "raw" / "train-rle.csv",
        tmp_path / "work",
        PrepareOptions(size=64, val=0.25, test=0.25),
    )
    argv = ["ablate", "--data", str(tmp_path / "work"), "--out", str(tmp_path / "grid")]
    argv += ["--encoders", "resnet18", "--augs", "none,full", "--seeds", "1", "--epochs", "1"]
    argv += [
        "--size",
        "64",
        "--encoder-weights",
        "none",
        "--set",
        "data.batch_size=4",
        "--set",
        "data.workers=0",
    ]
    argv += ["--set", "trainer.progress_bar=false", "--set", "trainer.accelerator=cpu"]
    assert run_cli(argv) == 0
    done = tmp_path / "grid" / "cells" / "resnet18__none__seed0" / "done.json"
    result = json.loads(done.read_text())
    assert 0 <= result["test_competition_dice"] <= 1 and result["infer_ms"] > 0
    assert (done.parent / "run" / "eval" / "test" / "panels.npz").is_file()
    mtime = done.stat().st_mtime_ns
    assert run_cli(argv) == 0
    assert done.stat().st_mtime_ns == mtime
    assert "| resnet18 | none | 1 |" in (tmp_path / "grid" / "ablation.md").read_text()
