"""The operating-point search finds known optima and agrees with a brute-force search."""

import itertools

import numpy as np
import pytest

from ptxseg.evaluation.search import search_operating_point, threshold_counts
from ptxseg.model.metrics import confusion_counts, dice_scores
from ptxseg.model.operating_point import OperatingPoint


def _mean_dice(op, probs, targets):
    return float(dice_scores(*confusion_counts(op.apply(probs), targets)[:3]).mean())


def _triplet_case():
    """Positives: an 8x8 truth with a 4x4 core at 0.95 and a halo at 0.4. Negatives: a 5x5 blob
    at 0.8, and on one of them 3 specks at 0.97. Only top 0.9, min area 10, bottom 0.3 scores 1."""
    probs = np.full((4, 32, 32), 0.05, np.float32)
    targets = np.zeros((4, 32, 32), np.uint8)
    for i in (0, 1):
        targets[i, 4:12, 4:12] = 1
        probs[i, 4:12, 4:12] = 0.4
        probs[i, 6:10, 6:10] = 0.95
    for i in (2, 3):
        probs[i, 20:25, 20:25] = 0.8
    probs[3, 0, :3] = 0.97
    return probs, targets


def test_triplet_search_finds_the_known_optimum():
    probs, targets = _triplet_case()
    result = search_operating_point(
        probs, targets, tops=[0.5, 0.7, 0.9], bottoms=[0.3, 0.5, 0.7], min_areas=[0, 1, 10, 100]
    )
    assert result.operating_point == OperatingPoint(top=0.9, bottom=0.3, min_area=10)
    assert result.competition_dice == pytest.approx(1.0)
    # the best plain threshold: 0.7 keeps only the cores (Dice 0.4) but also every blob -> 0.2;
    # 0.3 gets the positives right and the negatives wrong -> 0.5
    assert result.plain == OperatingPoint.plain(0.3)
    assert result.plain_competition_dice == pytest.approx(0.5)
    assert result.scores.shape == (4, 3, 3)
    assert np.isnan(result.scores[0, 0, 2])  # bottom 0.7 > top 0.5 is not tried


def test_plain_threshold_search_finds_the_known_optimum():
    probs = np.full((3, 16, 16), 0.45, np.float32)
    targets = np.zeros((3, 16, 16), np.uint8)
    targets[:2, :8] = 1
    probs[:2, :8] = 0.6
    result = search_operating_point(
        probs, targets, tops=[0.9], bottoms=[0.3, 0.5, 0.7], min_areas=[0]
    )
    assert result.operating_point == OperatingPoint.plain(0.5)
    assert result.competition_dice == pytest.approx(1.0)


def test_search_agrees_with_brute_force_on_random_maps():
    rng = np.random.default_rng(3)
    n, s = 12, 24
    targets = np.zeros((n, s, s), np.uint8)
    probs = rng.random((n, s, s)).astype(np.float32) * 0.6
    for i in range(0, n, 2):
        r, c = rng.integers(0, s - 8, 2)
        targets[i, r : r + 8, c : c + 8] = 1
        probs[i, r : r + 8, c : c + 8] += rng.random((8, 8)).astype(np.float32) * 0.4
    tops, bottoms, areas = [0.5, 0.6, 0.8], [0.2, 0.4, 0.5, 0.6], [0, 3, 20, 60]
    result = search_operating_point(probs, targets, tops, bottoms, areas, chunk_size=5)
    for (a, area), (t, top), (b, bottom) in itertools.product(
        enumerate(areas), enumerate(tops), enumerate(bottoms)
    ):
        if bottom > top:
            continue
        expected = _mean_dice(OperatingPoint(top, bottom, area), probs, targets)
        assert result.scores[a, t, b] == pytest.approx(expected), (area, top, bottom)
    best = _mean_dice(result.operating_point, probs, targets)
    assert best == pytest.approx(result.competition_dice)
    assert best >= np.nanmax(result.scores) - 1e-12


def test_threshold_counts_golden():
    probs = np.array([[[0.1, 0.5], [0.6, 0.9]]], np.float32)
    targets = np.array([[[0, 1], [1, 0]]], np.uint8)
    above, true_above, area = threshold_counts(probs, targets, [0.1, 0.5, 0.8])
    assert above.tolist() == [[3, 2, 1]]  # strictly greater: 0.5 is not above 0.5
    assert true_above.tolist() == [[2, 1, 0]]
    assert area.tolist() == [2]


def test_search_default_grid_scales_min_area_with_image_size():
    probs, targets = _triplet_case()
    result = search_operating_point(probs, targets)
    assert result.min_areas.tolist() == [0, 1, 2, 4, 8]  # fractions of 32*32, deduplicated
    assert result.competition_dice >= result.plain_competition_dice


def test_search_rejects_empty_and_mismatched_input():
    with pytest.raises(ValueError, match="split is empty"):
        search_operating_point(np.zeros((0, 4, 4)), np.zeros((0, 4, 4)))
    with pytest.raises(ValueError, match="differ in shape"):
        search_operating_point(np.zeros((1, 4, 4)), np.zeros((1, 5, 5)))
