"""Cross-validation folds: grouping, stratification, reuse, and reading a fold from the cache."""

import json

import numpy as np
import pytest
import torch
from siim_folders import make_siim_folder

from ptxseg.cli import main
from ptxseg.data.dataset import (
    SegmentationDataset,
    batch_to_float,
    read_manifest,
    read_splits,
)
from ptxseg.data.folds import (
    CachedRows,
    FoldDataset,
    fold_datasets,
    make_folds,
    open_split,
    read_folds,
)
from ptxseg.data.work_folder import PrepareOptions, prepare_work_folder


def random_pool(n_patients=60, seed=1):
    """Patients with 1-4 images each; about a third of the patients positive."""
    rng = np.random.default_rng(seed)
    groups, positive = {}, {}
    for p in range(n_patients):
        sick = rng.random() < 0.35
        for j in range(int(rng.integers(1, 5))):
            image = f"p{p}-i{j}"
            groups[image] = f"patient{p}"
            positive[image] = bool(sick and j == 0)
    return groups, positive


def test_folds_keep_patients_together_and_spread_positives_evenly():
    groups, positive = random_pool()
    folds = make_folds(groups, positive, k=5, seed=0)
    assert sorted(i for f in folds for i in f) == sorted(groups)  # a partition of the pool
    patients = [{groups[i] for i in fold} for fold in folds]
    for a in range(5):
        for b in range(a + 1, 5):
            assert not patients[a] & patients[b], "a patient is split over two folds"
    # positive patients have 1-4 images: folds differ by at most one patient's images
    pos_images = [sum(positive[i] or _sick(i, groups, positive) for i in fold) for fold in folds]
    assert max(pos_images) - min(pos_images) <= 4
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 4


def _sick(image, groups, positive):
    """Whether the image belongs to a patient with a positive image (the stratum)."""
    return any(positive[i] for i, g in groups.items() if g == groups[image])


def test_folds_are_seeded():
    groups, positive = random_pool()
    assert make_folds(groups, positive, 5, seed=3) == make_folds(groups, positive, 5, seed=3)
    assert make_folds(groups, positive, 5, seed=3) != make_folds(groups, positive, 5, seed=4)


def test_impossible_fold_counts_are_errors():
    groups = {"a": "p1", "b": "p1", "c": "p2"}
    positive = dict.fromkeys(groups, False)
    with pytest.raises(ValueError, match="at least 2"):
        make_folds(groups, positive, 1, 0)
    with pytest.raises(ValueError, match="only 2 patients"):
        make_folds(groups, positive, 3, 0)


@pytest.fixture()
def prepared(tmp_path):
    images, csv_path, _ = make_siim_folder(tmp_path / "siim", n=30, size=32)
    work = tmp_path / "work"
    prepare_work_folder(images, csv_path, work, PrepareOptions(size=32, val=0.2, test=0.2, folds=3))
    return images, csv_path, work


def test_prepare_writes_folds_of_train_and_val_beside_the_fixed_test_split(prepared):
    _, _, work = prepared
    splits = read_splits(work)
    folds = read_folds(work)
    assert len(folds) == 3
    assert sorted(i for f in folds for i in f) == sorted(splits["train"] + splits["val"])
    rows = {r["image_id"]: r for r in read_manifest(work)}
    for k, fold in enumerate(folds):
        assert all(rows[i]["fold"] == str(k) for i in fold)
    assert all(rows[i]["fold"] == "" for i in splits["test"])
    # patients (two images each in this folder) never straddle two folds
    owner = {i: rows[i]["patient_id"] for i in rows}
    assert len({owner[i] for f in folds for i in f}) == sum(
        len({owner[i] for i in f}) for f in folds
    )


def test_folds_are_reused_added_later_and_conflicts_explained(prepared, tmp_path):
    images, csv_path, work = prepared
    before = (work / "splits.json").read_text()
    prepare_work_folder(
        images, csv_path, work, PrepareOptions(size=32, val=0.2, test=0.2, folds=3)
    )  # the same: reused
    prepare_work_folder(
        images, csv_path, work, PrepareOptions(size=32, val=0.2, test=0.2)
    )  # no --folds: kept
    assert (work / "splits.json").read_text() == before
    with pytest.raises(ValueError, match="holds 3 folds") as error:
        prepare_work_folder(
            images, csv_path, work, PrepareOptions(size=32, val=0.2, test=0.2, folds=4)
        )
    assert "--folds 3" in str(error.value) and "delete" in str(error.value)
    # a work folder prepared without folds gets them added, split and cache untouched
    other = tmp_path / "other"
    prepare_work_folder(images, csv_path, other, PrepareOptions(size=32, val=0.2, test=0.2))
    cache = (other / "cache" / "32" / "train-images.npy").stat().st_mtime_ns
    split = {k: v for k, v in read_splits(other).items()}
    with pytest.raises(ValueError, match="--folds 5"):
        read_folds(other)
    result = prepare_work_folder(
        images, csv_path, other, PrepareOptions(size=32, val=0.2, test=0.2, folds=3)
    )
    assert not result.cache_written
    assert (other / "cache" / "32" / "train-images.npy").stat().st_mtime_ns == cache
    assert {k: v for k, v in read_splits(other).items() if k != "folds"} == split
    assert read_folds(other) == read_folds(work)  # same seed, same split: same folds


def test_fold_datasets_read_rows_of_the_train_and_val_caches(prepared):
    _, _, work = prepared
    folds = read_folds(work)
    train, val = fold_datasets(work, 32, fold=1)
    assert sorted(val.image_ids) == sorted(folds[1])
    assert sorted(train.image_ids) == sorted(folds[0] + folds[2])
    full = {
        i: (ds, r)
        for name in ("train", "val")
        for ds in [SegmentationDataset(work, name, 32)]
        for r, i in enumerate(ds.image_ids)
    }
    for index in (0, len(val) - 1):
        item = val[index]
        ds, row = full[item["image_id"]]
        assert np.array_equal(item["image"], ds[row]["image"])
        assert np.array_equal(item["mask"], ds[row]["mask"])
        assert val.has_pneumothorax[index] == ds.has_pneumothorax[row]
    images, masks = val.arrays()
    assert isinstance(images, CachedRows) and images.shape == (len(val), 32, 32)
    picked = images[np.array([2, 0])]
    assert np.array_equal(
        picked[1], np.asarray(full[val.image_ids[0]][0].arrays()[0][full[val.image_ids[0]][1]])
    )
    assert np.asarray(masks).shape == (len(val), 32, 32)
    assert np.array_equal(np.asarray(images)[3:5], images[3:5])


def test_split_names_include_folds(prepared):
    _, _, work = prepared
    assert isinstance(open_split(work, "fold2", 32), FoldDataset)
    assert isinstance(open_split(work, "test", 32), SegmentationDataset)
    with pytest.raises(ValueError, match="numbered 0 to 2"):
        open_split(work, "fold3", 32)
    with pytest.raises(ValueError, match="fold<k>"):
        open_split(work, "holdout", 32)


def test_cli_prepare_folds_prints_them(tmp_path, capsys):
    images, csv_path, _ = make_siim_folder(tmp_path / "siim", n=20, size=32)
    args = ["prepare", "--images", str(images), "--annotations", str(csv_path)]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "w"), "--size", "32", "--folds", "2"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "2 folds of the train and val images" in out
    assert len(json.loads((tmp_path / "w" / "splits.json").read_text())["folds"]) == 2


def test_raw_fold_items_are_the_cache_rows_and_convert_to_the_float_items(prepared):
    _, _, work = prepared
    train, val = fold_datasets(work, 32, fold=0)
    raw_train, raw_val = fold_datasets(work, 32, fold=0, raw=True)
    for floats, raw in ((train, raw_train), (val, raw_val)):
        item, row = floats[1], raw[1]
        assert row["image"].dtype == torch.uint8 and row["mask"].dtype == torch.uint8
        image, mask = batch_to_float(row["image"], row["mask"])
        assert torch.equal(image, item["image"]) and torch.equal(mask, item["mask"])
    with pytest.raises(ValueError, match="raw"):
        fold_datasets(work, 32, fold=0, transform=lambda i, m: (i, m), raw=True)
