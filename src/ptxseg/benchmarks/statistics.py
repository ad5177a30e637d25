"""The cost of evaluate's 95% intervals: the vectorised patient bootstrap against a plain loop.

One row per configuration, side by side in one run: every headline metric (13 ratio metrics
and the ROC AUC) of N images over B patient resamples, vectorised (`ptxseg.stats.bootstrap`:
weights of a chunk of resamples at once, one matrix product for all sums, the AUC from sorted
scores), and the plain reference (for each resample, the drawn patients' images scored by
`model.metrics.summarise`), timed on fewer resamples and scaled to B.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ptxseg.benchmarks.common import timed, write_table
from ptxseg.model.metrics import summarise
from ptxseg.stats.bootstrap import PatientBootstrap

COLUMNS = {
    "benchmark": "benchmark",
    "images": "images",
    "patients": "patients",
    "resamples": "resamples",
    "seconds": "seconds (for the resamples)",
    "cpu_seconds": "CPU seconds",
    "per_resample_ms": "ms per resample",
    "speed_up": "speed-up vs plain",
}


def synthetic_split(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-image counts of a split of `n` images (about 22% positive, 1.2 images per patient)."""
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.22
    tp = np.where(truth, rng.integers(0, 4000, n), 0)
    fn = np.where(truth, rng.integers(1, 3000, n), 0)
    fp = np.where(rng.random(n) < 0.15, rng.integers(0, 3000, n), 0)
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": 1024 * 1024 - tp - fp - fn,
        "score": np.clip(truth * 0.35 + rng.random(n) * 0.65, 0, 1),
        "groups": rng.integers(0, int(n / 1.2), n),
    }


def _matrix(d: dict[str, np.ndarray]) -> np.ndarray:
    tp, fp, fn, tn = (d[k].astype(float) for k in ("tp", "fp", "fn", "tn"))
    truth, pred = (tp + fn) > 0, (tp + fp) > 0
    den = 2 * tp + fp + fn
    dice = np.divide(2 * tp, den, out=np.ones_like(den), where=den > 0)
    iou = np.divide(tp, tp + fp + fn, out=np.ones_like(den), where=den > 0)
    columns = [
        np.ones_like(tp),
        dice,
        iou,
        (tp + tn) / (tp + tn + fp + fn),
        truth,
        dice * truth,
        iou * truth,
        2 * tp,
        den,
        tp,
        tp + fp + fn,
        tp + tn,
        tp + tn + fp + fn,
        pred & truth,
        ~truth,
        ~pred & ~truth,
        pred,
        ~pred,
    ]
    return np.stack([np.asarray(c, float) for c in columns], 1)


def vectorised(d: dict[str, np.ndarray], resamples: int) -> None:
    boot = PatientBootstrap(d["groups"], resamples, seed=0)
    boot.replicates(_matrix(d), (d["tp"] + d["fn"]) > 0, d["score"])


def plain(d: dict[str, np.ndarray], resamples: int) -> None:
    boot = PatientBootstrap(d["groups"], resamples, seed=0)
    members = [np.flatnonzero(boot.patient == p) for p in range(boot.n_patients)]
    for draw in boot.draws():
        for patients in draw:
            idx = np.concatenate([members[p] for p in patients])
            summarise(d["tp"][idx], d["fp"][idx], d["fn"][idx], d["tn"][idx], d["score"][idx])


def run_stats_benchmark(
    out: Path, n_images: int = 10_000, resamples: int = 2000, plain_resamples: int = 20
):
    """Time both and write `statistics-benchmark.md` / `.csv` into `out`; returns the rows."""
    d = synthetic_split(n_images)
    patients = len(np.unique(d["groups"]))
    cpu = time.process_time()
    fast = timed(lambda: vectorised(d, resamples), warmup=0, repeats=3)
    fast_cpu = (time.process_time() - cpu) / len(fast.seconds)
    cpu = time.process_time()
    slow = timed(lambda: plain(d, plain_resamples), warmup=0, repeats=1)
    scale = resamples / plain_resamples
    slow_cpu = (time.process_time() - cpu) * scale
    fast_s = float(np.median(fast.seconds))
    slow_s = float(np.median(slow.seconds)) * scale
    rows = [
        {
            "benchmark": "vectorised patient bootstrap: 13 ratio metrics + ROC AUC",
            "images": n_images,
            "patients": patients,
            "resamples": resamples,
            "seconds": round(fast_s, 2),
            "cpu_seconds": round(fast_cpu, 2),
            "per_resample_ms": round(1000 * fast_s / resamples, 3),
            "speed_up": round(slow_s / fast_s, 1),
        },
        {
            "benchmark": f"plain loop (summarise per resample; {plain_resamples} timed, scaled)",
            "images": n_images,
            "patients": patients,
            "resamples": resamples,
            "seconds": round(slow_s, 1),
            "cpu_seconds": round(slow_cpu, 1),
            "per_resample_ms": round(1000 * slow_s / resamples, 3),
            "speed_up": 1.0,
        },
    ]
    write_table(
        out,
        "statistics-benchmark",
        "Patient-level bootstrap of evaluate's intervals",
        COLUMNS,
        rows,
        baseline="the plain loop",
        notes="Median of 3 runs of the vectorised path (CPU seconds: the mean per run, all "
        "threads; on a shared machine the wall time also counts the other processes' share); "
        "the plain loop is timed on "
        f"{plain_resamples} resamples and scaled to {resamples}. Both draw the same resamples "
        "(tests/stats/test_bootstrap.py checks that they give the same replicates).",
    )
    return rows
