"""A calibrated probability of pneumothorax from the image-level score, and how good it is.

The findings' `probability` is the model's raw score: the highest pixel probability of the image.
It ranks images well but is not the chance that the image shows a pneumothorax. A `Calibrator`
maps it to one. Two kinds are fitted on the validation split and one is chosen by
cross-validation inside that split (the lower out-of-fold Brier score), so the choice is not made
on the data a calibrator was fitted on:

- **isotonic**: a non-decreasing step function (scikit-learn's `IsotonicRegression`), applied by
  linear interpolation between its steps and clipped at both ends;
- **Platt**: a logistic curve on the logit of the score (`LogisticRegression`), kept only when it
  increases with the score.

Both are stored as plain numbers (`to_dict`) with the model and applied with NumPy alone, in any
process. `reliability`, `expected_calibration_error` (equal-mass bins) and `brier` measure a
probability against the truth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

METHODS = ("isotonic", "platt")
EPS = 1e-6
DEFAULT_BINS = 10
MIN_PER_CLASS = 2


@dataclass(frozen=True)
class Calibrator:
    """score -> probability. `x`, `y`: the isotonic steps; `a`, `b`: Platt's logistic on
    logit(score). `fitted` records where (split, images, TTA) and `cv_brier` the choice."""

    method: str
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    a: float = 0.0
    b: float = 0.0
    fitted: dict[str, Any] = field(default_factory=dict)
    cv_brier: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown calibrator {self.method!r}: expected one of {METHODS}")
        if self.method == "isotonic":
            x, y = np.asarray(self.x, float), np.asarray(self.y, float)
            if len(x) < 1 or len(x) != len(y) or np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
                raise ValueError(
                    "an isotonic calibrator needs steps x and y of one length, both non-decreasing"
                )

    def apply(self, score: Any) -> Any:
        """The calibrated probability of a score (a number, or an array of them)."""
        s = np.clip(np.asarray(score, np.float64), 0.0, 1.0)
        if self.method == "isotonic":
            out = np.interp(s, np.asarray(self.x), np.asarray(self.y))
        else:
            out = _sigmoid(self.a * _logit(s) + self.b)
        return float(out) if np.ndim(out) == 0 else out

    def describe(self) -> str:
        where = self.fitted.get("split")
        n = self.fitted.get("n_images")
        text = "isotonic regression" if self.method == "isotonic" else "Platt scaling"
        if where:
            text += f", fitted on the {where} split" + (f" ({n} images)" if n else "")
        return text

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["x"], data["y"] = list(self.x), list(self.y)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibrator:
        if not isinstance(data, Mapping) or "method" not in data:
            raise ValueError(f"a stored calibrator is a mapping with a method, got {data!r}")
        known = {"method", "x", "y", "a", "b", "fitted", "cv_brier"}
        values = {k: v for k, v in data.items() if k in known}
        values["x"] = tuple(float(v) for v in values.get("x", ()))
        values["y"] = tuple(float(v) for v in values.get("y", ()))
        return cls(**values)

    @classmethod
    def coerce(cls, value: Calibrator | Mapping[str, Any] | None) -> Calibrator | None:
        if value is None or isinstance(value, Calibrator):
            return value
        return cls.from_dict(value)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _fit(method: str, scores: np.ndarray, labels: np.ndarray) -> Calibrator | None:
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(scores, labels.astype(float))
        return Calibrator("isotonic", tuple(iso.X_thresholds_), tuple(iso.y_thresholds_))
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(C=1.0).fit(_logit(scores)[:, None], labels.astype(int))
    a, b = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    return Calibrator("platt", a=a, b=b) if a > 0 else None  # must rise with the score


def brier(probabilities, labels) -> float:
    """Mean squared difference between probability and outcome (0 best)."""
    p, y = np.asarray(probabilities, float).ravel(), np.asarray(labels, float).ravel()
    return float(np.mean((p - y) ** 2)) if len(p) else math.nan


def fit_calibrator(
    scores, labels, folds: int = 5, seed: int = 0, fitted: Mapping[str, Any] | None = None
) -> Calibrator:
    """Choose isotonic or Platt by the out-of-fold Brier score of a stratified `folds`-fold
    cross-validation of (scores, labels), then fit the chosen one on all of them.

    A ValueError says why when there are too few images of a class to fit anything."""
    from sklearn.model_selection import StratifiedKFold

    s = np.clip(np.asarray(scores, np.float64).ravel(), 0.0, 1.0)
    y = np.asarray(labels, bool).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        raise ValueError(
            f"cannot fit a calibrator on {n_pos} positive and {n_neg} negative images: "
            f"at least {MIN_PER_CLASS} of each are needed"
        )
    k = max(2, min(folds, n_pos, n_neg))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    predicted = {m: np.full(len(s), np.nan) for m in METHODS}
    for train, held in splitter.split(s[:, None], y):
        for method in METHODS:
            if min(y[train].sum(), (~y[train]).sum()) == 0:
                continue
            calibrator = _fit(method, s[train], y[train])
            if calibrator is not None:
                predicted[method][held] = calibrator.apply(s[held])
    cv = {
        m: brier(predicted[m], y) for m in METHODS if np.all(np.isfinite(predicted[m]))
    }  # a method that failed in some fold (Platt falling with the score) is out
    ranked = sorted(cv, key=lambda m: (cv[m], m != "platt"))  # ties: the simpler Platt
    for method in ranked or ["isotonic"]:
        chosen = _fit(method, s, y)
        if chosen is not None:
            info = dict(fitted or {}, n_images=len(s), n_positive=n_pos, folds=k, seed=seed)
            return Calibrator(
                chosen.method, chosen.x, chosen.y, chosen.a, chosen.b, info, cv_brier=cv
            )
    raise ValueError("no calibrator rises with the score on these images")  # pragma: no cover


def equal_mass_bins(probabilities, n_bins: int = DEFAULT_BINS) -> list[np.ndarray]:
    """Image indices in `n_bins` bins of (nearly) equal size by increasing probability."""
    p = np.asarray(probabilities, float).ravel()
    order = np.argsort(p, kind="mergesort")
    return [b for b in np.array_split(order, min(n_bins, max(len(p), 1))) if len(b)]


def reliability(probabilities, labels, n_bins: int = DEFAULT_BINS) -> list[dict[str, float]]:
    """The reliability diagram's points: per equal-mass bin its images, mean probability, the
    observed share of positives and that share's Wilson interval."""
    from ptxseg.stats.intervals import wilson

    p, y = np.asarray(probabilities, float).ravel(), np.asarray(labels, bool).ravel()
    rows = []
    for b in equal_mass_bins(p, n_bins):
        low, high = wilson(int(y[b].sum()), len(b))
        rows.append(
            {
                "n": len(b),
                "mean_probability": float(p[b].mean()),
                "observed": float(y[b].mean()),
                "observed_ci_low": low,
                "observed_ci_high": high,
            }
        )
    return rows


def expected_calibration_error(probabilities, labels, n_bins: int = DEFAULT_BINS) -> float:
    """ECE over equal-mass bins: the image-weighted mean |mean probability - observed share|."""
    rows = reliability(probabilities, labels, n_bins)
    total = sum(r["n"] for r in rows)
    if not total:
        return math.nan
    return float(sum(r["n"] * abs(r["mean_probability"] - r["observed"]) for r in rows) / total)
