"""The calibrator: monotone, chosen by cross-validation, stored as numbers, measured honestly."""

import numpy as np
import pytest

from ptxseg.stats.calibration import (
    Calibrator,
    brier,
    equal_mass_bins,
    expected_calibration_error,
    fit_calibrator,
    reliability,
)


def overconfident(n=400, seed=0):
    """Scores near 0 or 1 that are right only 70% of the time."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    right = rng.random(n) < 0.7
    said = np.where(right, y, ~y)
    return np.clip(np.where(said, 0.95, 0.05) + rng.normal(0, 0.02, n), 0, 1), y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibrated_probability_rises_with_the_score_and_improves_brier(seed):
    s, y = overconfident(seed=seed)
    cal = fit_calibrator(s, y, fitted={"split": "val"})
    grid = np.linspace(0, 1, 501)
    out = cal.apply(grid)
    assert np.all(np.diff(out) >= -1e-12) and out.min() >= 0 and out.max() <= 1
    assert brier(cal.apply(s), y) < brier(s, y)
    assert set(cal.cv_brier) <= {"isotonic", "platt"} and cal.method in cal.cv_brier
    assert cal.fitted["split"] == "val" and cal.fitted["n_images"] == len(s)


def test_choice_is_the_lower_cross_validated_brier():
    s, y = overconfident()
    cal = fit_calibrator(s, y)
    assert cal.cv_brier[cal.method] == min(cal.cv_brier.values())


def test_round_trip_through_a_dict_applies_the_same():
    s, y = overconfident()
    cal = fit_calibrator(s, y)
    again = Calibrator.from_dict(cal.to_dict())
    np.testing.assert_allclose(again.apply(s), cal.apply(s))
    assert isinstance(again.apply(0.5), float)
    platt = Calibrator("platt", a=2.0, b=-1.0)
    assert Calibrator.from_dict(platt.to_dict()).apply(0.5) == pytest.approx(1 / (1 + np.e))


def test_too_few_of_a_class_is_an_error_that_says_so():
    with pytest.raises(ValueError, match="1 positive"):
        fit_calibrator([0.1, 0.2, 0.9], [0, 0, 1])


def test_a_falling_isotonic_calibrator_is_refused():
    with pytest.raises(ValueError, match="non-decreasing"):
        Calibrator("isotonic", x=(0.0, 1.0), y=(1.0, 0.0))


def test_ece_over_equal_mass_bins():
    p = np.array([0.1] * 5 + [0.9] * 5)
    y = np.array([0] * 5 + [1] * 4 + [0])
    assert [len(b) for b in equal_mass_bins(p, 2)] == [5, 5]
    assert expected_calibration_error(p, y, 2) == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)
    rows = reliability(p, y, 2)
    assert rows[1]["observed"] == pytest.approx(0.8) and rows[1]["observed_ci_low"] < 0.8
