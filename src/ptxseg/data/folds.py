"""Cross-validation folds: K patient-grouped, stratified folds of the train and val images.

`ptxseg prepare --folds K` gives every image of the train and val splits (the *pool*) one of K
folds and stores them in `splits.json` (`"folds": [[ids], ...]`) beside the unchanged
train/val/test split: the test split stays fixed, and the cache needs no rewrite. A patient's
images share one fold; positive and negative patients are spread evenly; the assignment is
seeded with the split's seed and reused by every later run.

A fold's images are read by row from the train and val arrays that `prepare` already cached
(`FoldDataset`), so folds cost no disk space and every read is still a memory-mapped row.
`train --fold k` trains on the other folds (`fold_datasets`) and validates on fold k.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ptxseg.data.dataset import SPLITS, SPLITS_FILE, SegmentationDataset, read_splits
from ptxseg.util import atomic

POOL_SPLITS = ("train", "val")
FOLD_NAME = re.compile(r"fold(\d+)$")


def fold_name(fold: int) -> str:
    """The name of fold k where a split name is expected (`evaluate --split fold2`)."""
    return f"fold{int(fold)}"


def make_folds(
    groups: Mapping[str, str], positive: Mapping[str, bool], k: int, seed: int
) -> list[list[str]]:
    """Assign images to `k` folds: grouped by `groups[image_id]` (the patient), stratified.

    Groups with a positive image and groups without are placed separately; within each, the
    groups are shuffled with `seed`, taken largest first, and each goes to the fold that holds
    the fewest images of its kind so far (ties: the smaller fold, then the lower index). Folds
    then differ by at most one group's images in each kind.
    """
    members: dict[str, list[str]] = {}
    for image_id in sorted(groups):
        members.setdefault(groups[image_id], []).append(image_id)
    if k < 2:
        raise ValueError(f"--folds {k}: cross-validation needs at least 2 folds")
    if k > len(members):
        raise ValueError(
            f"--folds {k}: the train and val splits hold only {len(members)} patients; a fold "
            "needs at least one: use fewer folds"
        )
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    for stratum in (True, False):
        keys = sorted(g for g, ids in members.items() if any(positive[i] for i in ids) == stratum)
        keys = [keys[i] for i in rng.permutation(len(keys))]
        keys.sort(key=lambda g: -len(members[g]))  # stable: equal sizes keep the shuffled order
        load = [0] * k
        for key in keys:
            target = min(range(k), key=lambda j: (load[j], len(folds[j]), j))
            folds[target].extend(members[key])
            load[target] += len(members[key])
    return [sorted(fold) for fold in folds]


def load_or_make_folds(
    work: Path,
    split: dict,
    groups: Mapping[str, str],
    positive: Mapping[str, bool],
    k: int,
) -> dict:
    """The split with its `folds`: reused when saved, made and saved when asked for (`k` > 1).

    `k == 0` keeps whatever `splits.json` holds. Asking for another number of folds than the
    saved one is an error that says what to do, as for the split itself.
    """
    if not k:
        return split
    path = Path(work) / SPLITS_FILE
    pool = sorted(i for s in POOL_SPLITS for i in split[s])
    saved = split.get("folds")
    if saved is not None:
        if len(saved) == k and sorted(i for fold in saved for i in fold) == pool:
            return split
        raise ValueError(
            f"{path} holds {len(saved)} folds of {sum(map(len, saved))} images but this run asks "
            f"for {k} folds of the {len(pool)} train and val images: use --folds {len(saved)} "
            f'(or leave --folds out) to keep them, a new --out folder, or delete the "folds" '
            f"entry of {path} to make them again (fold runs on the old folds are then not "
            "comparable)"
        )
    folds = make_folds({i: groups[i] for i in pool}, positive, k, int(split["seed"]))
    split = dict(split, folds=folds)
    atomic.write_text(path, json.dumps(split, indent=1) + "\n")
    return split


def read_folds(work: str | Path) -> list[list[str]]:
    """The saved folds of a work folder; an error that names the command when there are none."""
    folds = read_splits(work).get("folds")
    if not folds:
        raise ValueError(
            f"{Path(work) / SPLITS_FILE} has no folds: run the same `ptxseg prepare` command "
            f"with --folds 5 (it keeps the split and the cache and adds the folds)"
        )
    return folds


def check_fold(fold: int, folds: Sequence) -> int:
    if not 0 <= fold < len(folds):
        raise ValueError(
            f"fold {fold} does not exist: the work folder has {len(folds)} folds, numbered "
            f"0 to {len(folds) - 1}"
        )
    return int(fold)


class CachedRows:
    """Rows of several memory-mapped (N, S, S) arrays, seen as one array.

    Indexing with an int, a slice or an index array reads just those rows, so evaluation code
    that slices a split's arrays works on a fold unchanged.
    """

    def __init__(self, arrays: Sequence[np.ndarray], part: np.ndarray, row: np.ndarray) -> None:
        self.arrays, self.part, self.row = list(arrays), part, row
        self.dtype = self.arrays[0].dtype
        self.shape = (len(part), *self.arrays[0].shape[1:])

    def __len__(self) -> int:
        return len(self.part)

    def __getitem__(self, key) -> np.ndarray:
        positions = np.arange(len(self))[key]
        if np.ndim(positions) == 0:
            return np.asarray(self.arrays[self.part[positions]][self.row[positions]])
        out = np.empty((len(positions), *self.shape[1:]), self.dtype)
        parts, rows = self.part[positions], self.row[positions]
        for p, array in enumerate(self.arrays):
            chosen = parts == p
            if chosen.any():
                out[chosen] = array[rows[chosen]]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


class FoldDataset(Dataset):
    """Images of the train and val caches chosen by id: one fold, or all folds but one.

    Items, `image_ids`, `has_pneumothorax` and `arrays()` are those of `SegmentationDataset`.
    """

    def __init__(
        self,
        work: str | Path,
        size: int,
        image_ids: Sequence[str],
        transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
        | None = None,
        name: str = "fold",
        raw: bool = False,
    ) -> None:
        self.work, self.size, self.split = Path(work), int(size), name
        self.parts = [SegmentationDataset(work, s, size, transform, raw) for s in POOL_SPLITS]
        wanted = set(image_ids)
        part, row = [], []
        for p, dataset in enumerate(self.parts):
            for r, image_id in enumerate(dataset.image_ids):
                if image_id in wanted:
                    part.append(p)
                    row.append(r)
        self.part, self.row = np.asarray(part, np.int64), np.asarray(row, np.int64)
        self.image_ids = [self.parts[p].image_ids[r] for p, r in zip(part, row, strict=True)]
        if len(self.image_ids) != len(wanted):
            missing = sorted(wanted - set(self.image_ids))
            raise ValueError(
                f"{len(missing)} images of {name} (e.g. {missing[0]}) are not in the train or "
                f"val cache of {work} at {size} px: rerun `ptxseg prepare` for this folder"
            )
        self.has_pneumothorax = np.array(
            [self.parts[p].has_pneumothorax[r] for p, r in zip(part, row, strict=True)], bool
        )

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict:
        return self.parts[int(self.part[index])][int(self.row[index])]

    def arrays(self) -> tuple[CachedRows, CachedRows]:
        """(images, masks) as `CachedRows` over the memory-mapped caches."""
        pairs = [dataset.arrays() for dataset in self.parts]
        return (
            CachedRows([images for images, _ in pairs], self.part, self.row),
            CachedRows([masks for _, masks in pairs], self.part, self.row),
        )


def fold_datasets(
    work: str | Path, size: int, fold: int, transform=None, raw: bool = False
) -> tuple[FoldDataset, FoldDataset]:
    """(train on every fold but `fold`, with `transform`; validate on `fold`, untransformed);
    `raw`: uint8 items for both (see `SegmentationDataset`)."""
    folds = read_folds(work)
    check_fold(fold, folds)
    train_ids = [i for k, ids in enumerate(folds) if k != fold for i in ids]
    others = f"folds {', '.join(str(k) for k in range(len(folds)) if k != fold)}"
    return (
        FoldDataset(work, size, train_ids, transform, name=others, raw=raw),
        FoldDataset(work, size, folds[fold], None, name=fold_name(fold), raw=raw),
    )


def open_split(work: str | Path, name: str, size: int, transform=None):
    """The dataset of a split name: train, val, test, or `fold<k>` (one fold of the pool)."""
    match = FOLD_NAME.match(str(name))
    if match:
        folds = read_folds(work)
        fold = check_fold(int(match.group(1)), folds)
        return FoldDataset(work, size, folds[fold], transform, name=fold_name(fold))
    if name not in SPLITS:
        raise ValueError(
            f"unknown split {name!r}: expected one of {', '.join(SPLITS)}, or fold<k> for one "
            "fold of a work folder prepared with --folds"
        )
    return SegmentationDataset(work, name, size, transform)
