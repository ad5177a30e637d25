"""The Lightning pieces of training: the module (loss, metrics, optimiser) and the data module.

Metrics come from per-image confusion counts (`ptxseg.model.metrics`) at probability 0.5, summed
over the epoch and over all processes, so Dice, IoU and pixel accuracy are pooled over the split and
the competition Dice is the mean per-image Dice with empty/empty = 1, also under DDP. The sums stay
on the device during the epoch: a step never waits for the GPU to report a number.

On a GPU (see `ptxseg.model.acceleration`) the training step (model, loss and counts) is compiled
with `torch.compile`, Adam is the fused kernel, and augmentation runs on the batch after its
transfer (`ptxseg.training.batch_augment`) when `data.augment_on` says so.
"""

from __future__ import annotations

import functools
import math
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ptxseg.config import TrainConfig
from ptxseg.model import metrics
from ptxseg.model.acceleration import compile_function
from ptxseg.model.losses import aux_loss, build_loss
from ptxseg.model.unet import build_model
from ptxseg.util import atomic

STAT_NAMES = ("tp", "fp", "fn", "tn", "competition_sum", "images", "loss_sum")
METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_dice",
    "val_iou",
    "val_pixel_accuracy",
    "val_competition_dice",
    "lr",
)


def write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The tidy per-epoch table: one row per epoch with the columns of `METRIC_COLUMNS`."""
    atomic.write_csv(path, METRIC_COLUMNS, rows)


def epoch_metrics(stats: torch.Tensor) -> dict[str, float]:
    """Dice, IoU, pixel accuracy (pooled), competition Dice and mean loss from summed stats."""
    tp, fp, fn, tn, comp, n, loss_sum = (float(v) for v in stats)
    return {
        "loss": loss_sum / n if n else math.nan,
        "dice": float(metrics.dice_scores(tp, fp, fn)),
        "iou": float(metrics.iou_scores(tp, fp, fn)),
        "pixel_accuracy": float(metrics.pixel_accuracy_scores(tp, fp, fn, tn)),
        "competition_dice": comp / n if n else math.nan,
    }


class SegmentationModule(L.LightningModule):
    """U-Net training: combo loss (+ auxiliary empty/non-empty BCE), Adam, plateau or cosine lr."""

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.config = config
        self.model = build_model(config)  # also resolves config.model.mean/std
        self.loss = build_loss(config.loss)
        self.epoch_rows: list[dict[str, Any]] = []
        self.metrics_path: Path | None = None  # where rank 0 rewrites metrics.csv every epoch
        self._stats: dict[str, torch.Tensor] = {}
        self._reset("train")
        self._reset("val")
        self._train_step = self._compute  # replaced by its compiled form in setup() when asked

    def _reset(self, stage: str) -> None:
        self._stats[stage] = torch.zeros(len(STAT_NAMES), dtype=torch.float64, device=self.device)

    def setup(self, stage: str) -> None:
        t = self.config.trainer
        if t.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if t.compile:
            self._train_step = compile_function(self._compute)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _compute(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(loss, auxiliary loss or None, summed stats of STAT_NAMES) of one batch, on device."""
        logits, label_logits = self.model.forward_with_aux(image)
        loss = self.loss(logits, mask)
        aux = None
        if label_logits is not None:
            aux = aux_loss(label_logits, mask)
            loss = loss + self.config.loss.aux_weight * aux
        n = image.shape[0]
        counts = metrics.count_stats(logits.detach() > 0, mask > 0.5)
        extra = torch.stack([torch.ones_like(loss.detach()) * n, loss.detach() * n]).double()
        return loss, aux, torch.cat([counts, extra])

    def step_outputs(
        self, image: torch.Tensor, mask: torch.Tensor, train: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(loss, auxiliary loss or None, summed stats) of a batch on the module's device.

        Only the training step is compiled: validation's last batch has another shape, and its
        no-grad graph would be a second compilation for a tenth of the images.
        """
        if self.config.trainer.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return (self._train_step if train else self._compute)(image, mask)

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        image, mask = batch["image"], batch["mask"]
        loss, aux, stats = self.step_outputs(image, mask, train=stage == "train")
        if aux is not None:
            self.log(f"{stage}/aux_loss", aux, on_step=False, on_epoch=True, sync_dist=True)
        self.log(
            f"{stage}/loss",
            loss,
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            batch_size=image.shape[0],
        )
        if self._stats[stage].device != stats.device:
            self._stats[stage] = self._stats[stage].to(stats.device)
        self._stats[stage] += stats.detach()
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_train_epoch_start(self) -> None:
        self._reset("train")
        # Epoch schedulers step before the epoch-end hooks: note the lr this epoch trains with.
        self._epoch_lr = self.optimizers().param_groups[0]["lr"]

    def on_validation_epoch_start(self) -> None:
        self._reset("val")

    def _reduced(self, stage: str) -> dict[str, float]:
        stats = self._stats[stage].to(self.device)
        if self.trainer.world_size > 1:
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
        return epoch_metrics(stats.cpu())

    def on_validation_epoch_end(self) -> None:
        values = self._reduced("val")
        for name in ("dice", "iou", "pixel_accuracy", "competition_dice"):
            self.log(f"val/{name}", values[name], sync_dist=False)
        self._last_val = values

    def on_train_epoch_end(self) -> None:
        values = self._reduced("train")
        for name in ("dice", "iou", "pixel_accuracy"):
            self.log(f"train/{name}", values[name], sync_dist=False)
        val = getattr(self, "_last_val", None) or {}
        self.epoch_rows.append(
            {
                "epoch": self.current_epoch,
                "train_loss": values["loss"],
                "train_dice": values["dice"],
                "val_loss": val.get("loss", math.nan),
                "val_dice": val.get("dice", math.nan),
                "val_iou": val.get("iou", math.nan),
                "val_pixel_accuracy": val.get("pixel_accuracy", math.nan),
                "val_competition_dice": val.get("competition_dice", math.nan),
                "lr": self._epoch_lr,
            }
        )
        if self.metrics_path is not None and self.trainer.is_global_zero:
            write_metrics_csv(self.metrics_path, self.epoch_rows)

    def configure_optimizers(self) -> dict:
        o = self.config.optim
        # The fused kernel updates every parameter in one launch on a GPU.
        fused = self.device.type == "cuda"
        optimizer = torch.optim.Adam(
            self.parameters(), lr=o.lr, weight_decay=o.weight_decay, fused=fused or None
        )
        if o.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=o.lr_factor, patience=o.lr_patience
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {
                    "scheduler": scheduler,
                    "monitor": "val/dice",
                    "interval": "epoch",
                },
            }
        lr_lambda = functools.partial(
            warmup_cosine, warmup=o.warmup_epochs, total=self.config.trainer.epochs
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ptxseg"] = {"config": self.config.to_dict(), "operating_point": None}
        checkpoint["ptxseg_epoch_rows"] = list(self.epoch_rows)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.epoch_rows = list(checkpoint.get("ptxseg_epoch_rows", []))


def warmup_cosine(epoch: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over `warmup` epochs, then cosine decay towards 0."""
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(epoch - warmup, span) / span))


class ShardSampler(Sampler[int]):
    """Validation order for one process of several: every `world`-th image, no padding."""

    def __init__(self, length: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, length, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EpochSeeded(Sampler[int]):
    """Another sampler's order; its iteration first seeds the global generators from (seed,
    rank, epoch).

    An epoch then draws the same augmentations whether the run went straight through or was
    resumed from `last.ckpt` after a crash, so the resumed run ends with the same weights. The
    seeding sits here because this is where an epoch's data begins: Lightning fetches the first
    batch of a run before `on_train_epoch_start`. DataLoader worker processes keep their own
    generators: with `data.workers > 0` a resumed run repeats the order, not each augmentation.
    """

    def __init__(self, sampler: Sampler, seed: int, rank: int) -> None:
        self.sampler, self.seed, self.rank, self.epoch = sampler, seed, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        seed = int(np.random.SeedSequence([self.seed, self.rank, self.epoch]).generate_state(1)[0])
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        yield from self.sampler


def optional_transform(strategy: str, size: int):
    """The named augmentation from `ptxseg.training.augmentations`; `none` works without it."""
    try:
        from ptxseg.training.augmentations import build_transform as build
    except ImportError:
        if strategy == "none":
            return None
        raise ValueError(
            f"augmentation {strategy!r} needs ptxseg.training.augmentations, which is not "
            "available; use --aug none"
        ) from None
    return build(strategy, size)


class SegmentationDataModule(L.LightningDataModule):
    """Train and validation loaders over the cache; the positive-fraction sampler shards per rank.

    Datasets can be passed in (any dataset of `{"image", "mask", "image_id"}` items with a
    `has_pneumothorax` array); otherwise they are read from `config.data.work`.
    """

    def __init__(
        self,
        config: TrainConfig,
        train_dataset: Dataset | None = None,
        val_dataset: Dataset | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.batch_augment = None  # a BatchAugment when augmentation runs on the device
        self._augment_epoch: int | None = None

    def setup(self, stage: str | None = None) -> None:
        d = self.config.data
        if d.augment_on == "device" and d.aug != "none":
            from ptxseg.training.batch_augment import BatchAugment

            self.batch_augment = BatchAugment(d.aug, d.size)
        if self.train_dataset is None or self.val_dataset is None:
            from ptxseg.data.dataset import SegmentationDataset

            if not d.work:
                raise ValueError("no training data: set --data WORK (a `ptxseg prepare` folder)")
            # Augmented here, in the loader workers, or on the device after the transfer
            # (on_after_batch_transfer): then the loader ships the cache's uint8 rows, a
            # quarter of the bytes, and the device makes them float.
            on_device = d.augment_on == "device"
            transform = None if on_device else optional_transform(d.aug, d.size)
            if d.fold is not None:  # train on the other folds, validate on this one
                from ptxseg.data.folds import fold_datasets

                train, val = fold_datasets(d.work, d.size, d.fold, transform, raw=on_device)
                if self.train_dataset is None:
                    self.train_dataset = train
                if self.val_dataset is None:
                    self.val_dataset = val
            if self.train_dataset is None:
                self.train_dataset = SegmentationDataset(
                    d.work, "train", d.size, transform, raw=on_device
                )
            if self.val_dataset is None:
                self.val_dataset = SegmentationDataset(d.work, "val", d.size, raw=on_device)
        for name, dataset in (("train", self.train_dataset), ("val", self.val_dataset)):
            if len(dataset) == 0:
                raise ValueError(
                    f"the {name} split{(' of ' + d.work) if d.work else ''} is empty: early "
                    f"stopping and checkpoints need both; prepare more images or a larger --val"
                )

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Make a raw (uint8) batch float where it now is (the GPU), and augment a training
        batch there when augmentation runs there."""
        from ptxseg.data.dataset import batch_to_float

        batch = dict(batch)
        batch["image"], batch["mask"] = batch_to_float(batch["image"], batch["mask"])
        trainer = self.trainer
        if self.batch_augment is None or trainer is None or not trainer.training:
            return batch
        epoch, rank = trainer.current_epoch, trainer.global_rank
        if self._augment_epoch != epoch:  # a fresh, repeatable stream per epoch and process
            self._augment_epoch = epoch
            self.batch_augment.reseed(self.config.trainer.seed, rank, epoch)
        batch["image"], batch["mask"] = self.batch_augment(batch["image"], batch["mask"])
        return batch

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, dataset: Dataset, sampler: Sampler, drop_last: bool) -> DataLoader:
        from lightning.fabric.utilities.seed import pl_worker_init_function

        d = self.config.data
        rank, _ = self._rank_world()
        return DataLoader(
            dataset,
            batch_size=d.batch_size,
            sampler=sampler,
            num_workers=d.workers,
            pin_memory=torch.cuda.is_available(),
            drop_last=drop_last,
            persistent_workers=d.workers > 0,
            worker_init_fn=functools.partial(pl_worker_init_function, rank=rank),
        )

    def train_dataloader(self) -> DataLoader:
        from ptxseg.data.dataset import PositiveFractionSampler

        d = self.config.data
        rank, world = self._rank_world()
        sampler = PositiveFractionSampler(
            np.asarray(self.train_dataset.has_pneumothorax),
            positive_fraction=d.positive_fraction,
            num_samples=d.samples_per_epoch,
            seed=self.config.trainer.seed,
            num_replicas=world,
            rank=rank,
            epochs=self.config.trainer.epochs,
        )
        # A last batch of one image would break BatchNorm; drop it when there are full batches.
        seeded = EpochSeeded(sampler, self.config.trainer.seed, rank)
        return self._loader(self.train_dataset, seeded, drop_last=len(sampler) > d.batch_size)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        sampler = ShardSampler(len(self.val_dataset), rank, world)
        return self._loader(self.val_dataset, sampler, drop_last=False)
