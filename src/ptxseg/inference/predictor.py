"""The Predictor: an image or DICOM at any size -> probability, mask and findings at that size.

The image is resized to the model's input size, run through the chosen runtime, and the
probability is resized back to the original resolution. The stored operating point decides at the
model's size (at least `min_area` pixels above `top`, as in evaluation), and the mask is then
binarised at `bottom` on the full-size probability, so outlines follow the original pixels.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ptxseg.inference.export import operating_point_dict, read_metadata
from ptxseg.inference.findings import compute_findings
from ptxseg.inference.runtimes import (
    check_runtime,
    onnxruntime_runner,
    openvino_runner,
    torch_runner,
)

DEFAULT_OPERATING_POINT = {"top": 0.5, "bottom": 0.5, "min_area": 0}


@dataclass
class Prediction:
    """One image's result: float32 probability and bool mask at the original size, findings."""

    image_id: str | None
    probability: np.ndarray
    mask: np.ndarray
    findings: dict[str, Any] = field(default_factory=dict)


def resize_to_model(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W) float32 in [0, 1] -> (size, size); area averaging when shrinking."""
    if image.ndim != 2:
        raise ValueError(f"expected a grayscale (H, W) image, got shape {image.shape}")
    if image.shape == (size, size):
        return image.astype(np.float32, copy=False)
    shrink = image.shape[0] >= size and image.shape[1] >= size
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(
        image.astype(np.float32, copy=False), (size, size), interpolation=interpolation
    )


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float32)))).astype(np.float32)


def keep_mask(prob_model_size: np.ndarray, op: dict[str, Any]) -> bool:
    """The gate of `metrics.OperatingPoint.apply`: at least `min_area` pixels above `top`."""
    return int((prob_model_size > op["top"]).sum()) >= int(op["min_area"])


class Predictor:
    """Segment pneumothorax with a checkpoint (.ckpt), an exported .onnx file or a loaded model.

    `runtime` is torch, onnxruntime or openvino; `precision` fp32, bf16 or int8 (see
    `ptxseg.inference.runtimes.SUPPORTED`). `operating_point` (OperatingPoint or dict) overrides
    the one stored with the model. int8 is calibrated on `calibration` images (synthetic when None).
    """

    def __init__(
        self,
        checkpoint,
        runtime: str = "torch",
        device: str = "cpu",
        precision: str = "fp32",
        operating_point=None,
        batch_size: int = 4,
        calibration: Sequence[np.ndarray] | None = None,
        int8_mode: str = "static",
        threads: int | None = None,
        channels_last: bool = True,
    ):
        check_runtime(runtime, precision)
        self.runtime, self.device, self.precision = runtime, device, precision
        self.batch_size = max(1, int(batch_size))
        self.model = None
        self._tmp = None
        onnx_path = None
        if isinstance(checkpoint, str | Path) and Path(checkpoint).suffix.lower() == ".onnx":
            if runtime == "torch":
                raise ValueError(
                    f"{checkpoint} is an ONNX file: use --runtime onnxruntime or openvino, "
                    "or pass the .ckpt checkpoint for the torch runtime"
                )
            onnx_path = Path(checkpoint)
            meta = read_metadata(onnx_path)
        else:
            self.model = _load(checkpoint, device)
            from ptxseg.inference.export import model_metadata

            meta = model_metadata(self.model)
        self.input_size = int(meta["input_size"])
        self.encoder = meta.get("encoder")
        self.config = meta.get("config") or {}
        op = operating_point_dict(operating_point) or meta.get("operating_point")
        self.operating_point = dict(op or DEFAULT_OPERATING_POINT)
        if runtime == "torch":
            self._run = torch_runner(self.model, device, precision, channels_last)
            return
        if onnx_path is None:
            onnx_path = self._export_tmp()
        if precision == "int8" and meta.get("precision") != "int8":
            onnx_path = self._quantize_tmp(onnx_path, calibration, int8_mode)
        if runtime == "onnxruntime":
            self._run = onnxruntime_runner(onnx_path, threads)
        else:
            self._run = openvino_runner(onnx_path, precision, threads)

    def _tmpdir(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ptxseg-")
        return Path(self._tmp.name)

    def _export_tmp(self) -> Path:
        from ptxseg.inference.export import export_onnx

        path = self._tmpdir() / "model.onnx"
        export_onnx(self.model, path)
        return path

    def _quantize_tmp(self, fp32_path: Path, calibration, mode: str) -> Path:
        from ptxseg.inference.export import quantize_onnx

        return quantize_onnx(fp32_path, self._tmpdir() / "model-int8.onnx", calibration, mode)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw logits for a (B, 1, S, S) float32 batch in [0, 1], run in chunks of batch_size."""
        parts = [
            self._run(batch[i : i + self.batch_size]) for i in range(0, len(batch), self.batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, 1) + batch.shape[2:], np.float32)

    def predict(self, image: np.ndarray, metadata: dict[str, Any] | None = None) -> Prediction:
        """Predict one float32 (H, W) image in [0, 1]; metadata from `dicom.read_image`."""
        return self.predict_batch([image], [metadata or {}])[0]

    def predict_batch(
        self, images: Sequence[np.ndarray], metadatas: Sequence[dict[str, Any] | None]
    ) -> list[Prediction]:
        """Predict several images of any sizes in batches of `batch_size`."""
        if len(images) != len(metadatas):
            raise ValueError(f"got {len(images)} images but {len(metadatas)} metadata dicts")
        if not images:
            return []
        batch = np.stack([resize_to_model(im, self.input_size) for im in images])[:, None]
        probs = sigmoid(self.logits(batch))[:, 0]
        return [
            self.postprocess(prob, image.shape, meta or {})
            for prob, image, meta in zip(probs, images, metadatas, strict=True)
        ]

    def postprocess(
        self, prob_small: np.ndarray, shape: tuple[int, int], metadata: dict[str, Any]
    ) -> Prediction:
        """Model-size probability -> full-size probability, mask and findings."""
        height, width = shape
        op = self.operating_point
        prob = cv2.resize(prob_small, (width, height), interpolation=cv2.INTER_LINEAR)
        keep = keep_mask(prob_small, op)
        mask = prob > op["bottom"] if keep else np.zeros((height, width), bool)
        findings = compute_findings(mask, float(prob_small.max()), metadata, op, self.encoder)
        findings["runtime"], findings["precision"] = self.runtime, self.precision
        return Prediction(metadata.get("ImageId"), prob, mask, findings)

    def explain(self, image: np.ndarray) -> np.ndarray:
        """Grad-CAM heatmap (H, W) in [0, 1] of what drives the pneumothorax score."""
        if self.model is None:
            raise ValueError(
                "explanations need the PyTorch model: build the Predictor from the .ckpt "
                "checkpoint, not from an .onnx file"
            )
        from ptxseg.inference.explain import grad_cam

        small = resize_to_model(image, self.input_size)
        cam = grad_cam(self.model, small, device=self.device)
        cam = cv2.resize(cam, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
        peak = float(cam.max())
        return cam / peak if peak > 0 else cam


def _load(checkpoint, device: str):
    import torch

    if isinstance(checkpoint, torch.nn.Module):
        return checkpoint.to(device).eval()
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: expected a .ckpt or .onnx file")
    from ptxseg.model.unet import load_model

    return load_model(path, device=device)
