"""Inference runtimes side by side: PyTorch eager fp32 vs ONNX Runtime / OpenVINO vs bf16 / int8.

One run measures every path on the same model, input size and batch, so the ratios to eager fp32
hold even on a noisy machine. Each row gives images/s, the ratio to eager fp32, the GFLOP/s
achieved and its share of the CPU's nominal fp32 peak (cores x 64 FLOP/cycle x clock: two
AVX-512 FMA units), and the Dice of the path's masks against the fp32 masks, so a faster path
states how far its output moved. A path that fails gets an `error` cell instead of ending the run.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg import atomic

# (name, runtime, precision, options)
PATHS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("torch eager fp32", "torch", "fp32", {"channels_last": False}),
    ("torch fp32 channels_last", "torch", "fp32", {"channels_last": True}),
    ("onnxruntime fp32", "onnxruntime", "fp32", {}),
    ("openvino fp32", "openvino", "fp32", {}),
    ("torch bf16 (autocast)", "torch", "bf16", {"channels_last": True}),
    ("openvino bf16", "openvino", "bf16", {}),
    ("onnxruntime int8 (static QDQ)", "onnxruntime", "int8", {}),
    ("openvino int8 (QDQ model)", "openvino", "int8", {}),
]
COLUMNS = {
    "path": "Path",
    "encoder": "Encoder",
    "size": "Size",
    "batch_size": "Batch",
    "images_per_s": "Images/s",
    "speedup": "x eager fp32",
    "gflops_per_s": "GFLOP/s",
    "peak_share": "Share of fp32 peak",
    "dice_vs_fp32": "Dice vs fp32",
    "error": "Error",
}


def cpu_peak_gflops() -> tuple[float, str]:
    """Nominal fp32 peak: cores x 64 FLOP/cycle (2 AVX-512 FMA units x 16 lanes x 2) x clock."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mhz = 0.0
    try:
        with open("/proc/cpuinfo") as handle:
            values = [float(line.split(":")[1]) for line in handle if line.startswith("cpu MHz")]
        mhz = max(values) if values else 0.0
    except OSError:
        pass
    if not mhz:
        return float("nan"), f"{cores} cores, clock unknown"
    return cores * 64 * mhz / 1000.0, f"{cores} cores x 64 FLOP/cycle x {mhz / 1000:.2f} GHz"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Pooled Dice of two boolean mask stacks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def build_model(encoder: str, size: int, checkpoint: str | Path | None = None):
    """The checkpoint's model, or a random-weight U-Net of `encoder` at `size` (speed only)."""
    if checkpoint:
        from ptxseg.model.checkpoint import load_model

        return load_model(checkpoint)
    from ptxseg.model.unet import build_model as build

    return build({"data": {"size": size}, "model": {"encoder": encoder, "encoder_weights": "none"}})


def evaluation_images(work: str | Path | None, size: int, n: int = 8, split: str = "test"):
    """Images to compare masks on (and calibrate with): a prepared split, else synthetic ones."""
    if work:
        cache = Path(work) / "cache" / str(size)
        path = cache / f"{split}-images.npy"
        if path.is_file():
            arr = np.load(path, mmap_mode="r")[:n]
            return [np.asarray(a, np.float32) / 255.0 for a in arr], f"{split} split of {work}"
    from ptxseg.inference.onnx import synthetic_calibration_images

    seed = 1 if split == "test" else 2
    return synthetic_calibration_images(n, size, seed=seed), "synthetic images"


def _time_runner(run, batch: np.ndarray, min_time: float, min_repeats: int) -> float:
    """Images per second after one warm-up call."""
    run(batch)
    count, start = 0, time.perf_counter()
    while count < min_repeats or time.perf_counter() - start < min_time:
        run(batch)
        count += 1
    return count * len(batch) / (time.perf_counter() - start)


def benchmark_model(
    model,
    batch_size: int = 4,
    paths: Sequence[str] | None = None,
    work: str | Path | None = None,
    min_time: float = 3.0,
    min_repeats: int = 2,
    progress=None,
) -> list[dict[str, Any]]:
    """One row per inference path for this model (see PATHS)."""
    from ptxseg.benchmarks.backbones import count_gflops_per_image
    from ptxseg.inference.predictor import Predictor, sigmoid

    size = int(model.input_size)
    gflop = count_gflops_per_image(model, size)
    peak, _ = cpu_peak_gflops()
    # a prepared split: compare the masks on (up to) 64 of its images; synthetic: a few batches
    images, _ = evaluation_images(work, size, n=64 if work else 2 * batch_size)
    calibration, _ = evaluation_images(work, size, n=8, split="train")
    batch = np.stack(images[:batch_size])[:, None]
    evalset = np.stack(images)[:, None]
    rows: list[dict[str, Any]] = []
    reference = eager = None
    tmp = tempfile.TemporaryDirectory(prefix="ptxseg-bench-")
    cache: dict[str, Path] = {}

    def onnx_files(precision: str) -> Path:
        """The fp32 ONNX export (once), and its int8 copy (once) for int8 paths."""
        from ptxseg.inference.export import export_onnx
        from ptxseg.inference.onnx import quantize_onnx

        if "fp32" not in cache:
            cache["fp32"] = Path(export_onnx(model, Path(tmp.name) / "m.onnx")["path"])
        if precision == "int8" and "int8" not in cache:
            cache["int8"] = quantize_onnx(cache["fp32"], Path(tmp.name) / "m8.onnx", calibration)
        return cache["int8" if precision == "int8" else "fp32"]

    chosen = [p for p in PATHS if paths is None or p[0] in paths or p[1] in paths]
    for name, runtime, precision, options in chosen:
        row: dict[str, Any] = {
            "path": name,
            "encoder": getattr(model, "encoder", ""),
            "size": size,
            "batch_size": batch_size,
        }
        try:
            predictor = _predictor(Predictor, model, runtime, precision, options, onnx_files)
            rate = _time_runner(predictor._run, batch, min_time, min_repeats)
            masks = sigmoid(predictor.logits(evalset)) > 0.5
            if reference is None:
                reference, eager = masks, rate
            row.update(
                images_per_s=round(rate, 3),
                speedup=round(rate / eager, 2),
                gflops_per_s=round(rate * gflop, 1),
                peak_share=round(rate * gflop / peak, 3) if peak == peak else "",
                dice_vs_fp32=round(dice(masks, reference), 4),
            )
        except Exception as err:  # noqa: BLE001 - one failing path must not end the run
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        rows.append(row)
        if progress:
            progress(row)
    tmp.cleanup()
    return rows


def _predictor(cls, model, runtime, precision, options, onnx_files):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if runtime == "torch":
            return cls(model, runtime, precision=precision, **options)
        return cls(onnx_files(precision), runtime, precision=precision)


def end_to_end(
    model, dicom_dir: str | Path | None, runtime: str, precision: str, batch_size: int, n: int = 16
) -> dict[str, Any]:
    """`predict` images/s on a folder of DICOMs, decoding and every output file included."""
    import warnings

    from ptxseg.inference.pipeline import collect_inputs, predict_files
    from ptxseg.inference.predictor import Predictor

    with tempfile.TemporaryDirectory(prefix="ptxseg-e2e-") as tmp:
        if dicom_dir is None:
            from ptxseg.data.synth import generate_dataset

            generate_dataset(Path(tmp) / "dicoms", n, size=1024, seed=0, progress=False)
            dicom_dir = Path(tmp) / "dicoms"
        files = collect_inputs([dicom_dir])[:n]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predictor = Predictor(
                model, runtime=runtime, precision=precision, batch_size=batch_size
            )
            start = time.perf_counter()
            result = predict_files(predictor, files, Path(tmp) / "out", progress=False)
            seconds = time.perf_counter() - start
    return {
        "path": f"end-to-end predict, {runtime} {precision}",
        "encoder": getattr(model, "encoder", ""),
        "size": int(model.input_size),
        "batch_size": batch_size,
        "images_per_s": round(result.predicted / seconds, 3),
        "error": f"{result.errors} files failed" if result.errors else "",
    }


def write_tables(rows: Sequence[dict[str, Any]], out_dir: str | Path, note: str = "") -> Path:
    """runtime-benchmark.md and .csv in `out_dir`; returns the Markdown path."""
    from ptxseg.benchmarks.backbones import environment_line, rows_to_markdown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_csv(out / "runtime-benchmark.csv", COLUMNS, rows)
    _, peak_text = cpu_peak_gflops()
    text = (
        "# Inference runtimes\n\n"
        f"{environment_line()}; nominal fp32 peak: {peak_text}.\n"
        f"{note}\n\n" + rows_to_markdown(rows, COLUMNS)
    )
    return atomic.write_text(out / "runtime-benchmark.md", text)
