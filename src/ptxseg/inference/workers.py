"""The per-file work of a prediction run beside the model: reading inputs and writing results.

Both run in worker processes (`ptxseg.inference.pipeline`), because most of it holds Python's
global lock (DICOM header parsing, findings, JSON) and a GPU needs a thousand images a second.
Nothing here imports torch, so the workers start in a fraction of a second.

- `read_input`: one file -> its metadata and either the uint8 model input (decoded and resized
  on the CPU, exactly as `Predictor.model_input`) or, for JPEG Baseline DICOMs at least as large
  as the model input when the device decodes, the compressed frame.
- `write_outputs`: one model result -> the full-size mask (from the probability with
  OpenCV, exactly as `Predictor.postprocess`, or from the device's packed mask), the findings and
  the files that were asked for; the findings JSON last, as the mark that the image is done. The
  findings record the input's size, mtime and SHA-256 (`input_record`, taken when it was read),
  so a rerun can tell a replaced file from the one that was predicted.
- `read_inputs` and `write_many` do several files per task: fewer messages between processes.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

OUTPUTS = ("mask", "findings", "overlay", "seg", "sr", "explain")
PRELOAD = (
    "ptxseg.inference.workers",
    "ptxseg.data.dicom",
    "ptxseg.data.preprocess",
    "ptxseg.data.rle",
    "ptxseg.inference.outputs",
    "ptxseg.inference.predictor",
)
"""What the fork server imports once, so that every worker forked from it starts ready."""
ALWAYS = ("mask", "findings")  # they record that an image is done, and feed submission.csv


@dataclass
class ReadResult:
    """One file read for the model (pickles between processes)."""

    path: str
    meta: dict[str, Any] = field(default_factory=dict)
    shape: tuple[int, int] = (0, 0)
    model_input: np.ndarray | None = None  # uint8 (S, S), when the CPU decoded the file
    frame: bytes | None = None  # a JPEG Baseline frame for the device's decoder
    invert: bool = False  # the decoded frame must be turned over (MONOCHROME1)
    error: str | None = None
    source: dict[str, Any] | None = None  # input_record(path): what was read


def input_record(path: str) -> dict[str, Any]:
    """Size, mtime (ns) and SHA-256 of an input file, from one open file."""
    with open(path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}


def read_input(path: str, size: int, keep_frame: bool, max_pixels: int | None = None) -> ReadResult:
    """Read `path` for a model of input `size`; errors come back in `error`, never raised.

    A header that claims more than `max_pixels` (default: the readers' limit) is refused before
    anything is decoded."""
    from ptxseg.data.dicom import (
        DEFAULT_MAX_PIXELS,
        DicomHeaderWarning,
        read_dicom_frame,
        read_image,
    )
    from ptxseg.data.preprocess import to_model_input

    limit = max_pixels or DEFAULT_MAX_PIXELS
    try:
        source = input_record(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DicomHeaderWarning)  # listed in the findings
            if keep_frame and Path(path).suffix.lower() in (".dcm", ".dicom"):
                image, frame, meta = read_dicom_frame(path, max_pixels=limit)
                shape = (int(meta["Rows"]), int(meta["Columns"]))
                if frame is not None and min(shape) >= size:
                    return ReadResult(
                        path, meta, shape, frame=frame, invert=meta["Invert"], source=source
                    )
                if image is None:  # a frame that must be enlarged: OpenCV does it exactly
                    image, meta = read_image(path, max_pixels=limit)
            else:
                image, meta = read_image(path, max_pixels=limit)
        model_input = to_model_input(image, size)
        return ReadResult(path, meta, image.shape[:2], model_input=model_input, source=source)
    except Exception as err:  # noqa: BLE001 - a file that cannot be read is a row, not a crash
        return ReadResult(path, error=f"{type(err).__name__}: {err}")


def read_inputs(
    paths: list[str], size: int, keep_frame: bool, max_pixels: int | None = None
) -> list[ReadResult]:
    """`read_input` of several files in one task: fewer, larger messages between processes,
    which is most of what the main process spends per image at a thousand images a second."""
    return [read_input(path, size, keep_frame, max_pixels) for path in paths]


@dataclass
class WriteTask:
    """One model result to write (pickles between processes)."""

    path: str
    image_id: str
    out_dir: str
    outputs: tuple[str, ...]
    meta: dict[str, Any]
    shape: tuple[int, int]
    describer: dict[str, Any]  # Predictor.describer(): operating point, encoder, runtime...
    prob_small: np.ndarray | None = None  # float32 (S, S): the mask is made here, exactly
    mask_bits: np.ndarray | None = None  # np.packbits of the device's bool (H, W) mask
    empty: bool = False  # the device's mask is empty (no bits sent)
    peak: float | None = None  # maximum model-size probability (with mask_bits)
    cam_small: np.ndarray | None = None  # Grad-CAM at the model's size (explain)
    source: dict[str, Any] | None = None  # input_record of the file read


@dataclass
class WriteResult:
    path: str
    image_id: str
    findings: dict[str, Any] | None = None
    rle: str | None = None
    error: str | None = None
    done_at: float | None = None  # time.monotonic() when the findings JSON was written
    os_error: tuple[int, str, str] | None = None  # (errno, strerror, file) writing the output


def full_mask(task: WriteTask) -> tuple[np.ndarray, float]:
    """(bool full-size mask, peak probability) of a task, from whichever form it carries."""
    if task.empty:
        return np.zeros(task.shape, bool), float(task.peak)
    if task.mask_bits is not None:
        height, width = task.shape
        bits = np.unpackbits(task.mask_bits, count=height * width)
        return bits.reshape(height, width).astype(bool), float(task.peak)
    from ptxseg.inference.predictor import full_size_mask
    from ptxseg.model.operating_point import OperatingPoint

    op_values = dict(task.describer["operating_point"])
    op_values.pop("applied_tta", None)
    _, mask = full_size_mask(task.prob_small, task.shape, OperatingPoint.from_dict(op_values))
    return mask, float(task.prob_small.max())


def write_outputs(task: WriteTask) -> WriteResult:
    """Make the mask and findings of `task` and write its files; errors come back, not raised."""
    from ptxseg.data.rle import rle_encode
    from ptxseg.inference.outputs import encode_png, write_mask, write_overlay
    from ptxseg.inference.predictor import describe_mask
    from ptxseg.util.jsonio import write_json

    out = Path(task.out_dir)
    try:
        mask, peak = full_mask(task)
        findings = describe_mask(mask, peak, task.meta, task.describer)
        write_mask(out / "masks" / f"{task.image_id}.png", mask)
        findings.update(image_id=task.image_id, input_file=task.path)
        if task.source is not None:
            findings["input"] = task.source
        if task.meta.get("HeaderWarnings"):
            findings["header_warnings"] = task.meta["HeaderWarnings"]
        image = None
        if "overlay" in task.outputs or "explain" in task.outputs:
            image = _original(task.path)
        if "overlay" in task.outputs:
            write_overlay(out / "overlays" / f"{task.image_id}.png", image, mask, findings)
        segmentation = None
        if "seg" in task.outputs and mask.any() and task.meta.get("source") == "dicom":
            from ptxseg.inference.seg import build_segmentation, save_segmentation

            segmentation, notes = build_segmentation(task.path, mask)
            seg_path = out / "seg" / f"{task.image_id}.dcm"
            findings["seg_file"] = str(save_segmentation(segmentation, notes, seg_path, findings))
        if "sr" in task.outputs and task.meta.get("source") == "dicom":
            from ptxseg.inference.sr import write_report

            sr_path = out / "sr" / f"{task.image_id}.dcm"
            findings["sr_file"] = str(
                write_report(task.path, findings, sr_path, segmentation, mask=mask)
            )
        if "explain" in task.outputs and task.cam_small is not None:
            from ptxseg.inference.explain import heatmap_overlay
            from ptxseg.inference.predictor import full_size_cam
            from ptxseg.util import atomic

            cam = full_size_cam(task.cam_small, task.shape)
            png = encode_png(heatmap_overlay(image, cam))
            atomic.write_bytes(out / "explain" / f"{task.image_id}.png", png)
        write_json(out / "findings" / f"{task.image_id}.json", findings)  # last: marks it done
        done_at = time.monotonic()
        return WriteResult(task.path, task.image_id, findings, rle_encode(mask), done_at=done_at)
    except OSError as err:
        if err.filename and _inside(str(err.filename), task.out_dir):
            where = (err.errno or 0, err.strerror or str(err), str(err.filename))
            return WriteResult(task.path, task.image_id, error=str(err), os_error=where)
        return WriteResult(task.path, task.image_id, error=f"{type(err).__name__}: {err}")
    except Exception as err:  # noqa: BLE001 - reported in summary.csv
        return WriteResult(task.path, task.image_id, error=f"{type(err).__name__}: {err}")


def _inside(path: str, folder: str) -> bool:
    """Whether `path` lies in `folder` (an error writing there is the output's, not the input's)."""
    return os.path.abspath(path).startswith(os.path.abspath(folder) + os.sep)


def write_many(tasks: list[WriteTask]) -> list[WriteResult]:
    """`write_outputs` of several images in one task (see `read_inputs`)."""
    return [write_outputs(task) for task in tasks]


def _original(path: str) -> np.ndarray:
    """The full-size float image again, for pictures (cheaper than sending it between processes)."""
    from ptxseg.data.dicom import DicomHeaderWarning, read_image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DicomHeaderWarning)
        return read_image(path)[0]


def warm_up() -> int:
    """The imports a task needs (a no-op where the fork server preloaded them): run once per
    worker at the start, so the first file is not slow."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    return 0
