"""Choosing the operating point (threshold or triplet threshold) on the validation split.

The search maximises the competition metric (mean per-image Dice, empty/empty = 1) over a grid of
(top, min_area, bottom). It reads the probabilities once: per image it counts the pixels above
every grid threshold (and how many of those are true), by bucketing each pixel among the sorted
thresholds. The score of every grid point then follows from those counts with one matrix
product, so ~1000 images at 256x256 take seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ptxseg.model.metrics import dice_scores
from ptxseg.model.operating_point import OperatingPoint

DEFAULT_BOTTOMS = tuple(round(0.1 + 0.05 * i, 2) for i in range(17))  # 0.10 .. 0.90
DEFAULT_TOPS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
DEFAULT_MIN_AREA_FRACTIONS = (0.0, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008)
"""Minimum areas as fractions of the image (at 256x256: 0, 16, 33, 66, 131, 262, 524 pixels;
the winners' 2048 px at 1024x1024 is 0.002)."""


@dataclass
class OperatingPointSearch:
    """The result of `search_operating_point`.

    `scores[i, j, k]` is the mean per-image Dice at `min_areas[i]`, `tops[j]`, `bottoms[k]`
    (NaN where bottom > top). `plain` is the best plain threshold, for comparison.
    """

    operating_point: OperatingPoint
    competition_dice: float
    plain: OperatingPoint
    plain_competition_dice: float
    min_areas: np.ndarray
    tops: np.ndarray
    bottoms: np.ndarray
    scores: np.ndarray
    n_images: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (without the full grid)."""
        return {
            "operating_point": self.operating_point.to_dict(),
            "competition_dice": self.competition_dice,
            "plain_threshold": self.plain.bottom,
            "plain_competition_dice": self.plain_competition_dice,
            "grid": {
                "min_areas": self.min_areas.tolist(),
                "tops": self.tops.tolist(),
                "bottoms": self.bottoms.tolist(),
            },
            "n_images": self.n_images,
        }


def _as_array(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"{name} has shape {x.shape}: expected (N, H, W) or (N, 1, H, W)")
    return x


def threshold_counts(
    probs: Any, targets: Any, thresholds: Sequence[float], chunk_size: int = 32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image and threshold: pixels above it, true pixels above it; and the truth area.

    Returns (above (N, K), true_above (N, K), truth_area (N,)) for the sorted `thresholds`, where
    "above" means strictly greater, as in `OperatingPoint.apply`.
    """
    p_all, t_all = _as_array(probs, "probabilities"), _as_array(targets, "targets")
    if p_all.shape != t_all.shape:
        raise ValueError(f"probabilities {p_all.shape} and targets {t_all.shape} differ in shape")
    thr = np.asarray(thresholds, dtype=np.float32)
    if np.any(np.diff(thr) <= 0):
        raise ValueError(f"thresholds must be strictly increasing, got {thr.tolist()}")
    n, k = len(p_all), len(thr)
    above = np.zeros((n, k), np.int64)
    true_above = np.zeros((n, k), np.int64)
    for start in range(0, n, chunk_size):
        p = p_all[start : start + chunk_size].reshape(-1, p_all[0].size).astype(np.float32)
        t = t_all[start : start + chunk_size].reshape(p.shape) > 0
        m = len(p)
        # bucket b = how many thresholds lie strictly below the pixel: p > thr[j] iff j < b
        bucket = np.searchsorted(thr, p, side="left")
        index = (np.arange(m)[:, None] * (k + 1) + bucket).ravel()
        hist = np.bincount(index, minlength=m * (k + 1)).reshape(m, k + 1)
        hist_true = np.bincount(index[t.ravel()], minlength=m * (k + 1)).reshape(m, k + 1)
        # pixels above thr[j] = those in buckets j+1..k
        above[start : start + m] = np.cumsum(hist[:, ::-1], 1)[:, ::-1][:, 1:]
        true_above[start : start + m] = np.cumsum(hist_true[:, ::-1], 1)[:, ::-1][:, 1:]
    truth_area = (t_all.reshape(n, -1) > 0).sum(1).astype(np.int64)
    return above, true_above, truth_area


def _grid_axes(
    size: int,
    tops: Sequence[float],
    bottoms: Sequence[float],
    min_areas: Sequence[int] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sorted, checked tops, bottoms and minimum areas (default: fractions of `size`)."""
    if min_areas is None:
        min_areas = sorted({int(round(f * size)) for f in DEFAULT_MIN_AREA_FRACTIONS})
    tops_a = np.asarray(sorted(set(float(x) for x in tops)), dtype=np.float64)
    bottoms_a = np.asarray(sorted(set(float(x) for x in bottoms)), dtype=np.float64)
    areas_a = np.asarray(sorted(set(int(a) for a in min_areas)), dtype=np.int64)
    for v in (*tops_a, *bottoms_a):
        OperatingPoint(top=v, bottom=v)  # validates the range
    if len(areas_a) and areas_a[0] < 0:
        raise ValueError(f"min_areas must be >= 0, got {areas_a.tolist()}")
    return tops_a, bottoms_a, areas_a


def _grid_scores(
    p: np.ndarray,
    targets: Any,
    tops_a: np.ndarray,
    bottoms_a: np.ndarray,
    areas_a: np.ndarray,
    chunk_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image Dice of a kept mask at each bottom (N, B), of a dropped one (N,), and the mean
    per-image Dice of every grid point (A, T, B; NaN where bottom > top)."""
    grid = np.asarray(sorted(set(np.float32(x) for x in (*tops_a, *bottoms_a))), np.float32)
    above, true_above, truth_area = threshold_counts(p, targets, grid, chunk_size)
    col = {float(g): i for i, g in enumerate(grid)}
    top_cols = [col[float(np.float32(t))] for t in tops_a]
    bottom_cols = [col[float(np.float32(b))] for b in bottoms_a]

    tp = true_above[:, bottom_cols]  # (N, B)
    fp = above[:, bottom_cols] - tp
    fn = truth_area[:, None] - tp
    dice_kept = dice_scores(tp, fp, fn)  # (N, B)
    dice_dropped = (truth_area == 0).astype(np.float64)  # (N,)
    keep = (above[:, top_cols][:, None, :] >= areas_a[None, :, None]).astype(np.float64)  # N,A,T
    n = len(p)
    gain = np.einsum("nat,nb->atb", keep, dice_kept - dice_dropped[:, None]) / n
    scores = dice_dropped.mean() + gain  # (A, T, B)
    scores[:, bottoms_a[None, :] > tops_a[:, None]] = np.nan
    return dice_kept, dice_dropped, scores


def search_operating_point(
    probs: Any,
    targets: Any,
    tops: Sequence[float] = DEFAULT_TOPS,
    bottoms: Sequence[float] = DEFAULT_BOTTOMS,
    min_areas: Sequence[int] | None = None,
    chunk_size: int = 32,
) -> OperatingPointSearch:
    """Grid-search the operating point that maximises the mean per-image Dice.

    `probs` (N, H, W) in [0, 1] and `targets` (N, H, W) 0/1 at the model's input size. `min_areas`
    defaults to `DEFAULT_MIN_AREA_FRACTIONS` of H*W. Only points with bottom <= top are tried; a
    point with min_area 0 is a plain threshold at `bottom`. Ties go to the smallest min_area, then
    the lowest top, then the lowest bottom.
    """
    p = _as_array(probs, "probabilities")
    if not len(p):
        raise ValueError("no images to search an operating point on: the split is empty")
    tops_a, bottoms_a, areas_a = _grid_axes(p[0].size, tops, bottoms, min_areas)
    dice_kept, dice_dropped, scores = _grid_scores(
        p, targets, tops_a, bottoms_a, areas_a, chunk_size
    )
    n = len(p)
    # a plain threshold (no gate, top irrelevant) at every bottom, reported for comparison
    plain_scores = dice_dropped.mean() + (dice_kept - dice_dropped[:, None]).mean(0)
    pb = int(np.argmax(plain_scores))
    plain_op, plain_score = OperatingPoint.plain(float(bottoms_a[pb])), float(plain_scores[pb])
    if np.all(np.isnan(scores)):
        raise ValueError("no grid point has bottom <= top: widen the tops or lower the bottoms")
    flat = np.where(np.isnan(scores), -np.inf, scores)
    a, t, b = (int(i) for i in np.unravel_index(np.argmax(flat), scores.shape))
    op = OperatingPoint(float(tops_a[t]), float(bottoms_a[b]), int(areas_a[a]))
    best_score = float(scores[a, t, b])
    if areas_a[0] == 0 and plain_score >= best_score:  # the simplest point wins ties
        op, best_score = plain_op, plain_score
    if op.min_area == 0:
        op = OperatingPoint.plain(op.bottom)
    return OperatingPointSearch(
        operating_point=op,
        competition_dice=best_score,
        plain=plain_op,
        plain_competition_dice=plain_score,
        min_areas=areas_a,
        tops=tops_a,
        bottoms=bottoms_a,
        scores=scores,
        n_images=n,
    )
