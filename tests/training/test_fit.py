"""Training: run folder, checkpoint round trip, resume, CLI on prepared data, DDP, overfitting."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from ptxseg.config import load_config
from ptxseg.model.checkpoint import load_model
from ptxseg.training.fit import empty_baseline, fit
from ptxseg.training.module import (
    METRIC_COLUMNS,
    SegmentationDataModule,
    ShardSampler,
    epoch_metrics,
    warmup_cosine,
)
from ptxseg.util import schemas


class SquaresDataset(torch.utils.data.Dataset):
    """Dark noise images; every other one has a bright square that is its mask."""

    def __init__(self, n: int, size: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            image = torch.rand(1, size, size, generator=g) * 0.3
            mask = torch.zeros(1, size, size)
            if i % 2 == 0:
                y, x = torch.randint(4, size - 24, (2,), generator=g).tolist()
                mask[:, y : y + 20, x : x + 20] = 1
                image[:, y : y + 20, x : x + 20] += 0.6
            self.items.append({"image": image.clamp(0, 1), "mask": mask, "image_id": f"sq{i}"})
        self.has_pneumothorax = np.array([bool(it["mask"].any()) for it in self.items])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def tiny_config(out: Path, **overrides):
    values = {
        "trainer.out": str(out),
        "trainer.epochs": 1,
        "trainer.progress_bar": False,
        "trainer.accelerator": "cpu",
        "model.encoder": "resnet18",
        "model.encoder_weights": "none",
        "data.size": 64,
        "data.aug": "none",
        "data.batch_size": 4,
        "data.workers": 0,
        "optim.lr": 1e-3,
    }
    values.update(overrides)
    return load_config(overrides=values)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --- fixtures the evaluation, prediction and serving tests can share (candidates for conftest) ---


@pytest.fixture(scope="session")
def tiny_work(tmp_path_factory) -> Path:
    """`ptxseg synth` + `ptxseg prepare` at 64 px: 24 images split into train/val/test."""
    from ptxseg.data.synthetic import generate_dataset
    from ptxseg.data.work_folder import PrepareOptions, prepare_work_folder

    root = tmp_path_factory.mktemp("tiny")
    generate_dataset(root / "siim", n_images=24, size=64, seed=0, positive_fraction=0.5)
    prepare_work_folder(
        root / "siim" / "dicom-images-train",
        root / "siim" / "train-rle.csv",
        root / "work",
        PrepareOptions(size=64, workers=1),
    )
    return root / "work"


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_work, tmp_path_factory) -> Path:
    """`checkpoints/best.ckpt` of a resnet18 U-Net trained 2 epochs on `tiny_work` (64 px)."""
    run = tmp_path_factory.mktemp("tiny-run") / "run"
    config = tiny_config(run, **{"data.work": str(tiny_work), "trainer.epochs": 2})
    return fit(config) / "checkpoints" / "best.ckpt"


# --- small pieces ---


def test_warmup_cosine_schedule():
    factors = [warmup_cosine(e, warmup=2, total=6) for e in range(6)]
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert factors[3:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 4)) for k in (1, 2, 3)])


def test_epoch_metrics_golden_values():
    # tp, fp, fn, tn, competition_sum, images, loss_sum
    values = epoch_metrics(torch.tensor([3.0, 1.0, 2.0, 10.0, 1.5, 2.0, 4.0]))
    assert values["dice"] == pytest.approx(6 / 9)
    assert values["iou"] == pytest.approx(3 / 6)
    assert values["pixel_accuracy"] == pytest.approx(13 / 16)
    assert values["competition_dice"] == pytest.approx(0.75)
    assert values["loss"] == pytest.approx(2.0)


def test_empty_baseline():
    data = SquaresDataset(4)  # two positive, two empty
    assert empty_baseline(data) == {"dice": 0.0, "competition_dice": 0.5}


def test_validation_shards_cover_every_image_once():
    shards = [list(ShardSampler(7, rank, 3)) for rank in range(3)]
    assert sorted(sum(shards, [])) == list(range(7))


def test_each_rank_draws_its_own_share():
    config = tiny_config("unused", **{"data.positive_fraction": 0.5})
    data = SquaresDataset(8)
    loaders = []
    for rank in (0, 1):
        module = SegmentationDataModule(config, data, data)
        module.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        loaders.append(list(module.train_dataloader().sampler))
    assert len(loaders[0]) == len(loaders[1]) == 4
    drawn = loaders[0] + loaders[1]
    assert sum(data.has_pneumothorax[drawn]) == 4  # half of the epoch's 8 draws are positive


# --- training runs ---


class KeepModule(L.Callback):
    def on_fit_end(self, trainer, pl_module):
        self.module = pl_module


def test_fit_writes_the_run_folder_and_the_checkpoint_rebuilds_the_model(tmp_path):
    keep = KeepModule()
    run = fit(tiny_config(tmp_path / "run"), SquaresDataset(8), SquaresDataset(4, seed=1), [keep])
    for name in ("config.yaml", "metrics.csv", "train_summary.json", "checkpoints/best.ckpt"):
        assert (run / name).is_file(), name
    rows = read_rows(run / "metrics.csv")
    assert list(rows[0]) == list(METRIC_COLUMNS) and len(rows) == 1
    assert 0.0 <= float(rows[0]["val_dice"]) <= 1.0 and float(rows[0]["lr"]) == 1e-3
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["best_epoch"] == 0 and summary["train_images"] == 8
    assert summary["schema_version"] == schemas.TRAIN_SUMMARY
    assert summary["empty_baseline_val"] == {"dice": 0.0, "competition_dice": 0.5}
    assert summary["device"] == "cpu" and summary["peak_gpu_mb"] is None
    assert len(summary["epoch_images_per_s"]) == 1 and summary["train_images_per_s"] > 0
    # the wait for the epoch's first batch is kept apart; the rate after it is the higher one
    (first_batch_s,) = summary["epoch_first_batch_s"]
    (after_first,) = summary["epoch_images_per_s_after_first_batch"]
    assert first_batch_s > 0 and after_first >= summary["epoch_images_per_s"][0]
    assert (summary["compile"], summary["channels_last"], summary["augment_on"]) == (
        False,
        False,
        "loader",
    )

    loaded = load_model(run / "checkpoints" / "last.ckpt")
    assert loaded.encoder == "resnet18" and loaded.input_size == 64
    assert loaded.operating_point is None and not loaded.training
    assert loaded.config == load_config(run / "config.yaml").to_dict()
    trained = keep.module.model.eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), trained(x), atol=1e-6)


def test_operating_point_in_checkpoint_is_loaded(tmp_checkpoint_copy):
    from ptxseg.model.operating_point import OperatingPoint

    ckpt = torch.load(tmp_checkpoint_copy, weights_only=True)
    ckpt["ptxseg"]["operating_point"] = {"top": 0.7, "bottom": 0.4, "min_area": 5}
    torch.save(ckpt, tmp_checkpoint_copy)
    assert load_model(tmp_checkpoint_copy).operating_point == OperatingPoint(0.7, 0.4, 5)


@pytest.fixture
def tmp_checkpoint_copy(tiny_checkpoint, tmp_path) -> Path:
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(tiny_checkpoint.read_bytes())
    return copy


def test_empty_validation_split_fails_before_writing(tmp_path):
    with pytest.raises(ValueError, match="val split .*is empty"):
        fit(tiny_config(tmp_path / "run"), SquaresDataset(4), SquaresDataset(0))
    assert not (tmp_path / "run").exists()


def test_resume_continues_from_the_saved_epoch(tmp_path):
    options = {
        "model.aux_head": True,
        "model.decoder_attention": "scse",
        "optim.scheduler": "cosine",
        "optim.warmup_epochs": 1,
    }
    train, val = SquaresDataset(8), SquaresDataset(4, seed=1)
    run = fit(tiny_config(tmp_path / "run", **options), train, val)
    first = read_rows(run / "metrics.csv")
    with pytest.raises(FileExistsError, match="--resume"):
        fit(tiny_config(tmp_path / "run", **options), train, val)
    resumed = load_config(run / "config.yaml", {"trainer.resume": True, "trainer.epochs": 2})
    fit(resumed, train, val)
    rows = read_rows(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert rows[0] == first[0]  # the first epoch is kept, not retrained
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    model = load_model(run / "checkpoints" / "last.ckpt")
    assert model.forward_with_aux(torch.rand(1, 1, 64, 64))[1].shape == (1, 1)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        fit(tiny_config(tmp_path / "empty", **{"trainer.resume": True}), train, val)


def test_device_defaults_are_decided_for_the_accelerator(tmp_path):
    from ptxseg.model.acceleration import cuda_bf16
    from ptxseg.training.fit import resolve_device_defaults

    cpu = resolve_device_defaults(tiny_config(tmp_path, **{"trainer.precision": "auto"}))
    t = cpu.trainer
    assert (t.precision, t.compile, t.channels_last, cpu.data.augment_on) == (
        "32",
        False,
        False,
        "loader",
    )
    gpu = resolve_device_defaults(tiny_config(tmp_path, **{"trainer.accelerator": "gpu"}))
    t = gpu.trainer
    assert (t.compile, t.channels_last, gpu.data.augment_on) == (True, True, "device")
    assert t.precision == "32"  # tiny_config asks for 32; auto would be bf16 on a GPU:
    auto = {"trainer.accelerator": "gpu", "trainer.precision": "auto"}
    expected = "bf16-mixed" if cuda_bf16() else "32"
    assert resolve_device_defaults(tiny_config(tmp_path, **auto)).trainer.precision == expected
    chosen = {"trainer.accelerator": "gpu", "trainer.compile": False, "data.augment_on": "loader"}
    kept = resolve_device_defaults(tiny_config(tmp_path, **chosen))
    assert kept.trainer.compile is False and kept.data.augment_on == "loader"


def _count_augmented_batches(monkeypatch) -> list[int]:
    from ptxseg.training import batch_augment

    seen: list[int] = []
    original = batch_augment.BatchAugment.__call__

    def counting(self, image, mask):
        seen.append(image.shape[0])
        return original(self, image, mask)

    monkeypatch.setattr(batch_augment.BatchAugment, "__call__", counting)
    return seen


def test_device_augmentation_sees_every_training_batch_and_no_validation_batch(
    tmp_path, monkeypatch
):
    seen = _count_augmented_batches(monkeypatch)
    overrides = {"data.augment_on": "device", "data.aug": "full"}
    run = fit(tiny_config(tmp_path / "run", **overrides), SquaresDataset(8), SquaresDataset(4))
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["augment_on"] == "device" and summary["compile"] is False
    assert seen == [4, 4]  # two training batches of 4


@pytest.mark.slow
def test_compiled_step_with_device_augmentation_trains(tmp_path, monkeypatch):
    """The GPU recipe on the CPU: the training step compiled (aot_eager backend: the compiler's
    graph capture without a C++ build), batches augmented after the transfer."""
    monkeypatch.setenv("PTXSEG_COMPILE_BACKEND", "aot_eager")
    seen = _count_augmented_batches(monkeypatch)
    overrides = {"data.augment_on": "device", "data.aug": "full", "trainer.compile": True}
    run = fit(tiny_config(tmp_path / "run", **overrides), SquaresDataset(8), SquaresDataset(4))
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["compile"] is True and summary["augment_on"] == "device" and seen == [4, 4]
    assert load_model(run / "checkpoints" / "best.ckpt").encoder == "resnet18"


def test_cli_trains_on_prepared_data(tiny_work, tmp_path, capsys):
    from ptxseg.cli import main

    out = tmp_path / "cli-run"
    args = ["train", "--data", str(tiny_work), "--config", "demo", "--encoder", "resnet18"]
    args += ["--aug", "full", "--epochs", "1", "--limit-batches", "2", "--out", str(out)]
    args += ["--no-progress", "--positive-fraction", "0.5"]
    try:
        main(args)
    except SystemExit as exit_:
        assert exit_.code in (0, None), capsys.readouterr().out
    assert "best val Dice" in capsys.readouterr().out
    config = load_config(out / "config.yaml")
    assert config.data.aug == "full" and config.model.encoder == "resnet18"
    assert config.data.work == str(tiny_work)
    assert load_model(out / "checkpoints" / "best.ckpt").input_size == 64


def test_tiny_checkpoint_fixture(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    assert model.config["data"]["size"] == 64
    with torch.no_grad():
        assert model(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_benchmark_training_writes_rows_and_error_cells(tiny_work, tmp_path):
    from ptxseg.cli import main

    out = tmp_path / "bench"
    args = ["benchmark-training", "--data", str(tiny_work), "--encoders", "resnet18,resnet51"]
    args += ["--size", "64", "--batch-size", "2", "--steps", "1", "--workers", "0"]
    args += ["--out", str(out), "--device", "cpu"]
    try:
        main(args)
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    rows = read_rows(out / "training_benchmark.csv")
    assert [r["encoder"] for r in rows] == ["resnet18", "resnet51"]
    assert float(rows[0]["loader_images_per_s"]) > 0 and float(rows[0]["model_images_per_s"]) > 0
    assert rows[0]["error"] == "" and "unknown encoder 'resnet51'" in rows[1]["error"]
    assert "Loader overhead" in (out / "training_benchmark.md").read_text()


@pytest.mark.slow
def test_ddp_two_cpu_processes(tiny_work, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "ptxseg", "train", "--data", str(tiny_work)]
    command += ["--config", "demo", "--encoder", "resnet18", "--aug", "none", "--epochs", "1"]
    command += ["--devices", "2", "--accelerator", "cpu", "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    assert len(read_rows(out / "metrics.csv")) == 1
    load_model(out / "checkpoints" / "best.ckpt")


@pytest.mark.slow
def test_overfits_a_handful_of_images(tmp_path):
    data = SquaresDataset(6, seed=3)
    config = tiny_config(
        tmp_path / "overfit",
        **{"trainer.epochs": 60, "data.batch_size": 6, "optim.lr": 3e-3, "optim.patience": 60},
    )
    run = fit(config, data, data)
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["best_val_dice"] > 0.9


# --- command-line mistakes: one line, exit code 2, nothing written ---


def _train_cli(args: list[str]) -> int:
    from ptxseg.cli import main

    try:
        main(
            ["train", "--no-progress", "--encoder", "resnet18", "--encoder-weights", "none", *args]
        )
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


@pytest.mark.parametrize(
    "value, message",
    [
        (
            "0.01",
            "--limit-batches 0.01 keeps none of the 2 training batches per epoch: use at least 0.5",
        ),
        ("-1", "'trainer.limit_batches' = -1.0: expected a fraction of the batches in (0, 1]"),
        ("0", "'trainer.limit_batches' = 0.0: expected a fraction"),
        ("2.5", "'trainer.limit_batches' = 2.5: expected"),
    ],
)
def test_cli_bad_limit_batches_is_a_one_line_error(tiny_work, tmp_path, capsys, value, message):
    out = tmp_path / "run"
    args = ["--data", str(tiny_work), "--size", "64", "--epochs", "1", "--batch-size", "8"]
    assert _train_cli([*args, f"--limit-batches={value}", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()  # no config.yaml, no train_summary.json naming a missing checkpoint


def test_cli_trains_at_the_one_cached_size(tiny_work, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--data", str(tiny_work), "--epochs", "1", "--limit-batches", "1", "--out", str(out)]
    assert _train_cli(args) == 0  # the default config says 256; the work folder holds 64
    assert "training at 64 px, the size cached in" in capsys.readouterr().out
    assert load_config(out / "config.yaml").data.size == 64
    summary = json.loads((out / "train_summary.json").read_text())
    assert (out / summary["best_checkpoint"]).is_file()


def test_cli_with_several_cached_sizes_names_them(tiny_work, tmp_path, capsys):
    work = tmp_path / "work"
    shutil.copytree(tiny_work, work)
    (work / "cache" / "128").mkdir()
    assert _train_cli(["--data", str(work), "--out", str(tmp_path / "run")]) == 2
    assert "has caches at 64, 128 px, not at the configured 256: choose one with --size" in (
        capsys.readouterr().err
    )


def test_a_resumed_run_ends_with_the_weights_of_a_run_that_went_straight_through(
    tiny_work, tmp_path
):
    """Each epoch's augmentations are seeded from (seed, rank, epoch): a crash costs time only."""
    options = {
        "data.work": str(tiny_work),
        "data.aug": "full",
        "trainer.seed": 5,
        "trainer.limit_batches": 2,
    }
    straight = fit(tiny_config(tmp_path / "straight", **options, **{"trainer.epochs": 2}))
    fit(tiny_config(tmp_path / "resumed", **options))
    resumed = tmp_path / "resumed"
    fit(load_config(resumed / "config.yaml", {"trainer.resume": True, "trainer.epochs": 2}))
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.gpu
def test_gpu_run_records_its_device_and_memory(tmp_path):
    overrides = {"trainer.accelerator": "gpu", "trainer.precision": "auto"}
    run = fit(tiny_config(tmp_path / "run", **overrides), SquaresDataset(16), SquaresDataset(8))
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["peak_gpu_mb"] > 0
    assert summary["gpu"] and summary["compile"] is True and summary["augment_on"] == "device"


@pytest.fixture(scope="module")
def folds_work(tmp_path_factory) -> Path:
    """A 32 px work folder with 3 cross-validation folds."""
    from siim_folders import make_siim_folder

    from ptxseg.data.work_folder import PrepareOptions, prepare_work_folder

    root = tmp_path_factory.mktemp("folds")
    images, csv_path, _ = make_siim_folder(root / "siim", n=30, size=32)
    prepare_work_folder(
        images, csv_path, root / "work", PrepareOptions(size=32, val=0.2, test=0.2, folds=3)
    )
    return root / "work"


@pytest.mark.parametrize("place", ["loader", "device"])
@pytest.mark.parametrize("fold", [None, 1])
def test_data_module_augments_in_one_place_only(folds_work, place, fold):
    """Loader augmentation: float items, transformed. Device augmentation: the cache's uint8
    rows untransformed (a quarter of the bytes to the GPU), made float after the transfer.
    The same for a fold's datasets."""
    overrides = {"data.work": str(folds_work), "data.size": 32, "data.augment_on": place}
    overrides.update({"data.aug": "full", "data.fold": fold, "data.batch_size": 4})
    data = SegmentationDataModule(tiny_config(Path("unused"), **overrides))
    data.setup("fit")
    expected = torch.uint8 if place == "device" else torch.float32
    assert data.train_dataset[0]["image"].dtype == expected
    assert data.val_dataset[0]["mask"].dtype == expected
    parts = getattr(data.train_dataset, "parts", [data.train_dataset])
    assert all((p.transform is None) == (place == "device") for p in parts)
    batch = next(iter(data.val_dataloader()))
    converted = data.on_after_batch_transfer(batch, 0)  # outside a Trainer: only converts
    assert converted["image"].dtype == torch.float32 and float(converted["image"].max()) <= 1
    assert set(converted["mask"].unique().tolist()) <= {0.0, 1.0}


def test_the_progress_bar_shows_no_logger_version():
    from types import SimpleNamespace

    from ptxseg.training.fit import progress_bar_without_version

    trainer = SimpleNamespace(
        loggers=[SimpleNamespace(version="tensorboard")], progress_bar_metrics={"train/loss": 0.5}
    )
    assert progress_bar_without_version().get_metrics(trainer, None) == {"train/loss": 0.5}
