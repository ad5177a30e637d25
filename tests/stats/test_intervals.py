"""Wilson, Holm and DeLong against their definitions."""

import math

import numpy as np
import pytest

from ptxseg.stats.bootstrap import PatientBootstrap, percentile_interval
from ptxseg.stats.intervals import delong, holm, wilson


def test_wilson_matches_the_closed_form():
    k, n, z = 7, 20, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson(k, n) == pytest.approx((centre - half, centre + half))
    low, high = wilson(10, 10)
    assert high == pytest.approx(1.0) and low < 0.8  # no collapse at a share of 1
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_holm_adjusts_in_step_down_order_and_keeps_nan():
    assert holm([0.01, 0.04, 0.03, float("nan")]) == pytest.approx(
        [0.03, 0.06, 0.06, math.nan], nan_ok=True
    )
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_delong_agrees_with_a_bootstrap_of_independent_images():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.4
    a = y * 0.8 + rng.random(300)
    b = y * 0.3 + rng.random(300)
    result = delong(y, a, b)
    assert result["auc_a"] > result["auc_b"] and result["p"] < 0.001
    boot = PatientBootstrap(np.arange(300), 1000, seed=0)
    diff = boot.auc(y, a)[0] - boot.auc(y, b)[0]
    low, high = percentile_interval(diff)
    assert result["ci_low"] == pytest.approx(low, abs=0.03)
    assert result["ci_high"] == pytest.approx(high, abs=0.03)
    same = delong(y, a, a)
    assert same["difference"] == 0 and same["p"] == 1.0
