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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


# ---------------------------------------------------------------- `ptxseg export`


@dataclass(frozen=True)
class ExportRequest:
    """What `ptxseg export` was asked: the `models` (one, an ensemble file or folder, or several
    to average), the `format`, the `out` path (None: beside the model), the ONNX `opset`, and
    `int8` with where its calibration and check images come from (`data`, a work folder; else
    `images`, files or folders) and how many calibrate (`int8_calibration`; 4 times as many
    check)."""

    models: Sequence[Path]
    format: str = "onnx"
    out: Path | None = None
    opset: int = 17
    int8: bool = False
    data: Path | None = None
    images: Sequence[Path] = ()
    int8_calibration: int = 8

    @property
    def source(self) -> Path:
        """The model file named first (an ensemble's file for its folder)."""
        from ptxseg.inference.ensemble import ensemble_file, is_ensemble

        first = Path(self.models[0])
        return ensemble_file(first) if is_ensemble(first) else first


def export_model(request: ExportRequest, report: Callable[[str], None] = print) -> None:
    """Write the export asked for; `report` gets a line for each file written.

    Raises ValueError (ParityError, an EnsembleError...), FileNotFoundError or FileExistsError
    in one line; an int8 copy that does not keep fp32's masks is refused with the numbers."""
    if request.format not in FORMATS:
        raise ValueError(f"--format {request.format!r}: expected one of {', '.join(FORMATS)}")
    if request.format == "safetensors":
        report(_export_folder(request))
        return
    from ptxseg.inference.ensemble import is_ensemble, load_ensemble
    from ptxseg.model.checkpoint import load_model

    source, several = request.source, len(request.models) > 1
    target = request.out or source.with_suffix(".onnx")
    if several or is_ensemble(source):
        model = load_ensemble(list(request.models) if several else source)
    else:
        model = load_model(source)
    info = export_onnx(model, target, opset=request.opset)
    report(
        f"wrote {target} ({info['encoder']} at {info['input_size']}, opset {request.opset}); "
        f"parity vs PyTorch: max probability difference {info['max_probability_difference']:.2e}"
    )
    if request.int8:
        report(export_int8(target, request))


def _export_folder(request: ExportRequest) -> str:
    """An inference-model folder in safetensors (an ensemble: a folder of member folders)."""
    from ptxseg.inference.ensemble import export_ensemble_folder, is_ensemble
    from ptxseg.model.checkpoint import export_inference_model

    source = request.source
    target = request.out or source.with_name(source.stem + "-model")
    if len(request.models) > 1:
        raise ValueError(
            "--format safetensors of several models: write an ensemble file first "
            "(`ptxseg ensemble MODEL... --out ensemble.json`) and export that"
        )
    if is_ensemble(source):
        export_ensemble_folder(source, target)
    else:
        export_inference_model(source, target)
    return f"wrote {target}/ (model.safetensors, config.json, ptxseg.json)"


def export_int8(target: Path, request: ExportRequest) -> str:
    """`target`.int8.onnx, made and checked by the Predictor's int8 path (atomically)."""
    from ptxseg.inference import choice
    from ptxseg.inference.inputs import collect_inputs
    from ptxseg.inference.int8 import ladder
    from ptxseg.inference.runtimes import cpu_precision_plan
    from ptxseg.inference.spec import PredictorSpec
    from ptxseg.util import atomic

    out, n = target.with_suffix(".int8.onnx"), request.int8_calibration
    files = collect_inputs(request.images) if request.images else []

    def real_images(size: int, config: dict) -> choice.CheckImages:
        found = choice.default_check_images(config, size, files, 4 * n, request.data)
        if not found.real:
            raise ValueError(
                "--int8 checks int8 masks against fp32 on real images: give --data WORK (its "
                "validation split) or --images FILES; the model's own work folder was not found"
            )
        return found

    spec = PredictorSpec(target, runtime="onnxruntime", precision="int8")
    hooks = choice.ChoiceHooks(images=real_images, int8_recipes=ladder(n))
    predictor = choice.build_predictor(spec, hooks)
    check = predictor.int8_check
    atomic.write_bytes(out, Path(predictor.onnx_path).read_bytes())
    kept = check.kept
    note = cpu_precision_plan("int8")["note"] or "full 8 bits for CPUs with VNNI, as this one"
    return (
        f"wrote {out} (int8: masks at Dice {kept.agreement.dice:.3f} vs fp32 on "
        f"{kept.agreement.images} images of {check.source}; {kept.recipe.name}: "
        f"{kept.recipe.describe()}; {note})"
    )
