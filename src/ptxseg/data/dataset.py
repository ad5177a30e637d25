"""Reading the work folder that `ptxseg prepare` writes: manifest, split, cached arrays, sampler.

Training reads uint8 arrays through memory maps, so no DICOM is decoded while a model waits.
Layout (see docs/design.md): `manifest.csv`, `splits.json`, and per size and split
`cache/<size>/<split>-{images,masks}.npy` with `cache/<size>/<split>-ids.json`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ptxseg.data.rle import read_annotations, rles_to_mask
from ptxseg.util.schedule import PositiveFraction

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.csv"
SPLITS_FILE = "splits.json"
ANNOTATIONS = "annotations.csv"


def array_cache_dir(work: str | Path, size: int) -> Path:
    return Path(work) / "cache" / str(size)


def cache_paths(work: str | Path, size: int, split: str) -> dict[str, Path]:
    """The three files that hold one split at one size."""
    folder = array_cache_dir(work, size)
    return {
        "images": folder / f"{split}-images.npy",
        "masks": folder / f"{split}-masks.npy",
        "ids": folder / f"{split}-ids.json",
    }


def available_sizes(work: str | Path) -> list[int]:
    root = Path(work) / "cache"
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())


def read_manifest(work: str | Path) -> list[dict[str, str]]:
    """The manifest rows as dicts of strings (one per image)."""
    path = Path(work) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run `ptxseg prepare --images DIR --annotations CSV "
            f"--out {work}` first"
        )
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_splits(work: str | Path) -> dict:
    path = Path(work) / SPLITS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `ptxseg prepare ... --out {work}` first")
    return json.loads(path.read_text())


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")


def batch_to_float(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Items or batches as the cache holds them (uint8) -> what the model takes: the image in
    [0, 1] and the mask 0/1, float32, the same numbers `SegmentationDataset` gives; float ones
    pass unchanged. Raw batches cross to the GPU at a quarter of the bytes and are made float
    there."""
    if image.dtype == torch.uint8:
        image = image.float().div_(255)
    if mask.dtype == torch.uint8:
        mask = mask.float()
    return image, mask


class SegmentationDataset(Dataset):
    """One split of the cache at one size; items are dicts of image, mask and image_id.

    Items are float32 (image in [0, 1], `transform` applied), or with `raw` the uint8 rows of
    the cache, for batches that `batch_to_float` converts (and augments) on the device.
    The arrays are opened lazily in each process (memory maps do not survive pickling into
    DataLoader workers well), and only the rows that are asked for are read from disk.
    """

    def __init__(
        self,
        work: str | Path,
        split: str,
        size: int,
        transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
        | None = None,
        raw: bool = False,
    ) -> None:
        _check_split(split)
        if raw and transform is not None:
            raise ValueError(
                "raw (uint8) items cannot be transformed: augment after batch_to_float"
            )
        self.work, self.split, self.size, self.transform = Path(work), split, int(size), transform
        self.raw = raw
        self.paths = cache_paths(work, size, split)
        if not self.paths["ids"].is_file():
            have = available_sizes(work)
            raise FileNotFoundError(
                f"no cache for split {split!r} at size {size} in {self.work} "
                f"(sizes cached: {have or 'none'}): run `ptxseg prepare ... --out {work} "
                f"--size {size}`"
            )
        self.image_ids: list[str] = json.loads(self.paths["ids"].read_text())
        labels = {row["image_id"]: row["has_pneumothorax"] == "1" for row in read_manifest(work)}
        self.has_pneumothorax = np.array([labels[i] for i in self.image_ids], dtype=bool)
        self._images: np.ndarray | None = None
        self._masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def _open(self) -> None:
        self._images = np.load(self.paths["images"], mmap_mode="r")
        self._masks = np.load(self.paths["masks"], mmap_mode="r")
        if len(self._images) != len(self.image_ids):
            raise ValueError(
                f"{self.paths['images']} holds {len(self._images)} images but "
                f"{self.paths['ids']} lists {len(self.image_ids)}: rerun `ptxseg prepare`"
            )

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The memory-mapped uint8 arrays (N, S, S) of images and 0/1 masks."""
        if self._images is None:
            self._open()
        return self._images, self._masks

    def __getitem__(self, index: int) -> dict:
        images, masks = self.arrays()
        if self.raw:
            image = torch.from_numpy(np.array(images[index])).unsqueeze(0)
            mask = torch.from_numpy(np.array(masks[index])).unsqueeze(0)
            return {"image": image, "mask": mask, "image_id": self.image_ids[index]}
        image = torch.from_numpy(np.array(images[index], dtype=np.float32)).div_(255).unsqueeze(0)
        mask = torch.from_numpy(np.array(masks[index], dtype=np.float32)).unsqueeze(0)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return {"image": image, "mask": mask, "image_id": self.image_ids[index]}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_images"] = state["_masks"] = None
        return state


class FullSizeTruth:
    """The ground truth of prepared images at their original size, from the original RLE.

    The competition scores masks at 1024 x 1024 against the RLE rows; `prepare` keeps those rows
    in `WORK/annotations.csv` and each image's size and RLE encoding in the manifest.
    """

    def __init__(self, work: str | Path) -> None:
        work = Path(work)
        rows = read_manifest(work)
        path = work / ANNOTATIONS
        if not path.is_file() or (rows and "rle_encoding" not in rows[0]):
            raise FileNotFoundError(
                f"{work} has no {ANNOTATIONS} (it was prepared by an older ptxseg): rerun the same "
                "`ptxseg prepare` command once; it keeps the split and the cache and adds the "
                "original annotations that full-size scoring needs"
            )
        self.rows = {row["image_id"]: row for row in rows}
        self.annotations = read_annotations(path)

    def shape(self, image_id: str) -> tuple[int, int]:
        """(height, width) of the original image."""
        row = self.rows[image_id]
        return int(row["height"]), int(row["width"])

    def mask(self, image_id: str) -> np.ndarray:
        """The bool (H, W) mask at the original size (all regions together)."""
        row = self.rows[image_id]
        return rles_to_mask(
            self.annotations.get(image_id, []), *self.shape(image_id), row["rle_encoding"]
        )


class PositiveFractionSampler(Sampler[int]):
    """Draws each epoch's images so that a set share of them shows a pneumothorax.

    About 22% of SIIM images are positive; the winning solutions trained with a larger share and
    lowered it over time. `positive_fraction` is None (the natural share, a plain shuffle), a
    share, or a schedule over `epochs` (`ptxseg.util.schedule`: "0.8:0.4" linear, "0.8@0,0.4@10"
    steps); Lightning calls `set_epoch` before every epoch, which moves the schedule on.
    With several processes (DDP) each rank takes its own interleaved slice of the same draw.
    """

    def __init__(
        self,
        has_pneumothorax: np.ndarray,
        positive_fraction: float | str | PositiveFraction | None = None,
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        epochs: int = 1,
    ) -> None:
        labels = np.asarray(has_pneumothorax, dtype=bool)
        schedule = (
            positive_fraction
            if isinstance(positive_fraction, PositiveFraction)
            else PositiveFraction.parse(positive_fraction)
        )
        self.positives = np.flatnonzero(labels)
        self.negatives = np.flatnonzero(~labels)
        shares = schedule.shares()
        if any(s > 0 for s in shares) and self.positives.size == 0:
            raise ValueError("positive_fraction > 0 but the split has no positive images")
        if any(s < 1 for s in shares) and self.negatives.size == 0:
            raise ValueError("positive_fraction < 1 but the split has no negative images")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.schedule, self.epochs = schedule, max(1, int(epochs))
        self.total = int(num_samples if num_samples is not None else labels.size)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.per_rank = math.ceil(self.total / num_replicas)

    @property
    def positive_fraction(self) -> float | None:
        """The share of positive images in this epoch's draw (None: the natural share)."""
        return self.schedule.at(self.epoch, self.epochs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _draw(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        share = self.positive_fraction
        if share is None:
            n = self.positives.size + self.negatives.size
            order = rng.permutation(n)
            reps = math.ceil(self.total / max(n, 1))
            return np.concatenate([order] * reps)[: self.total] if reps > 1 else order[: self.total]
        n_pos = round(self.total * share)
        pos = rng.choice(self.positives, n_pos, replace=n_pos > self.positives.size)
        neg_n = self.total - n_pos
        neg = rng.choice(self.negatives, neg_n, replace=neg_n > self.negatives.size)
        return rng.permutation(np.concatenate([pos, neg]))

    def __iter__(self) -> Iterator[int]:
        indices = self._draw()
        padded = np.resize(indices, self.per_rank * self.num_replicas)  # repeat to divide evenly
        return iter(padded[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.per_rank
