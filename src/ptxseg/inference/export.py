"""Exports that users share: ONNX with a parity check through the Predictor, and safetensors.

An ONNX file is written under a temporary name, compared with the PyTorch path of the Predictor
on random batches, and only then moved into place: a file that would predict differently is never
left behind. `--format safetensors` writes the inference-model folder of `ptxseg.model.checkpoint`.
An ensemble (`ptxseg.inference.ensemble.EnsembleModel`) exports as one graph that runs every
member and returns the logit of their mean probability, so ONNX Runtime and OpenVINO serve it
from one file with the same parity check.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg.inference.onnx import write_onnx
from ptxseg.inference.predictor import Predictor
from ptxseg.model.operating_point import OperatingPointWarning

PARITY_TOLERANCE = 1e-4
FORMATS = ("onnx", "safetensors")


class ParityError(RuntimeError):
    """The exported model's probabilities differ from PyTorch's by more than the tolerance."""


def parity(model, onnx_path: str | Path, batch_sizes: Sequence[int] = (1, 2), seed: int = 0):
    """Max |probability| difference between the PyTorch and the ONNX Runtime path of the
    Predictor, on random 8-bit inputs in batches of `batch_sizes`."""
    with warnings.catch_warnings():  # both paths run without TTA on purpose
        warnings.simplefilter("ignore", OperatingPointWarning)
        reference = Predictor(model, runtime="torch", tta="none", channels_last=False)
        exported = Predictor(onnx_path, runtime="onnxruntime", tta="none")
    size = int(model.input_size)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for b in batch_sizes:
        inputs = rng.integers(0, 256, (b, size, size), dtype=np.uint8)
        diff = np.abs(reference.probabilities(inputs) - exported.probabilities(inputs))
        worst = max(worst, float(diff.max()))
    return worst


def export_onnx(
    model,
    out: str | Path,
    opset: int = 17,
    check: bool = True,
    tolerance: float = PARITY_TOLERANCE,
) -> dict[str, Any]:
    """Export a SegmentationModel to ONNX atomically; returns metadata plus the parity result.

    With `check`, the file is compared with PyTorch on random batches of 1 and 2 images before it
    is moved into place; a difference in probability above `tolerance` raises ParityError and
    leaves nothing at `out`.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp.onnx", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        result = write_onnx(model, tmp, opset)
        if check:
            diff = parity(model, tmp)
            result["max_probability_difference"] = diff
            if not diff < tolerance:
                raise ParityError(
                    f"ONNX export of {result['encoder']} differs from PyTorch: max probability "
                    f"difference {diff:.2e} >= {tolerance:.0e}; the file was not written. Try "
                    "another --opset, or report the encoder as not exportable"
                )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    result["path"] = str(out)
    return result
