"""`ptxseg benchmark-data`: RLE, DICOM decoding and prepare throughput, side by side in one run.

Each comparison runs its reference in the same process right after ptxseg's version, so the
ratios hold on a noisy machine even when the absolute numbers drift.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pydicom

from ptxseg.benchmarks.common import rows_to_markdown, timed
from ptxseg.benchmarks.common import write_table as write_harness_table
from ptxseg.data.dicom import read_dicom
from ptxseg.data.rle import rle_decode, rle_encode

# ---------------------------------------------------------------- references


def reference_decode(rle: str, height: int, width: int) -> np.ndarray:
    """The competition's own `rle2mask`: a Python loop over the runs."""
    mask = np.zeros(width * height, dtype=np.uint8)
    array = [int(x) for x in rle.split()]
    starts, lengths = array[0::2], array[1::2]
    position = 0
    for start, length in zip(starts, lengths, strict=True):
        position += start
        mask[position : position + length] = 255
        position += length
    return mask.reshape(width, height).T


def reference_encode(mask: np.ndarray) -> str:
    """A per-run Python loop over the column-major pixels (the competition's `mask2rle` shape)."""
    flat = mask.T.ravel()
    runs, position, last_end = [], 0, 0
    n = flat.size
    while position < n:
        if flat[position]:
            start = position
            while position < n and flat[position]:
                position += 1
            runs += [start - last_end, position - start]
            last_end = position
        else:
            position += 1
    return " ".join(map(str, runs)) if runs else "-1"


def realistic_masks(n: int, size: int = 1024, seed: int = 0) -> list[np.ndarray]:
    """Pneumothorax-like regions: one or two crescents along the chest wall, 0.2-3% of the image."""
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(n):
        mask = np.zeros((size, size), np.uint8)
        for _ in range(rng.integers(1, 3)):
            center = (
                int(rng.integers(size // 5, size * 4 // 5)),
                int(rng.integers(size // 6, size // 2)),
            )
            axes = (
                int(rng.integers(size // 40, size // 12)),
                int(rng.integers(size // 10, size // 4)),
            )
            cv2.ellipse(mask, center, axes, float(rng.uniform(-30, 30)), 0, 360, 1, -1)
        masks.append(mask.astype(bool))
    return masks


def _rate(fn: Callable[[], object], count: int, repeat: int = 3) -> float:
    """Best items/s over `repeat` runs of `fn` (which handles `count` items)."""
    return timed(fn, items=count, warmup=0, repeats=repeat).best_rate


# ---------------------------------------------------------------- the three comparisons


def bench_rle(n_rows: int = 200, size: int = 1024, rles: Sequence[str] | None = None) -> list[dict]:
    masks = (
        realistic_masks(n_rows, size) if rles is None else [rle_decode(r, size, size) for r in rles]
    )
    strings = [rle_encode(m) for m in masks]
    assert all(
        np.array_equal(reference_decode(s, size, size) > 0, m)
        for s, m in zip(strings[:5], masks[:5], strict=True)
    )
    assert all(reference_encode(m) == s for s, m in zip(strings[:5], masks[:5], strict=True))
    rows = []
    for step, ours, ref in (
        (
            "decode",
            lambda: [rle_decode(s, size, size) for s in strings],
            lambda: [reference_decode(s, size, size) for s in strings],
        ),
        (
            "encode",
            lambda: [rle_encode(m) for m in masks],
            lambda: [reference_encode(m) for m in masks[:20]],
        ),
    ):
        ref_count = len(strings) if step == "decode" else min(20, len(masks))
        ours_rate, ref_rate = _rate(ours, len(strings)), _rate(ref, ref_count, repeat=1)
        rows.append(
            {
                "benchmark": f"RLE {step} ({size}px rows)",
                "ptxseg": ours_rate,
                "reference": ref_rate,
                "unit": "rows/s",
                "speed-up": ours_rate / ref_rate,
                "detail": "reference: per-run Python loop"
                + (" over pixels" if step == "encode" else ""),
            }
        )
    ours_total = 1 / rows[0]["ptxseg"] + 1 / rows[1]["ptxseg"]
    ref_total = 1 / rows[0]["reference"] + 1 / rows[1]["reference"]
    rows.insert(
        0,
        {
            "benchmark": f"RLE decode + encode ({size}px rows)",
            "ptxseg": 1 / ours_total,
            "reference": 1 / ref_total,
            "unit": "rows/s",
            "speed-up": ref_total / ours_total,
            "detail": "one decode and one encode per row",
        },
    )
    return rows


def bench_dicom(files: Sequence[Path], label: str) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        diff = max(float(np.abs(read_dicom(f)[0] * 255 - _pixel_array_01(f)).max()) for f in files)
        # Results are dropped as they come, as in prepare: keeping them all would time page
        # faults of fresh memory rather than decoding.
        ours = _rate(lambda: _each(files, read_dicom), len(files))
        ref = _rate(lambda: _each(files, lambda f: pydicom.dcmread(f).pixel_array), len(files))
    return {
        "benchmark": f"DICOM read ({label}, {len(files)} files)",
        "ptxseg": ours,
        "reference": ref,
        "unit": "images/s",
        "speed-up": ours / ref,
        "detail": f"reference: pydicom pixel_array; max difference {diff:.2f} gray levels of 255",
    }


def _each(files: Sequence[Path], read: Callable) -> None:
    for f in files:
        read(f)


def _pixel_array_01(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.astype(np.float32)
    return 255 - pixels if ds.PhotometricInterpretation == "MONOCHROME1" else pixels


def bench_prepare(images: Path, annotations: Path, sizes=(256, 512), workers=(1, 2)) -> list[dict]:
    from ptxseg.data.work_folder import PrepareOptions, prepare_work_folder

    n = len(list(images.rglob("*.dcm")))
    rows = []
    for size in sizes:
        rates = {}
        for w in workers:
            with tempfile.TemporaryDirectory() as tmp:

                def run(w: int = w, tmp: str = tmp, size: int = size) -> None:
                    prepare_work_folder(
                        images, annotations, Path(tmp), PrepareOptions(size=size, workers=w)
                    )

                rates[w] = timed(run, items=n, warmup=0, repeats=1).rate
        base = rates[workers[0]]
        for w in workers:
            rows.append(
                {
                    "benchmark": f"prepare {size}px, {w} worker(s), {n} images",
                    "ptxseg": rates[w],
                    "reference": base,
                    "unit": "images/s",
                    "speed-up": rates[w] / base,
                    "detail": f"reference: {workers[0]} worker(s)",
                }
            )
    return rows


def bench_loader(
    images: Path, annotations: Path, size: int = 512, batch: int = 16, workers: int = 2
) -> dict:
    """Training batches through DataLoader workers: the cache's uint8 rows (what device
    augmentation takes, made float on the GPU) against float32 items (what loader augmentation
    takes), augmentation left out of both so that only the data's form differs."""
    from torch.utils.data import DataLoader

    from ptxseg.data.dataset import SegmentationDataset
    from ptxseg.data.work_folder import PrepareOptions, prepare_work_folder

    with tempfile.TemporaryDirectory() as tmp:
        prepare_work_folder(
            images, annotations, Path(tmp), PrepareOptions(size=size, workers=workers)
        )
        rates = {}
        for raw in (True, False):
            dataset = SegmentationDataset(tmp, "train", size, raw=raw)
            loader = DataLoader(
                dataset, batch_size=batch, num_workers=workers, persistent_workers=workers > 0
            )
            epochs = max(1, 512 // len(dataset))

            def run(loader=loader, epochs=epochs) -> None:
                for _ in range(epochs):
                    for _ in loader:
                        pass

            rates[raw] = timed(run, items=epochs * len(dataset), warmup=1, repeats=3).rate
            del loader
    per_batch = batch * size * size * 2 / 2**20  # image + mask
    return {
        "benchmark": f"training loader {size}px, batches of {batch}, {workers} workers",
        "ptxseg": rates[True],
        "reference": rates[False],
        "unit": "images/s",
        "speed-up": rates[True] / rates[False],
        "detail": f"uint8 rows ({per_batch:.0f} MB a batch) vs float32 items "
        f"({4 * per_batch:.0f} MB)",
    }


# ---------------------------------------------------------------- the command body


def run_data_benchmark(
    out: Path, real_dir: Path | None, n_synthetic: int = 60, rle_rows: int = 200, progress=None
) -> list[dict]:
    """Run every comparison; write `data-benchmark.md` and `.csv` into `out`."""
    from ptxseg.data.synthetic import generate_dataset

    rows = bench_rle(rle_rows)
    real = sorted(real_dir.rglob("*.dcm")) if real_dir and real_dir.is_dir() else []
    if real:
        rows.append(bench_dicom(real, "real SIIM"))
    tmp = Path(tempfile.mkdtemp(prefix="ptxseg-bench-"))
    try:
        generate_dataset(tmp, n_images=n_synthetic, size=1024, seed=0)
        synthetic = sorted(tmp.rglob("*.dcm"))
        rows.append(bench_dicom(synthetic, "synthetic 1024px"))
        rows += bench_prepare(tmp / "dicom-images-train", tmp / "train-rle.csv")
        rows.append(bench_loader(tmp / "dicom-images-train", tmp / "train-rle.csv"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_data_table(rows, out)
    return rows


COLUMNS = {
    "benchmark": "benchmark",
    "ptxseg": "ptxseg",
    "reference": "reference",
    "unit": "unit",
    "speed-up": "speed-up (x)",
    "detail": "detail",
}


def _rounded(rows: Sequence[dict]) -> list[dict]:
    return [{k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()} for r in rows]


def format_markdown(rows: Sequence[dict]) -> str:
    return rows_to_markdown(_rounded(rows), COLUMNS)


def write_data_table(rows: Sequence[dict], out: Path) -> None:
    write_harness_table(
        out,
        "data-benchmark",
        "Data layer: ptxseg against plain references",
        COLUMNS,
        _rounded(rows),
        baseline="the reference named in each row (column speed-up = ptxseg / reference)",
    )
