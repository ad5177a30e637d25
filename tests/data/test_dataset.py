"""The dataset over the cache and the positive-fraction sampler."""

import numpy as np
import pytest

from ptxseg.data.dataset import PositiveFractionSampler, SegmentationDataset

LABELS = np.array([True] * 10 + [False] * 90)


def test_sampler_sets_the_positive_share():
    sampler = PositiveFractionSampler(LABELS, positive_fraction=0.5, num_samples=200, seed=0)
    drawn = list(sampler)
    assert len(drawn) == len(sampler) == 200
    assert sum(LABELS[i] for i in drawn) == 100


def test_sampler_is_seeded_and_changes_per_epoch():
    a = PositiveFractionSampler(LABELS, 0.3, seed=1)
    b = PositiveFractionSampler(LABELS, 0.3, seed=1)
    first = list(a)
    assert first == list(b)
    a.set_epoch(1)
    assert list(a) != first


def test_natural_share_is_a_permutation():
    drawn = list(PositiveFractionSampler(LABELS, None, seed=0))
    assert sorted(drawn) == list(range(100))


def test_ranks_split_one_draw():
    shards = [
        list(PositiveFractionSampler(LABELS, 0.5, num_samples=101, seed=0, num_replicas=2, rank=r))
        for r in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 51
    whole = list(PositiveFractionSampler(LABELS, 0.5, num_samples=101, seed=0))
    assert sorted(shards[0][:50] + shards[1][:50]) == sorted(whole[:100])


def test_sampler_errors():
    with pytest.raises(ValueError, match="no positive images"):
        PositiveFractionSampler(np.zeros(5, bool), 0.5)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        PositiveFractionSampler(LABELS, 1.5)


def test_dataset_needs_a_prepared_cache(tmp_path):
    with pytest.raises(FileNotFoundError, match="ptxseg prepare"):
        SegmentationDataset(tmp_path, "train", 256)
    with pytest.raises(ValueError, match="train, val, test"):
        SegmentationDataset(tmp_path, "training", 256)
