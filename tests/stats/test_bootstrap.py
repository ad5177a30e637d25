"""The vectorised patient-level bootstrap against a plain loop over the same resamples."""

import numpy as np
import pytest

from ptxseg.model.metrics import roc_auc, summarise
from ptxseg.stats.bootstrap import (
    PatientBootstrap,
    bootstrap_p_value,
    percentile_interval,
    ratio,
    weighted_auc,
)


def per_image(n=60, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.35
    tp = np.where(truth, rng.integers(0, 50, n), 0)
    fn = np.where(truth, rng.integers(1, 30, n), 0)
    fp = np.where(rng.random(n) < 0.3, rng.integers(0, 40, n), 0)
    tn = 1000 - tp - fn - fp
    score = np.round(np.clip(truth * 0.3 + rng.random(n) * 0.7, 0, 1), 2)  # ties on purpose
    groups = rng.integers(0, n // 2, n)  # about two images per patient
    return tp, fp, fn, tn, score, groups


def plain_replicates(boot, tp, fp, fn, tn, score):
    """The reference: for each resample, the images of the drawn patients, scored by the
    metric formulas themselves."""
    members = [np.flatnonzero(boot.patient == p) for p in range(boot.n_patients)]
    out = []
    for draw in boot.draws():
        for patients in draw:
            idx = np.concatenate([members[p] for p in patients])
            values = summarise(tp[idx], fp[idx], fn[idx], tn[idx], score[idx])
            out.append(values)
    return out


def test_vectorised_sums_and_auc_equal_a_plain_loop_over_the_same_resamples():
    tp, fp, fn, tn, score, groups = per_image()
    boot = PatientBootstrap(groups, n_resamples=150, seed=3, chunk=40)  # several chunks
    truth = (tp + fn) > 0
    pred = (tp + fp) > 0
    dice = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 1.0)
    matrix = np.stack([np.ones(len(tp)), dice, 2 * tp, 2 * tp + fp + fn, truth, pred & truth], 1)
    sums = boot.sums(matrix)[0]
    auc = boot.auc(truth, score)[0]
    reference = plain_replicates(boot, tp, fp, fn, tn, score)
    assert len(reference) == 150
    np.testing.assert_allclose(ratio(sums, 1, 0), [r["dice_per_image"] for r in reference])
    np.testing.assert_allclose(ratio(sums, 2, 3), [r["dice_pooled"] for r in reference])
    np.testing.assert_allclose(ratio(sums, 5, 4), [r["sensitivity"] for r in reference])
    np.testing.assert_allclose(auc, [r["roc_auc"] for r in reference], equal_nan=True)


def test_subsets_resample_the_same_patients():
    tp, fp, fn, tn, score, groups = per_image()
    boot = PatientBootstrap(groups, 50, seed=1)
    subset = np.flatnonzero(score > 0.5)
    whole, part = boot.sums(np.ones((len(tp), 1)), [None, subset])
    again = boot.sums(np.ones((len(tp), 1)), [subset])[0]
    np.testing.assert_array_equal(part, again)  # seeded: every pass sees the same draws
    assert np.all(part <= whole)


def test_weights_count_each_image_as_often_as_its_patient_was_drawn():
    boot = PatientBootstrap(["a", "a", "b", "c"], n_resamples=5, seed=0)
    for draw, weights in zip(boot.draws(), boot.weights(), strict=True):
        for row, w in zip(draw, weights, strict=True):
            counts = np.bincount(row, minlength=3)
            np.testing.assert_array_equal(w, counts[boot.patient])
    assert boot.n_patients == 3 and not boot.independent


def test_weighted_auc_is_the_rank_auc_at_unit_weights():
    _, _, _, _, score, _ = per_image(200, seed=5)
    labels = np.random.default_rng(2).random(200) < 0.4
    assert weighted_auc(labels, score) == pytest.approx(roc_auc(labels, score))


def test_percentile_interval_and_p_value():
    d = np.linspace(-1, 3, 401)
    low, high = percentile_interval(d)
    assert low == pytest.approx(-0.9) and high == pytest.approx(2.9)
    assert bootstrap_p_value(np.full(999, 0.2)) == pytest.approx(2 / 1000)
    assert bootstrap_p_value(np.r_[np.full(500, -1.0), np.full(500, 1.0)]) == 1.0
    assert percentile_interval([np.nan, np.nan]) == (None, None)


def test_resamples_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        PatientBootstrap(["a"], n_resamples=0)
