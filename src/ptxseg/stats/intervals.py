"""Closed-form intervals and tests: Wilson for a share, DeLong for AUCs, Holm for many tests."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CONFIDENCE = 0.95
WILSON = "Wilson score interval (one image per patient: independent trials)"


def wilson(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a share (scipy's binomtest); NaNs for no trials."""
    if trials <= 0:
        return math.nan, math.nan
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(trials)).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the given order (NaN stays NaN and is not counted)."""
    p = np.asarray(p_values, np.float64)
    valid = np.flatnonzero(np.isfinite(p))
    adjusted = np.full(len(p), np.nan)
    m = len(valid)
    order = valid[np.argsort(p[valid], kind="mergesort")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def _midrank(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, method="average")


def delong(labels, scores_a, scores_b) -> dict[str, float]:
    """DeLong's test of two correlated ROC AUCs on the same images (DeLong et al. 1988, with
    Sun and Xu's fast midrank form). Treats the images as independent.

    Returns auc_a, auc_b, difference (a - b), its standard error, a 95% normal interval and the
    two-sided p-value.
    """
    from scipy.stats import norm

    y = np.asarray(labels, bool).ravel()
    m, n = int(y.sum()), int((~y).sum())
    nan = {k: math.nan for k in ("auc_a", "auc_b", "difference", "se", "ci_low", "ci_high", "p")}
    if m < 2 or n < 2:
        return nan
    aucs, v01, v10 = [], [], []
    for s in (np.asarray(scores_a, float).ravel(), np.asarray(scores_b, float).ravel()):
        pos, neg = s[y], s[~y]
        tx, ty, tz = _midrank(pos), _midrank(neg), _midrank(np.r_[pos, neg])
        aucs.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
        v01.append((tz[:m] - tx) / n)  # per positive: share of negatives below it
        v10.append(1.0 - (tz[m:] - ty) / m)  # per negative: share of positives above it
    s01, s10 = np.cov(np.vstack(v01)), np.cov(np.vstack(v10))
    var = (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / m + (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / n
    diff = float(aucs[0] - aucs[1])
    se = math.sqrt(max(var, 0.0))
    z = norm.ppf(0.5 + CONFIDENCE / 2)
    p = (1.0 if diff == 0 else 0.0) if se == 0 else float(2 * norm.sf(abs(diff) / se))
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "difference": diff,
        "se": se,
        "ci_low": float(diff - z * se),
        "ci_high": float(diff + z * se),
        "p": p,
    }
