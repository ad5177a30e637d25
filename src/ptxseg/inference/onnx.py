"""ONNX files that serve on their own: the graph, its metadata and int8 quantisation.

The graph takes a float32 (B, 1, S, S) batch in [0, 1] (the encoder's normalisation is inside it,
as in the PyTorch model) with a dynamic batch dimension and returns mask logits. The training
config, encoder, input size and operating point (with the TTA it was searched with) travel as
ONNX `metadata_props`, so a Predictor built from the .onnx file alone applies the same decision
rule as the checkpoint. `ptxseg.inference.export` adds the parity check through the Predictor.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg.data.preprocess import to_float, to_model_input
from ptxseg.model.operating_point import OperatingPoint

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
META_PREFIX = "ptxseg."


def model_metadata(model) -> dict[str, Any]:
    """What a served model needs besides its weights, from a SegmentationModel's attributes."""
    op = OperatingPoint.coerce(getattr(model, "operating_point", None))
    encoder = getattr(model, "encoder", None)
    meta = {
        "encoder": encoder if isinstance(encoder, str) else None,
        "input_size": int(model.input_size),
        "config": getattr(model, "config", None) or {},
        "operating_point": None if op is None else op.to_dict(),
        "operating_points": getattr(model, "operating_points", None),
        "calibrator": getattr(model, "calibrator", None),
    }
    if callable(getattr(model, "description", None)):  # an ensemble: its members
        meta["ensemble"] = model.description()
    return meta


def read_metadata(onnx_path: str | Path) -> dict[str, Any]:
    """The ptxseg metadata stored in an ONNX file (encoder, input_size, config, operating_point)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    props = {p.key[len(META_PREFIX) :]: p.value for p in model.metadata_props}
    if "input_size" not in props:
        raise ValueError(
            f"{onnx_path} has no ptxseg metadata (input_size): expected a file written by "
            "`ptxseg export`; re-export it from the checkpoint"
        )
    return {key: json.loads(value) for key, value in props.items()}


def write_metadata(path: Path, metadata: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, json.dumps(value)
    model.producer_name = "ptxseg"
    onnx.save(model, str(path))


def write_onnx(model, path: str | Path, opset: int = 17) -> dict[str, Any]:
    """Trace a SegmentationModel into an ONNX file at `path` with its metadata; returns it."""
    import torch

    model = model.cpu().eval()
    size = int(model.input_size)
    metadata = model_metadata(model)
    # the tracer's warnings (shape-dependent control flow in the encoders) are about tracing
    # in general; the export's parity check is what tells whether this graph is right
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.rand(1, 1, size, size),),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
        )
    write_metadata(Path(path), metadata)
    return dict(metadata, opset=opset)


class _Calibration:
    """onnxruntime.quantization CalibrationDataReader over (1, 1, S, S) float32 arrays."""

    def __init__(self, batches: Iterable[np.ndarray], input_name: str):
        self._items = iter([{input_name: b} for b in batches])

    def get_next(self):
        return next(self._items, None)


def calibration_batches(images: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
    """(H, W) images in [0, 1] -> (1, 1, S, S) float batches, preprocessed as the Predictor does."""
    return [to_float(to_model_input(image, size))[None, None] for image in images]


def synthetic_calibration_images(n: int = 8, size: int = 256, seed: int = 0) -> list[np.ndarray]:
    """Smooth chest-radiograph-like images (two dark lung fields in brighter tissue)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(n):
        base = 0.55 + 0.15 * rng.standard_normal()
        img = np.full((size, size), base, np.float32)
        for cx in (0.3 + 0.05 * rng.standard_normal(), 0.7 + 0.05 * rng.standard_normal()):
            lung = ((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
            img[lung] -= 0.35
        img += 0.05 * rng.standard_normal((size, size)).astype(np.float32)
        images.append(np.clip(img, 0, 1).astype(np.float32))
    return images


METHODS = ("minmax", "percentile", "entropy")


def quantize_onnx(
    fp32_path: str | Path,
    out: str | Path,
    calibration: Sequence[np.ndarray] | None = None,
    mode: str = "static",
    reduce_range: bool = False,
    *,
    per_channel: bool = True,
    nodes_to_exclude: Sequence[str] | None = None,
    method: str = "minmax",
) -> Path:
    """Write an int8 copy of an fp32 ONNX model (metadata kept).

    `static` (default): QDQ format, int8 weights (per channel, or per tensor) and uint8
    activations calibrated on `calibration` images (H, W in [0, 1]; synthetic ones when None)
    with `method` (minmax, percentile at 99.999%, or entropy); `nodes_to_exclude` stay in fp32
    (default: the segmentation head). `dynamic`: int8 weights, activations quantised at run time
    (no calibration; slower for convs). `reduce_range` quantises to 7 bits: CPUs without VNNI
    multiply u8 x s8 pairs into int16 accumulators that saturate on full 8-bit values (ONNX
    Runtime documents the option for them). `ptxseg.inference.int8` chooses these settings by
    checking the masks.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}: expected one of {METHODS}")
    fp32_path, out = Path(fp32_path), Path(out)
    metadata = read_metadata(fp32_path)
    size = int(metadata["input_size"])
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if mode == "dynamic":
            quantize_dynamic(
                fp32_path,
                tmp,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                reduce_range=reduce_range,
            )
        elif mode == "static":
            options = {"per_channel": per_channel, "nodes_to_exclude": nodes_to_exclude}
            options["work"] = out.parent
            _quantize_static(fp32_path, tmp, calibration, size, reduce_range, method, options)
        else:
            raise ValueError(f"unknown quantisation mode {mode!r}: expected 'static' or 'dynamic'")
        write_metadata(
            tmp,
            dict(metadata, precision="int8", quantization=mode, reduce_range=reduce_range),
        )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _quantize_static(fp32_path: Path, tmp: Path, calibration, size, reduce_range, method, options):
    """`quantize_onnx`'s static QDQ path: calibrated activations, int8 weights."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    per_channel, nodes_to_exclude = options["per_channel"], options["nodes_to_exclude"]
    work = options["work"]  # where the entropy ranges are written
    images = calibration if calibration else synthetic_calibration_images(size=size)
    reader = _Calibration(calibration_batches(images, size), INPUT_NAME)
    if nodes_to_exclude is None:
        # The last convolution writes the logits that are cut at 0: in uint8 they lose
        # the fine steps around 0 (a trained U-Net-ResNet50's masks fell to a Dice of
        # 0.53 against fp32; 0.98 with this one layer in fp32, at about the same speed).
        nodes_to_exclude = [
            n.name for n in onnx.load(str(fp32_path)).graph.node if "segmentation_head" in n.name
        ]
    method_enum = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[method]
    ranges = None
    if method == "entropy":
        ranges = _entropy_ranges(fp32_path, reader, work)
        reader = None if ranges is not None else reader
    with _quiet_quantizer():
        quantize_static(
            fp32_path,
            tmp,
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            reduce_range=reduce_range,
            calibrate_method=method_enum,
            nodes_to_exclude=list(nodes_to_exclude),
            **({"calibration_cache_path": ranges} if ranges is not None else {}),
        )
    if ranges is not None:
        ranges.unlink(missing_ok=True)


ENTROPY_BINS = 512
"""Histogram bins for entropy calibration. ONNX Runtime's default (128 bins for 128 quantised
bins) leaves the KL search a single candidate, the full range, so "entropy" would be min-max.
512 bins give it 193 candidates; 2048 (TensorRT's choice) took 5.7 times as long for an
EfficientNet-B0 at 128 px on 2 cores (538 s against 94 s; min-max: 7 s)."""


def _entropy_ranges(fp32_path: Path, reader, folder: Path) -> Path | None:
    """Entropy-calibrated ranges over ENTROPY_BINS bins, as a calibration cache file that
    `quantize_static` loads (None where this ONNX Runtime cannot take one: then its default)."""
    import inspect

    from onnxruntime.quantization import CalibrationMethod, calibrate, quantize_static

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters or not hasattr(
        calibrate, "save_tensors_data"
    ):
        return None
    with tempfile.TemporaryDirectory(prefix=".calibration-", dir=folder) as work:
        with _quiet_quantizer():
            calibrator = calibrate.create_calibrator(
                fp32_path,
                None,
                augmented_model_path=str(Path(work) / "augmented.onnx"),
                calibrate_method=CalibrationMethod.Entropy,
                extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": 128},
            )
            calibrator.collect_data(reader)
            ranges = calibrator.compute_data()
        fd, name = tempfile.mkstemp(prefix=".ranges-", suffix=".json", dir=folder)
        os.close(fd)
        calibrate.save_tensors_data(ranges, name)
        return Path(name)


class _quiet_quantizer:
    """ONNX Runtime's quantiser prints progress to stdout and logs advice to the root logger;
    neither belongs on a user's terminal."""

    def __enter__(self):
        import contextlib
        import io
        import logging

        self._stdout = contextlib.redirect_stdout(io.StringIO())
        self._stdout.__enter__()
        self._root = logging.getLogger()
        self._level = self._root.level
        self._root.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        self._root.setLevel(self._level)
        return self._stdout.__exit__(*exc)
