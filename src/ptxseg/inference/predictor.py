"""The Predictor: the one path from an image to a probability map and a mask.

`predict`, `serve`, `evaluate`, `export`'s parity check, the benchmarks and Grad-CAM all run it:

1. `data.preprocess.to_model_input`: resize to the model's square input and quantise to 8 bits,
   exactly as `prepare` caches training images;
2. the runtime (PyTorch, ONNX Runtime or OpenVINO) gives logits; with `tta="hflip"` the flipped
   image is run too and the two probabilities are averaged (flipped back);
3. the operating point decides at the model's size (at least `min_area` pixels above `top`), and
   a kept mask is the full-size probability (bilinear) above `bottom`, so outlines follow the
   original pixels.

A number that `evaluate` reports therefore describes the masks that `predict` writes.

With the torch runtime the model inputs travel to the device as bytes and steps 2-3 can stay on
it (`probabilities_on_device`, `full_size_masks_on_device`): what `predict` uses on a GPU. The
device's bilinear resize and threshold give the CPU's masks except for pixels whose probability
lies within float rounding of `bottom` (`tests/inference/test_predictor.py` checks Dice > 0.9999).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ptxseg.data.preprocess import to_float, to_model_input
from ptxseg.inference.findings import compute_findings
from ptxseg.inference.int8 import Int8Check, Recipe, checked_quantize, warn_if_unchecked
from ptxseg.inference.loaded import LoadedModel, is_onnx_file
from ptxseg.inference.onnx import write_onnx
from ptxseg.inference.runtimes import (
    Runner,
    check_int8_file,
    check_runtime,
    cpu_precision_plan,
    onnxruntime_runner,
    openvino_runner,
    torch_runner,
)
from ptxseg.inference.spec import PredictorSpec
from ptxseg.model.operating_point import (
    DEFAULT,
    DEFAULT_NAME,
    OperatingPoint,
    check_tta,
)
from ptxseg.stats.calibration import Calibrator

NO_CALIBRATOR = (
    "none: this model stores no calibrator (its operating point was searched before "
    "calibration existed); `probability` is the raw score. Search again to add one: "
    "ptxseg evaluate --search"
)


@dataclass
class Prediction:
    """One image's result: float32 probability and bool mask at the original size, findings."""

    image_id: str | None
    probability: np.ndarray
    mask: np.ndarray
    findings: dict[str, Any] = field(default_factory=dict)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float32)))).astype(np.float32)


def full_size_probability(prob_small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A model-size probability map resized (bilinear) to the original (height, width)."""
    height, width = shape
    if prob_small.shape == (height, width):
        return prob_small
    return cv2.resize(prob_small, (width, height), interpolation=cv2.INTER_LINEAR)


def full_size_mask(
    prob_small: np.ndarray, shape: tuple[int, int], op: OperatingPoint
) -> tuple[np.ndarray, np.ndarray]:
    """(full-size probability, full-size bool mask) of one model-size probability map."""
    prob = full_size_probability(prob_small, shape)
    if not bool(op.keep(prob_small[None])[0]):
        return prob, np.zeros(shape, bool)
    return prob, prob > op.bottom


def full_size_masks_on_device(prob_small, shapes: Sequence[tuple[int, int]], op: OperatingPoint):
    """`full_size_mask` for a batch of torch probabilities on their device: bool (H, W) masks.

    The gate decides at the model size; a kept mask is the bilinear full-size probability above
    `bottom` (torch's half-pixel bilinear, as OpenCV's INTER_LINEAR). Returns the masks and the
    per-image maximum probability (for the findings), both on the device.
    """
    import torch

    keep = op.keep(prob_small)
    peaks = prob_small.flatten(1).amax(1)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault((int(shape[0]), int(shape[1])), []).append(i)
    masks: list = [None] * len(shapes)
    # one resize per size of image in the batch (usually one): a few kernels, not a few per image
    for (height, width), indices in groups.items():
        whole = len(indices) == len(shapes)
        small = prob_small if whole else prob_small[indices]
        kept = keep if whole else keep[indices]
        if tuple(small.shape[-2:]) != (height, width):
            small = torch.nn.functional.interpolate(
                small[:, None], size=(height, width), mode="bilinear", align_corners=False
            )[:, 0]
        group = (small > op.bottom) & kept[:, None, None]
        for k, i in enumerate(indices):
            masks[i] = group[k]
    return masks, peaks


def describe_mask(
    mask: np.ndarray, peak: float, metadata: dict[str, Any], describer: dict[str, Any]
) -> dict[str, Any]:
    """Findings of a full-size mask with the predictor's `describer()` (also in other processes)."""
    findings = compute_findings(
        mask, peak, metadata, describer["operating_point"], describer["encoder"]
    )
    findings["runtime"], findings["precision"] = describer["runtime"], describer["precision"]
    if describer.get("path_choice"):
        findings["path_choice"] = describer["path_choice"]
    findings.update(calibrated(peak, describer))
    return findings


def calibrated(peak: float, describer: dict[str, Any]) -> dict[str, Any]:
    """The findings' calibrated probability of the raw score `peak`, the calibrator that gave
    it (or why there is none) and the name of the operating point applied."""
    stored = describer.get("calibrator")
    calibrator = Calibrator.coerce(stored) if stored else None
    return {
        "calibrated_probability": None
        if calibrator is None
        else round(float(calibrator.apply(peak)), 6),
        "calibration": NO_CALIBRATOR if calibrator is None else calibrator.describe(),
        "operating_point_name": describer.get("operating_point_name", DEFAULT_NAME),
    }


@dataclass(frozen=True)
class BuildInputs:
    """What building some paths needs beyond the spec: real `calibration` images (and where
    they come from, `calibration_source`) that calibrate and check int8 from an fp32 model,
    `int8_recipes` that limit int8's remedy ladder (default: all of
    `ptxseg.inference.int8.ladder`), and `onnx_export`, an fp32 ONNX export of the model already
    made (saves exporting it again)."""

    calibration: Sequence[np.ndarray] | None = None
    calibration_source: str = ""
    int8_recipes: Sequence[Recipe] | None = None
    onnx_export: str | Path | None = None


SPEC_SETTINGS = tuple(f.name for f in fields(PredictorSpec) if f.name != "model")
BUILD_SETTINGS = tuple(f.name for f in fields(BuildInputs))


class Predictor:
    """Segment pneumothorax with a model: a `.ckpt`, an inference-model folder, an `.onnx` file,
    a loaded `SegmentationModel`, a `LoadedModel`, or an ensemble: an ensemble file (or a folder
    holding `ensemble.json`) or a list of models, whose probabilities are averaged
    (`ptxseg.inference.ensemble`; TTA applies on top).

    `Predictor(model, runtime, device, precision, **settings)`: `settings` are the other fields
    of `ptxseg.inference.spec.PredictorSpec` (operating_point, tta, batch_size,
    operating_point_name, threads, channels_last, compile, compile_mode) and of `BuildInputs`
    (calibration, calibration_source, int8_recipes, onnx_export). `Predictor.from_spec(loaded,
    spec, build)` is the same from a model loaded once and a resolved spec.

    `runtime` is torch, onnxruntime or openvino; `precision` fp32, bf16 or int8 (see
    `ptxseg.inference.runtimes.SUPPORTED`). `operating_point` (OperatingPoint or dict) replaces
    the stored one; `operating_point_name` picks one of the stored named points instead of the
    main one (`--operating-point`). `tta` is none or hflip; None takes the TTA the operating
    point was searched with (none when unknown); another one than that warns. int8 from an fp32
    model is calibrated on real `calibration` images and its masks are checked against fp32 on
    them (`ptxseg.inference.int8`: remedies, or `Int8Refused`); `int8_check` holds the result.
    An int8 .onnx file is taken as it was made (and warns when its check is missing or failed).
    `path_choice` says how the runtime and precision were chosen (`ptxseg.inference.choice`).
    `loaded` is the `LoadedModel` it runs (the model card and the run record read it).
    """

    def __init__(
        self,
        model,
        runtime: str = "torch",
        device: str = "cpu",
        precision: str = "fp32",
        **settings,
    ):
        unknown = sorted(set(settings) - set(SPEC_SETTINGS) - set(BUILD_SETTINGS))
        if unknown:
            raise TypeError(f"Predictor got unexpected settings: {', '.join(unknown)}")
        spec = PredictorSpec(
            runtime=runtime,
            precision=precision,
            device=device,
            **{k: v for k, v in settings.items() if k in SPEC_SETTINGS},
        )
        build = BuildInputs(**{k: v for k, v in settings.items() if k in BUILD_SETTINGS})
        check_runtime(runtime, precision)
        if is_onnx_file(model) and runtime == "torch":
            raise ValueError(
                f"{model} is an ONNX file: use --runtime onnxruntime or openvino, "
                "or pass the .ckpt checkpoint or model folder for the torch runtime"
            )
        self._setup(LoadedModel.load(model, device), spec, build)

    @classmethod
    def from_spec(
        cls, loaded: LoadedModel, spec: PredictorSpec, build: BuildInputs | None = None
    ) -> Predictor:
        """The Predictor of a model loaded once, with the runtime and precision of `spec`
        (resolved: not auto) and its operating point (overrides applied)."""
        predictor = cls.__new__(cls)
        check_runtime(spec.runtime, spec.precision)
        predictor._setup(loaded, spec, build or BuildInputs())
        return predictor

    def _setup(self, loaded: LoadedModel, spec: PredictorSpec, build: BuildInputs) -> None:
        runtime, device, precision = spec.runtime, spec.device, spec.precision
        self.precision_plan = cpu_precision_plan(precision, device)
        self.runtime, self.device, self.precision = runtime, device, precision
        self.batch_size = max(1, int(spec.batch_size))
        self.loaded, self.spec = loaded, spec
        self._tmp = None
        self.threads = spec.threads
        self.int8_check: Int8Check | None = None
        self.path_choice: dict[str, Any] | None = None
        self.onnx_path: Path | None = None
        self._describe(loaded, spec)
        self._torch = None
        if loaded.onnx_path is not None:
            if runtime == "torch":
                raise ValueError(
                    f"{loaded.onnx_path} is an ONNX file: use --runtime onnxruntime or openvino, "
                    "or pass the .ckpt checkpoint or model folder for the torch runtime"
                )
            check_int8_file(loaded.meta)
            warn_if_unchecked(loaded.meta, loaded.onnx_path)
            self.model = None
        else:
            self.model = loaded.network.to(device).eval()
        if runtime == "torch":
            self._torch = torch_runner(
                self.model,
                device,
                precision,
                spec.channels_last,
                spec.compile,
                spec.compile_mode,
                spec.batch_size,
            )
            self._run = self._torch
            return
        if spec.compile:
            raise ValueError(f"compile applies to the torch runtime, not {runtime!r}")
        self._prepare_onnx(loaded, build)

    def _describe(self, loaded: LoadedModel, spec: PredictorSpec) -> None:
        """Input size, encoder, config, operating point, calibrator and TTA of the model."""
        meta = loaded.meta
        self.input_size = loaded.input_size
        self.encoder = loaded.encoder
        self.config = loaded.config
        self.stored_operating_point = loaded.stored_operating_point
        self.named_points = loaded.named_points
        self.operating_point_name = spec.operating_point_name or DEFAULT_NAME
        chosen = loaded.operating_point_named(spec.operating_point_name)
        explicit = spec.resolved_operating_point(chosen)
        self.operating_point = OperatingPoint.coerce(explicit) or chosen or DEFAULT
        self.calibrator = Calibrator.coerce(meta.get("calibrator"))
        tta = spec.tta
        self.tta = check_tta(tta) if tta is not None else (self.operating_point.tta or "none")
        self.operating_point.warn_if_other_path(self.tta, self.input_size)

    def _prepare_onnx(self, loaded: LoadedModel, build: BuildInputs) -> None:
        """The ONNX Runtime or OpenVINO runner: of the file, of an export, or of its int8 copy."""
        onnx_path = loaded.onnx_path
        if onnx_path is None:
            onnx_path = Path(build.onnx_export) if build.onnx_export else self._export_tmp()
        if self.precision == "int8" and loaded.meta.get("precision") != "int8":
            onnx_path = self._quantize_checked(
                onnx_path, build.calibration, build.calibration_source, build.int8_recipes
            )
        self._run = self._runner(onnx_path, self.precision)
        self.onnx_path = onnx_path

    def _runner(self, onnx_path: Path, precision: str) -> Runner:
        if self.runtime == "onnxruntime":
            return onnxruntime_runner(onnx_path, self.threads)
        return openvino_runner(onnx_path, precision, self.threads)

    def _tmpdir(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ptxseg-")
        return Path(self._tmp.name)

    def _export_tmp(self) -> Path:
        path = self._tmpdir() / "model.onnx"
        write_onnx(self.model, path)
        return path

    def _quantize_checked(self, fp32_path: Path, images, source: str = "", recipes=None) -> Path:
        """An int8 copy of `fp32_path` whose masks agree with fp32 on `images` (see
        `ptxseg.inference.int8.checked_quantize`), in this predictor's runtime and TTA."""
        if not images:
            raise ValueError(
                "int8 from an fp32 model needs real images to calibrate with and to check its "
                "masks against fp32 (the inputs, or a work folder's validation images); "
                "`serve`, `listen` and `dicomweb` take int8 only as a file made by "
                "`ptxseg export --int8`"
            )
        inputs = np.stack([self.model_input(_as_float(im)) for im in images])

        def probabilities_of(path: Path) -> np.ndarray:
            precision = "int8" if path != fp32_path else "fp32"
            run = self._runner(path, precision)
            return runner_probabilities(run, inputs, self.tta, self.batch_size)

        self.int8_check = checked_quantize(
            fp32_path,
            self._tmpdir() / "model-int8.onnx",
            list(images),
            probabilities_of,
            self.operating_point,
            reduce_range=self.precision_plan["reduce_range"],
            runtime=self.runtime,
            source=source or "the given images",
            tta=self.tta,
            recipes=recipes,
        )
        return self._tmpdir() / "model-int8.onnx"

    def set_operating_point(self, op: OperatingPoint) -> None:
        """Use `op` from now on (warns when it was searched with another TTA)."""
        op.warn_if_other_path(self.tta, self.input_size)
        self.operating_point = op

    # ---------------------------------------------------------------- the model path

    def model_input(self, image: np.ndarray) -> np.ndarray:
        """One float (H, W) image in [0, 1] -> the uint8 (S, S) input the model sees."""
        return to_model_input(image, self.input_size)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw logits for a (B, 1, S, S) float32 batch in [0, 1], run in chunks of batch_size."""
        return chunked_logits(self._run, batch, self.batch_size)

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """Model-size probabilities (B, S, S) of uint8 model inputs (B, S, S), TTA included."""
        if inputs.ndim != 3 or inputs.shape[1:] != (self.input_size, self.input_size):
            raise ValueError(
                f"model inputs have shape {inputs.shape}: expected (B, {self.input_size}, "
                f"{self.input_size}) from model_input()"
            )
        if self._torch is not None:
            on_device = self._torch.probabilities(self._torch.upload(inputs), self.tta)
            return np.ascontiguousarray(on_device.cpu().numpy(), dtype=np.float32)
        return runner_probabilities(self._run, inputs, self.tta, self.batch_size)

    def probabilities_on_device(self, inputs):
        """float32 (B, S, S) probabilities on the model's device of uint8 inputs (B, S, S) there.

        The torch runtime only; TTA included. For callers that decode and resize on the device.
        """
        if self._torch is None:
            raise ValueError(
                f"device-side probabilities need the torch runtime, not {self.runtime!r}"
            )
        if inputs.ndim != 3 or tuple(inputs.shape[1:]) != (self.input_size, self.input_size):
            raise ValueError(
                f"model inputs have shape {tuple(inputs.shape)}: expected (B, {self.input_size}, "
                f"{self.input_size})"
            )
        return self._torch.probabilities(inputs, self.tta)

    def upload(self, inputs: np.ndarray):
        """uint8 host inputs (B, S, S) on the model's device (pinned, asynchronous on CUDA)."""
        if self._torch is None:
            raise ValueError(f"upload needs the torch runtime, not {self.runtime!r}")
        return self._torch.upload(inputs)

    # ---------------------------------------------------------------- images in, predictions out

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
        probs = self.probabilities(np.stack([self.model_input(im) for im in images]))
        return [
            self.postprocess(prob, image.shape, meta or {})
            for prob, image, meta in zip(probs, images, metadatas, strict=True)
        ]

    def postprocess(
        self, prob_small: np.ndarray, shape: tuple[int, int], metadata: dict[str, Any]
    ) -> Prediction:
        """Model-size probability -> full-size probability, mask and findings."""
        prob, mask = full_size_mask(prob_small, shape, self.operating_point)
        findings = self.findings(mask, float(prob_small.max()), metadata)
        return Prediction(metadata.get("ImageId"), prob, mask, findings)

    def findings(self, mask: np.ndarray, peak: float, metadata: dict[str, Any]) -> dict[str, Any]:
        """The findings of a full-size mask whose model-size probability peaked at `peak`."""
        return describe_mask(mask, peak, metadata, self.describer())

    def describer(self) -> dict[str, Any]:
        """What `describe_mask` needs to know about this predictor (plain values: it pickles)."""
        return {
            "operating_point": dict(self.operating_point.to_dict(), applied_tta=self.tta),
            "encoder": self.encoder,
            "runtime": self.runtime,
            "precision": self.precision,
            "path_choice": (self.path_choice or {}).get("line"),
            "operating_point_name": self.operating_point_name,
            "calibrator": None if self.calibrator is None else self.calibrator.to_dict(),
        }

    def explain(self, image: np.ndarray) -> np.ndarray:
        """Grad-CAM heatmap (H, W) in [0, 1] of what drives the pneumothorax score."""
        self._need_model()
        return full_size_cam(self.explain_input(self.model_input(image)), image.shape[:2])

    def _need_model(self) -> None:
        if self.model is None:
            raise ValueError(
                "explanations need the PyTorch model: build the Predictor from the .ckpt "
                "checkpoint or model folder, not from an .onnx file"
            )

    def explain_input(self, model_input: np.ndarray) -> np.ndarray:
        """Grad-CAM at the model's size of one uint8 model input (S, S)."""
        self._need_model()
        from ptxseg.inference.explain import grad_cam

        members = getattr(self.model, "members", None) or [self.model]  # an ensemble: the mean
        small = to_float(model_input)
        return np.mean([grad_cam(m, small, device=self.device) for m in members], axis=0)


def chunked_logits(run: Runner, batch: np.ndarray, batch_size: int) -> np.ndarray:
    """A runner's logits for a (B, 1, S, S) float32 batch, in chunks of `batch_size`."""
    parts = [run(batch[i : i + batch_size]) for i in range(0, len(batch), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 1) + batch.shape[2:], np.float32)


def runner_probabilities(run: Runner, inputs: np.ndarray, tta: str, batch_size: int) -> np.ndarray:
    """Model-size probabilities (B, S, S) of uint8 inputs through an ONNX runner, TTA included:
    the Predictor's path for ONNX Runtime and OpenVINO (and for int8 attempts being checked)."""
    batch = to_float(inputs)[:, None]
    prob = sigmoid(chunked_logits(run, batch, batch_size))[:, 0]
    if tta == "hflip":
        flipped = np.ascontiguousarray(batch[..., ::-1])
        flipped_prob = sigmoid(chunked_logits(run, flipped, batch_size))[:, 0]
        prob = (prob + flipped_prob[..., ::-1]) / 2
    return np.ascontiguousarray(prob, dtype=np.float32)


def _as_float(image: np.ndarray) -> np.ndarray:
    """uint8 model inputs are accepted where float images in [0, 1] are expected."""
    return image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image


def full_size_cam(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A model-size Grad-CAM resized (bilinear) to (height, width) and scaled to peak at 1."""
    cam = cv2.resize(cam, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    peak = float(cam.max())
    return cam / peak if peak > 0 else cam
