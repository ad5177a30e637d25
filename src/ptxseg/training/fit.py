"""`fit(config)`: one training run with Lightning, written to a run folder.

The run folder holds `config.yaml` (the resolved config), `checkpoints/best.ckpt` and
`checkpoints/last.ckpt` (training checkpoints with the optimizer state, for --resume), `model/`
(the best weights as an inference-model folder in safetensors: what predict, serve and export
share; see `ptxseg.model.checkpoint`; with `--average-top N` the weight average of the N best
epochs, `checkpoints/averaged.ckpt`, see `ptxseg.training.averaging`), `metrics.csv` (one tidy
row per epoch), `logs/` (CSV and TensorBoard logs of Lightning) and `train_summary.json` (best
epoch, speed, memory, the device and the all-empty baseline to compare with).

Settings left to the device (`auto` precision and augmentation place, unset compile and
channels_last) are decided here, before the config is saved, by `ptxseg.model.acceleration`:
a GPU trains compiled, in bf16-mixed, channels_last, augmenting on the device.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import Dataset

from ptxseg.config import TrainConfig, apply_overrides, save_config
from ptxseg.model import metrics
from ptxseg.model.acceleration import (
    resolve_channels_last,
    resolve_compile,
    resolve_training_precision,
    use_fast_float32,
)
from ptxseg.model.checkpoint import check_resumable, export_inference_model
from ptxseg.training.averaging import average_run, top_checkpoints
from ptxseg.training.module import (
    SegmentationDataModule,
    SegmentationModule,
    write_metrics_csv,
)
from ptxseg.util import schemas
from ptxseg.util.jsonio import write_json
from ptxseg.util.run_folders import RunFolder
from ptxseg.util.system import gpu_description, peak_rss_mb

INFERENCE_MODEL = RunFolder.MODEL
"""The run folder's inference-model folder (weights, config, operating point)."""


class RunRecorder(L.Callback):
    """Times each training epoch end to end (loader waits included, validation excluded).

    The clock runs from the start of an epoch's training batches to the start of its validation
    and waits for the device only there, never per step. Also kept apart: the wait for an epoch's
    first batch (the loader starting the epoch, a fixed cost that short epochs feel most) and the
    rate once that batch is in hand. Records the device trained on, since Lightning moves the
    module back to the CPU when `fit` returns.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.train_seconds = 0.0
        self.train_images = 0
        self.epoch_images_per_s: list[float] = []
        self.epoch_first_batch_s: list[float] = []  # epoch start -> its first batch in hand
        self.epoch_images_per_s_after_first_batch: list[float] = []
        self.device: torch.device | None = None
        self._t0: float | None = None
        self._first: float | None = None
        self._images = 0

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_start(self, trainer, pl_module) -> None:
        self.device = trainer.strategy.root_device

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sync()
        self._t0, self._images = time.perf_counter(), 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._first is None and self._t0 is not None:
            self._first = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._images += int(batch["image"].shape[0]) * trainer.world_size

    def _stop(self) -> None:
        if self._t0 is None:
            return
        self._sync()
        end = time.perf_counter()
        seconds = end - self._t0
        if seconds > 0 and self._images:
            self.epoch_images_per_s.append(round(self._images / seconds, 2))
            if self._first is not None and end > self._first:
                self.epoch_first_batch_s.append(round(self._first - self._t0, 3))
                steady = self._images / (end - self._first)
                self.epoch_images_per_s_after_first_batch.append(round(steady, 2))
        self._t0 = self._first = None
        self.train_seconds += seconds
        self.train_images += self._images

    def on_validation_start(self, trainer, pl_module) -> None:
        self._stop()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop()

    def peak_gpu_mb(self) -> float | None:
        """The most GPU memory PyTorch allocated while training, or None off CUDA."""
        if self.device is None or self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**20


def empty_baseline(dataset: Dataset) -> dict[str, float]:
    """Dice and competition Dice of predicting every mask empty on `dataset`."""
    tp = fp = tn = 0
    fns = []
    for i in range(len(dataset)):
        mask = dataset[i]["mask"] > 0.5
        fns.append(int(mask.sum()))
        tn += int(mask.numel() - mask.sum())
    fn = sum(fns)
    return {
        "dice": float(metrics.dice_scores(tp, fp, fn)),
        "competition_dice": float(metrics.dice_scores([0] * len(fns), [0] * len(fns), fns).mean())
        if fns
        else math.nan,
    }


def _accelerator(config: TrainConfig) -> str:
    accel = config.trainer.accelerator
    if accel == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return accel


def resolve_device_defaults(config: TrainConfig) -> TrainConfig:
    """The config with every device-dependent default decided for the accelerator it will use."""
    device = "cuda" if _accelerator(config) in ("gpu", "cuda") else "cpu"
    t, d = config.trainer, config.data
    place = d.augment_on
    if place == "auto":
        place = "device" if device == "cuda" else "loader"
    return apply_overrides(
        config,
        {
            "trainer.precision": resolve_training_precision(t.precision, device),
            "trainer.channels_last": resolve_channels_last(t.channels_last, device),
            "trainer.compile": resolve_compile(t.compile, device),
            "data.augment_on": place,
        },
    )


def _strategy(config: TrainConfig) -> str:
    t = config.trainer
    if t.devices * t.num_nodes > 1:
        # find_unused_parameters stays off: every parameter takes part in the loss.
        return "ddp"
    return "auto"


def _free_version(folder: Path, name: str) -> str:
    """`name`, or `name-1`, `name-2`... so a resumed run never overwrites earlier logs."""
    version, n = name, 0
    while (folder / version).exists():
        n += 1
        version = f"{name}-{n}"
    return version


def _callbacks(config: TrainConfig, run_dir: Path) -> list:
    """The best and the last checkpoint, early stopping and the learning-rate monitor."""
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

    return [
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="best",
            monitor="val/dice",
            mode="max",
            save_top_k=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        # `save_last=True` only writes when the best one changed; an unmonitored checkpoint
        # rewritten every epoch is what --resume needs.
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="last",
            save_top_k=1,
            every_n_epochs=1,
            enable_version_counter=False,
        ),
        EarlyStopping(monitor="val/dice", mode="max", patience=config.optim.patience),
        LearningRateMonitor(logging_interval="epoch"),
    ]


def progress_bar_without_version():
    """Lightning's rich progress bar without its `v_num` item: the version of the last logger,
    cut to four characters, which for the TensorBoard logger's "tensorboard" reads "oard"."""
    from lightning.pytorch.callbacks import RichProgressBar

    class _Bar(RichProgressBar):
        def get_metrics(self, trainer, pl_module):
            items = super().get_metrics(trainer, pl_module)
            items.pop("v_num", None)
            return items

    return _Bar()


def build_trainer(
    config: TrainConfig, run_dir: Path, extra_callbacks: list | None = None
) -> tuple[L.Trainer, RunRecorder]:
    """The Lightning trainer with checkpoints, early stopping, lr monitor, progress and loggers."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    t = config.trainer
    recorder = RunRecorder(run_dir)
    callbacks = [*_callbacks(config, run_dir), recorder, *(extra_callbacks or [])]
    if t.progress_bar:
        callbacks.append(progress_bar_without_version())
    loggers = [
        CSVLogger(save_dir=run_dir, name="logs", version=_free_version(run_dir / "logs", "csv")),
        TensorBoardLogger(save_dir=run_dir, name="logs", version="tensorboard"),
    ]
    limit: Any = t.limit_batches
    if limit is not None and limit > 1:
        limit = int(limit)
    trainer = L.Trainer(
        max_epochs=t.epochs,
        accelerator=_accelerator(config),
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=_strategy(config),
        precision=t.precision,
        callbacks=callbacks,
        logger=loggers,
        use_distributed_sampler=False,  # the data module shards its own samplers per rank
        num_sanity_val_steps=0,
        limit_train_batches=limit,
        limit_val_batches=limit,
        log_every_n_steps=1,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        default_root_dir=run_dir,
        # Fixed batch shapes: let cuDNN time its algorithms once and keep the fastest.
        benchmark=_accelerator(config) in ("gpu", "cuda"),
    )
    return trainer, recorder


def fit(
    config: TrainConfig,
    train_dataset: Dataset | None = None,
    val_dataset: Dataset | None = None,
    callbacks: list | None = None,
) -> Path:
    """Train one model as the config says and return the run folder.

    With `config.trainer.resume` it continues from `checkpoints/last.ckpt` of the same folder, at
    the saved epoch. Datasets may be passed in; otherwise they are read from `config.data.work`.
    `callbacks` are extra Lightning callbacks.
    """
    run_dir = Path(config.trainer.out)
    last = RunFolder(run_dir).last_checkpoint
    if config.trainer.resume and not last.is_file():
        raise FileNotFoundError(f"cannot resume: {last} not found; train without --resume first")
    if config.trainer.resume:
        check_resumable(last)  # a damaged file: one line (CheckpointError), before any write
    if not config.trainer.resume and last.is_file():
        raise FileExistsError(
            f"run folder {run_dir} already holds checkpoints: continue it with --resume, or "
            f"choose another --out"
        )
    config = resolve_device_defaults(config)
    use_fast_float32("cuda" if _accelerator(config) in ("gpu", "cuda") else "cpu")
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    module = SegmentationModule(config)  # resolves the normalisation into the config
    module.metrics_path = RunFolder(run_dir).metrics
    data = SegmentationDataModule(config, train_dataset, val_dataset)
    data.setup("fit")  # bad data fails here, before anything is written
    check_batch_limit(config, data)
    top = (
        top_checkpoints(run_dir, config.trainer.average_top)
        if config.trainer.average_top > 1
        else None
    )
    extra = [*(callbacks or []), *([top] if top is not None else [])]
    trainer, recorder = build_trainer(config, run_dir, extra)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, RunFolder(run_dir).config)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if config.trainer.resume else None)
    wall = time.perf_counter() - start
    if trainer.is_global_zero:
        write_metrics_csv(RunFolder(run_dir).metrics, module.epoch_rows)
        best = RunFolder(run_dir).best_checkpoint
        averaged = (
            average_run(run_dir, config, top, data, module.device) if top is not None else None
        )
        if averaged and "checkpoint" in averaged:  # the average is what the run ships
            best = run_dir / averaged["checkpoint"]
        if best.is_file():  # what predict, serve and users share: weights without optimizer state
            export_inference_model(best, run_dir / INFERENCE_MODEL)
        summary = _summary(config, module, trainer, recorder, data, wall)
        summary["averaged"] = averaged
        write_json(RunFolder(run_dir).train_summary, summary)
    return run_dir


def at_cached_size(config: TrainConfig, say=print) -> TrainConfig:
    """The config with the one size cached in its work folder, when it asked for another.

    The size came from a preset or the default, not from --size: with one cached size that size
    is used (and said); with several the ValueError lists them."""
    from ptxseg.data.dataset import available_sizes

    sizes = available_sizes(config.data.work)
    if not sizes or config.data.size in sizes:
        return config
    if len(sizes) > 1:
        raise ValueError(
            f"{config.data.work} has caches at {', '.join(map(str, sizes))} px, not at the "
            f"configured {config.data.size}: choose one with --size"
        )
    say(
        f"training at {sizes[0]} px, the size cached in {config.data.work} "
        f"(the config says {config.data.size}; --size or `ptxseg prepare --size` for another)"
    )
    return apply_overrides(config, {"data.size": sizes[0]})


def check_batch_limit(config: TrainConfig, data: SegmentationDataModule) -> None:
    """A fraction of the batches that keeps none of them is an error, before anything runs."""
    limit = config.trainer.limit_batches
    if limit is None or limit > 1:
        return
    world = config.trainer.devices * config.trainer.num_nodes
    for name, loader in (
        ("training", data.train_dataloader()),
        ("validation", data.val_dataloader()),
    ):
        n = len(loader) // world
        if int(n * limit) < 1:
            least = 1 / n if n else 1.0
            raise ValueError(
                f"--limit-batches {limit:g} keeps none of the {n} {name} batches per epoch: use "
                f"at least {math.ceil(least * 100) / 100:g}, or a whole number of batches such as 1"
            )


def _summary(config, module, trainer, recorder, data, wall: float) -> dict[str, Any]:
    run_dir = Path(config.trainer.out)
    rows = module.epoch_rows
    finite = [r for r in rows if not math.isnan(r["val_dice"])]
    best = max(finite, key=lambda r: r["val_dice"]) if finite else None
    gpu_mb = recorder.peak_gpu_mb()
    rates = recorder.epoch_images_per_s
    device = recorder.device if recorder.device is not None else module.device
    return {
        "schema_version": schemas.TRAIN_SUMMARY,
        "encoder": config.model.encoder,
        "epochs_run": len(rows),
        "best_epoch": best["epoch"] if best else None,
        "best_val_dice": best["val_dice"] if best else None,
        "best_val_competition_dice": best["val_competition_dice"] if best else None,
        "wall_time_s": round(wall, 2),
        "train_images": recorder.train_images,
        "train_images_per_s": round(recorder.train_images / recorder.train_seconds, 2)
        if recorder.train_seconds
        else None,
        "epoch_images_per_s": rates,
        # the wait for each epoch's first batch, and the rate once it was in hand
        "epoch_first_batch_s": recorder.epoch_first_batch_s,
        "epoch_images_per_s_after_first_batch": recorder.epoch_images_per_s_after_first_batch,
        "train_images_per_s_after_first_epoch": round(
            sum(rates[1:]) / len(rates[1:]), 2
        )  # the first epoch includes compilation and warm-up
        if len(rates) > 1
        else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_gpu_mb": round(gpu_mb, 1) if gpu_mb is not None else None,
        "device": str(device),
        "gpu": gpu_description() if device.type == "cuda" else None,
        "torch": torch.__version__,
        "world_size": trainer.world_size,
        "precision": config.trainer.precision,
        "channels_last": config.trainer.channels_last,
        "compile": config.trainer.compile,
        "augment_on": config.data.augment_on,
        "empty_baseline_val": empty_baseline(data.val_dataset),
        "best_checkpoint": "checkpoints/best.ckpt"
        if RunFolder(run_dir).best_checkpoint.is_file()
        else None,
        "inference_model": INFERENCE_MODEL if (run_dir / INFERENCE_MODEL).is_dir() else None,
    }
