"""Inference runtimes side by side: PyTorch eager fp32 vs ONNX Runtime / OpenVINO vs bf16 / int8.

One run measures every path through the `Predictor` (8-bit input to probabilities, as predict
and serve run it) on the same model, input size and batch, so the ratios to the baseline, eager
fp32, hold even on a noisy machine. Each row gives images/s, the ratio to eager fp32, the GFLOP/s
achieved and its share of the CPU's nominal fp32 peak (cores x 64 FLOP/cycle x clock: two
AVX-512 FMA units), and the Dice of the path's masks (at the model's operating point) against the
fp32 masks, so a faster path states how far its output moved. A path that fails, or that this
CPU cannot run well (see `inference.runtimes.check_cpu_precision`), gets an `error` cell.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg.benchmarks.common import add_ratios, error_text, timed, write_table
from ptxseg.system import usable_cores

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


BASELINE = "torch eager fp32"


def cpu_mhz() -> float:
    """The highest current clock of the CPU's cores in MHz (0 when unknown)."""
    try:
        with open("/proc/cpuinfo") as handle:
            values = [float(line.split(":")[1]) for line in handle if line.startswith("cpu MHz")]
    except OSError:
        return 0.0
    return max(values) if values else 0.0


def cpu_peak_gflops(cores: int | None = None, mhz: float | None = None) -> tuple[float, str]:
    """Nominal fp32 peak: cores x 64 FLOP/cycle (2 AVX-512 FMA units x 16 lanes x 2) x clock."""
    cores = usable_cores() if cores is None else cores
    mhz = cpu_mhz() if mhz is None else mhz
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
    """Model inputs (uint8 (S, S)) to compare masks on and calibrate with: a prepared split's
    cache, else synthetic radiograph-like images; and where they came from."""
    if work:
        cache = Path(work) / "cache" / str(size)
        path = cache / f"{split}-images.npy"
        if path.is_file():
            arr = np.load(path, mmap_mode="r")[:n]
            return [np.asarray(a) for a in arr], f"{split} split of {work}"
    from ptxseg.data.preprocess import to_model_input
    from ptxseg.inference.onnx import synthetic_calibration_images

    seed = 1 if split == "test" else 2
    images = synthetic_calibration_images(n, size, seed=seed)
    return [to_model_input(im, size) for im in images], "synthetic images"


def benchmark_model(
    model,
    batch_size: int = 4,
    paths: Sequence[str] | None = None,
    work: str | Path | None = None,
    min_time: float = 3.0,
    min_repeats: int = 2,
    progress=None,
) -> list[dict[str, Any]]:
    """One row per inference path for this model (see PATHS); ratios against BASELINE."""
    from ptxseg.benchmarks.backbones import count_gflops_per_image
    from ptxseg.inference.predictor import Predictor

    size = int(model.input_size)
    gflop = count_gflops_per_image(model, size)
    peak, _ = cpu_peak_gflops()
    # a prepared split: compare the masks on (up to) 64 of its images; synthetic: a few batches
    images, _ = evaluation_images(work, size, n=64 if work else 2 * batch_size)
    calibration, _ = evaluation_images(work, size, n=8, split="train")
    calibration = [c.astype(np.float32) / 255.0 for c in calibration]
    batch = np.stack(images[:batch_size])
    evalset = np.stack(images)
    rows: list[dict[str, Any]] = []
    reference = None
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
            timing = timed(
                lambda p=predictor: p.probabilities(batch),
                items=batch_size,
                repeats=min_repeats,
                min_time=min_time,
            )
            masks = predictor.operating_point.apply(predictor.probabilities(evalset))
            if reference is None and name == BASELINE:
                reference = masks
            rate = timing.mean_rate
            row.update(
                images_per_s=round(rate, 3),
                gflops_per_s=round(rate * gflop, 1),
                peak_share=round(rate * gflop / peak, 3) if peak == peak else "",
                dice_vs_fp32=round(dice(masks, reference), 4) if reference is not None else "",
            )
        except Exception as err:  # noqa: BLE001 - one failing path must not end the run
            row["error"] = error_text(err, 200)
        rows.append(row)
        if progress:
            progress(row)
    tmp.cleanup()
    add_ratios(rows, "images_per_s", lambda r: r["path"] == BASELINE)
    return rows


def _predictor(cls, model, runtime, precision, options, onnx_files):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if runtime == "torch":
            return cls(model, runtime, precision=precision, tta="none", **options)
        return cls(onnx_files(precision), runtime, precision=precision, tta="none")


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
            results = []
            run = lambda: results.append(  # noqa: E731
                predict_files(predictor, files, Path(tmp) / "out", progress=False)
            )
            seconds = timed(run, warmup=0, repeats=1).p50
            result = results[0]
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
    _, peak_text = cpu_peak_gflops()
    paths = write_table(
        out_dir,
        "runtime-benchmark",
        "Inference runtimes",
        COLUMNS,
        rows,
        baseline=f"{BASELINE} (column x eager fp32; masks compared with its masks)",
        notes=f"Nominal fp32 peak: {peak_text}. {note}",
    )
    return paths["md"]
