"""The patient-level bootstrap, vectorised: every resample at once as a matrix of weights.

A resample draws patients with replacement; an image counts as often as its patient was drawn.
So a resample is a vector of image weights, and every statistic built from sums over images (a
mean, a pooled ratio, a share) is a weighted sum: `weights @ values`. `PatientBootstrap` makes the
weights of a chunk of resamples at once (`rng.integers` for the draws, `np.bincount` for the
counts, an index array for the images) and takes every sum of the chunk in one matrix product;
the ROC AUC of a resample comes from the weighted counts of negatives below each positive, over
the scores sorted once. Resampling patients, not images, keeps a patient's images together, as
they are not independent.

The draws are seeded, so two statistics computed in separate passes with the same seed see the
same resamples: their replicates can be subtracted (paired differences, subgroup against rest).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
CONFIDENCE = 0.95
CHUNK_VALUES = 4_000_000
"""Weights held at once (resamples x images): 32 MB of float64 per chunk."""


@dataclass(frozen=True)
class Interval:
    """A value with its interval and how it was obtained (None bounds: no interval)."""

    value: float
    ci_low: float | None
    ci_high: float | None
    method: str

    def to_dict(self) -> dict:
        return {
            "value": _finite(self.value),
            "ci_low": _finite(self.ci_low),
            "ci_high": _finite(self.ci_high),
            "method": self.method,
        }


def _finite(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def patient_index(groups: Sequence) -> tuple[np.ndarray, int]:
    """(patient number of each image, number of patients) from per-image patient keys."""
    keys = np.asarray([str(g) for g in groups])
    if not len(keys):
        return np.zeros(0, np.int64), 0
    _, index = np.unique(keys, return_inverse=True)
    return index.astype(np.int64).ravel(), int(index.max()) + 1


class PatientBootstrap:
    """Seeded resamples of the patients of a set of images.

    `groups` gives each image's patient key (an image with an empty key is its own patient: pass
    the image id there). Every pass over the resamples (`weights`, `sums`, `auc`) sees the same
    draws.
    """

    def __init__(
        self,
        groups: Sequence,
        n_resamples: int = DEFAULT_RESAMPLES,
        seed: int = DEFAULT_SEED,
        chunk: int | None = None,
    ) -> None:
        if n_resamples < 1:
            raise ValueError(f"n_resamples={n_resamples}: expected at least 1 resample")
        self.patient, self.n_patients = patient_index(groups)
        self.n_images = len(self.patient)
        self.n_resamples = int(n_resamples)
        self.seed = int(seed)
        self.chunk = chunk or max(1, min(self.n_resamples, CHUNK_VALUES // max(self.n_images, 1)))

    @property
    def independent(self) -> bool:
        """True when no patient has more than one image (the images are independent trials)."""
        return self.n_patients == self.n_images

    def describe(self) -> str:
        return (
            f"patient-level bootstrap percentile ({self.n_resamples} resamples of "
            f"{self.n_patients} patients, seed {self.seed})"
        )

    def draws(self) -> Iterator[np.ndarray]:
        """The drawn patient numbers, (resamples, patients) per chunk, the same on every pass."""
        rng = np.random.default_rng(self.seed)
        for start in range(0, self.n_resamples, self.chunk):
            b = min(self.chunk, self.n_resamples - start)
            yield rng.integers(0, max(self.n_patients, 1), size=(b, self.n_patients))

    def weights(self) -> Iterator[np.ndarray]:
        """Image weights (resamples, images) per chunk: how often each image's patient was drawn."""
        p = self.n_patients
        for draw in self.draws():
            b = len(draw)
            flat = (draw + (np.arange(b) * p)[:, None]).ravel()
            counts = np.bincount(flat, minlength=b * p).reshape(b, p)
            yield counts[:, self.patient].astype(np.float64)

    def sums(
        self, matrix: np.ndarray, subsets: Sequence[np.ndarray | None] = (None,)
    ) -> list[np.ndarray]:
        """For each subset of images (an index array, None for all), the weighted column sums
        of `matrix` (images, k) in every resample: a (resamples, k) array per subset."""
        return self.replicates(matrix, subsets=subsets)[0]

    def auc(
        self, labels: np.ndarray, scores: np.ndarray, subsets: Sequence[np.ndarray | None] = (None,)
    ) -> list[np.ndarray]:
        """The ROC AUC (ties count half) of each subset in every resample: (resamples,) each;
        NaN where a resample holds only one class."""
        return self.replicates(None, labels, scores, auc_subsets=subsets)[1]

    def replicates(
        self,
        matrix: np.ndarray | None,
        labels: np.ndarray | None = None,
        scores: np.ndarray | None = None,
        subsets: Sequence[np.ndarray | None] = (None,),
        auc_subsets: Sequence[np.ndarray | None] = (None,),
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """`sums` of `matrix` and `auc` of (`labels`, `scores`) in one pass over the resamples
        (the weights are made once); either part may be left out (None)."""
        plans = []
        if scores is not None:
            labels = np.asarray(labels, bool).ravel()
            scores = np.asarray(scores, np.float64).ravel()
            plans = [_auc_plan(labels, scores, subset) for subset in auc_subsets]
        if matrix is not None:
            matrix = np.asarray(matrix, np.float64).reshape(self.n_images, -1)
        else:
            subsets = ()
        sums: list[list[np.ndarray]] = [[] for _ in subsets]
        aucs: list[list[np.ndarray]] = [[] for _ in plans]
        for w in self.weights():
            for i, subset in enumerate(subsets):
                sums[i].append(w @ matrix if subset is None else w[:, subset] @ matrix[subset])
            for i, plan in enumerate(plans):
                aucs[i].append(_weighted_auc(w, *plan))
        return [np.concatenate(p) for p in sums], [np.concatenate(p) for p in aucs]


def _auc_plan(labels, scores, subset):
    """Images of a subset sorted by score, their labels and where each run of equal scores
    starts."""
    index = np.arange(len(labels)) if subset is None else np.asarray(subset, np.int64)
    order = index[np.argsort(scores[index], kind="mergesort")]
    s = scores[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s) != 0) + 1] if len(s) else np.zeros(0, np.int64)
    return order, labels[order], starts


def _weighted_auc(w: np.ndarray, order, y, starts) -> np.ndarray:
    if not len(order):
        return np.full(len(w), np.nan)
    ws = w[:, order]
    pos = np.add.reduceat(ws * y, starts, axis=1)
    neg = np.add.reduceat(ws * ~y, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives with a strictly lower score
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(1) / (n_pos * n_neg)


def weighted_auc(labels, scores, weights=None) -> float:
    """The ROC AUC with image weights (all 1 by default): the value the resamples scatter around."""
    labels = np.asarray(labels, bool).ravel()
    w = np.ones((1, len(labels))) if weights is None else np.asarray(weights, float)[None]
    return float(_weighted_auc(w, *_auc_plan(labels, np.asarray(scores, float).ravel(), None))[0])


def ratio(sums: np.ndarray, numerator: int, denominator: int) -> np.ndarray:
    """Column `numerator` over column `denominator` of `sums` (NaN where the denominator is 0)."""
    num, den = sums[..., numerator], sums[..., denominator]
    out = np.full(np.shape(num), np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def percentile_interval(
    replicates: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[float | None, float | None]:
    """The percentile interval of bootstrap replicates (undefined ones left out)."""
    r = np.asarray(replicates, np.float64)
    r = r[np.isfinite(r)]
    if not len(r):
        return None, None
    alpha = (1 - confidence) / 2
    low, high = np.quantile(r, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from the replicates of a difference: twice the
    smaller share of replicates on either side of 0 (with the +1 of a finite resample count), so
    that p < 1 - confidence exactly when the percentile interval excludes 0."""
    d = np.asarray(differences, np.float64)
    d = d[np.isfinite(d)]
    if not len(d):
        return float("nan")
    below = (np.count_nonzero(d <= 0) + 1) / (len(d) + 1)
    above = (np.count_nonzero(d >= 0) + 1) / (len(d) + 1)
    return float(min(1.0, 2 * min(below, above)))
