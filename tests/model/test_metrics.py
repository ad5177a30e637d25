"""Golden values for the metrics and the empty-mask rule."""

import math

import numpy as np
import pytest
import torch

from ptxseg.model.metrics import (
    METRIC_KINDS,
    MetricAccumulator,
    confusion_counts,
    dice_scores,
    iou_scores,
    pixel_accuracy_scores,
    roc_auc,
    roc_curve,
    summarise,
)
from ptxseg.model.operating_point import OperatingPoint


def test_confusion_counts_golden():
    pred = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], dtype=bool)
    target = np.array([[[1, 0], [1, 0]], [[0, 0], [0, 0]]], dtype=np.uint8)
    tp, fp, fn, tn = confusion_counts(pred, target)
    assert tp.tolist() == [1, 0]
    assert fp.tolist() == [1, 0]
    assert fn.tolist() == [1, 0]
    assert tn.tolist() == [1, 4]


def test_confusion_counts_accepts_torch_channel_dim_and_single_image():
    pred = torch.zeros(3, 1, 4, 4)
    pred[1, 0, :2] = 1
    target = torch.zeros(3, 1, 4, 4)
    target[1, 0, 0] = 1
    tp, fp, fn, tn = confusion_counts(pred, target)
    assert tp.tolist() == [0, 4, 0] and fp.tolist() == [0, 4, 0] and tn.tolist() == [16, 8, 16]
    single = confusion_counts(np.ones((2, 2), bool), np.ones((2, 2), bool))
    assert [c.tolist() for c in single] == [[4], [0], [0], [0]]


def test_confusion_counts_rejects_probabilities_and_shape_mismatch():
    with pytest.raises(ValueError, match="binary mask"):
        confusion_counts(np.full((2, 2), 0.3), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="shapes differ"):
        confusion_counts(np.zeros((2, 2), bool), np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="expected"):
        confusion_counts(np.zeros((2, 2, 2, 2), bool), np.zeros((2, 2, 2, 2), bool))


@pytest.mark.parametrize(
    ("tp", "fp", "fn", "dice", "iou"),
    [
        (0, 0, 0, 1.0, 1.0),  # empty truth, empty prediction
        (0, 5, 0, 0.0, 0.0),  # empty truth, non-empty prediction
        (0, 0, 5, 0.0, 0.0),  # non-empty truth, empty prediction
        (3, 1, 2, 6 / 9, 3 / 6),
        (4, 0, 0, 1.0, 1.0),
    ],
)
def test_dice_and_iou_golden_with_empty_rule(tp, fp, fn, dice, iou):
    assert dice_scores(tp, fp, fn) == pytest.approx(dice)
    assert iou_scores(tp, fp, fn) == pytest.approx(iou)


def test_pixel_accuracy_golden():
    assert pixel_accuracy_scores(3, 1, 2, 4).tolist() == pytest.approx(0.7)


def test_pooled_and_per_image_differ_golden():
    """A perfect 100-pixel mask and one false-positive pixel on an empty image."""
    pred = np.zeros((2, 10, 10), bool)
    target = np.zeros((2, 10, 10), bool)
    pred[0] = target[0] = True
    pred[1, 0, 0] = True
    m = summarise(*confusion_counts(pred, target), scores=np.array([0.9, 0.6]))
    assert m["dice_per_image"] == pytest.approx(0.5)
    assert m["iou_per_image"] == pytest.approx(0.5)
    assert m["dice_pooled"] == pytest.approx(200 / 201)
    assert m["iou_pooled"] == pytest.approx(100 / 101)
    assert m["pixel_accuracy_per_image"] == pytest.approx((1.0 + 0.99) / 2)
    assert m["pixel_accuracy_pooled"] == pytest.approx(199 / 200)
    assert m["dice_positive_per_image"] == pytest.approx(1.0)
    assert m["iou_positive_per_image"] == pytest.approx(1.0)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 0.0
    assert m["roc_auc"] == 1.0
    assert m["empty_baseline_dice_per_image"] == 0.5
    assert (m["n_images"], m["n_positive"], m["n_negative"], m["n_predicted_positive"]) == (
        2,
        1,
        1,
        2,
    )
    assert set(METRIC_KINDS) <= set(m)


def test_summarise_without_positives_gives_nan_for_positive_only_metrics():
    m = summarise([0, 0], [0, 3], [0, 0], [10, 7], scores=[0.1, 0.7])
    assert m["dice_per_image"] == 0.5
    assert math.isnan(m["dice_positive_per_image"]) and math.isnan(m["sensitivity"])
    assert math.isnan(m["roc_auc"])
    assert m["specificity"] == 0.5
    assert m["dice_pooled"] == 0.0


def test_roc_auc_golden_and_ties():
    assert roc_auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1]) == pytest.approx(0.75)
    assert roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([1, 0, 0], [0.5, 0.5, 0.1]) == pytest.approx(0.75)
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_roc_curve_golden_and_consistent_with_auc():
    fpr, tpr, thr = roc_curve([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1])
    assert thr.tolist() == [np.inf, 0.9, 0.5, 0.4, 0.1]
    assert tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1]
    rng = np.random.default_rng(0)
    y, s = rng.random(200) < 0.3, np.round(rng.random(200), 1)  # many ties
    fpr, tpr, _ = roc_curve(y, s)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, s))


def test_accumulator_batches_equal_one_pass_and_match_summarise():
    rng = np.random.default_rng(1)
    probs = rng.random((6, 1, 8, 8)).astype(np.float32) ** 3
    targets = (rng.random((6, 1, 8, 8)) < 0.2).astype(np.float32)
    targets[:2] = 0
    op = OperatingPoint(top=0.9, bottom=0.5, min_area=2)
    acc = MetricAccumulator(op)
    acc.update(torch.from_numpy(probs[:4]), torch.from_numpy(targets[:4]))
    acc.update(probs[4:], targets[4:])
    assert len(acc) == 6
    expected = summarise(
        *confusion_counts(op.apply(probs), targets), scores=probs.reshape(6, -1).max(1)
    )
    got = acc.compute()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, nan_ok=True), key
    per = acc.per_image()
    assert per["predicted_area"].tolist() == op.apply(probs).reshape(6, -1).sum(1).tolist()
    acc.reset()
    assert len(acc) == 0


def test_accumulator_takes_masks_and_area_score_and_rejects_logits():
    acc = MetricAccumulator(score="area")
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 0, :3] = True
    acc.update(mask, torch.zeros(2, 1, 4, 4))
    assert acc.per_image()["score"].tolist() == [3.0, 0.0]
    with pytest.raises(ValueError, match="apply torch.sigmoid"):
        acc.update(torch.randn(2, 1, 4, 4) * 5, torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="unknown detection score"):
        MetricAccumulator(score="mean")


def test_device_counts_match_the_host_formulas():
    from ptxseg.model.metrics import count_stats

    rng = np.random.default_rng(5)
    pred = rng.random((6, 1, 12, 12)) > 0.6
    truth = rng.random((6, 1, 12, 12)) > 0.7
    pred[0], truth[0] = False, False  # empty/empty: Dice 1
    pred[1], truth[1] = True, False  # prediction on an empty truth: Dice 0
    stats = count_stats(torch.from_numpy(pred), torch.from_numpy(truth))
    tp, fp, fn, tn = confusion_counts(pred, truth)
    expected = [tp.sum(), fp.sum(), fn.sum(), tn.sum(), dice_scores(tp, fp, fn).sum()]
    assert stats.dtype == torch.float64 and stats.shape == (5,)
    np.testing.assert_allclose(stats.numpy(), expected)
