"""The one place that reads and writes models: training checkpoints and inference-model folders.

- A **training checkpoint** (`.ckpt`, Lightning's) holds the weights, the optimizer state and
  progress, and `ckpt["ptxseg"] = {"config", "operating_point", "validation"}`.
- An **inference model** is a folder in segmentation-models-pytorch's `save_pretrained` layout
  (`config.json`, `model.safetensors`, `README.md`; `smp.from_pretrained(folder)` loads the bare
  U-Net) plus `ptxseg.json` with the training config, the operating point and its validation
  metrics. No optimizer state (a ResNet50 folder is ~130 MB against ~390 MB), no pickle.

Both load everywhere (`load_model`, `Predictor`, `predict`, `serve`, `evaluate`, `export`).
Checkpoints are read with `torch.load(weights_only=True)` only: a model file never runs code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ptxseg import __version__
from ptxseg.config import TrainConfig
from ptxseg.model.operating_point import OperatingPoint
from ptxseg.model.unet import SegmentationModel, build_model, load_error
from ptxseg.util import atomic
from ptxseg.util.jsonio import jsonable, write_json

MODEL_INFO = "ptxseg.json"
WEIGHTS = "model.safetensors"
FORMAT = "ptxseg-inference-model"


class CheckpointError(ValueError):
    """A file that is not a readable ptxseg model; the message names it and says what to do."""


def is_model_folder(path: str | os.PathLike) -> bool:
    """True for a folder written by `save_inference_model` (it holds `ptxseg.json`)."""
    return (Path(path) / MODEL_INFO).is_file()


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A training checkpoint dict with its `ptxseg` entry (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found: expected a .ckpt from `ptxseg train`, an "
            "inference-model folder (RUN/model) or an .onnx file from `ptxseg export`"
        )
    try:
        # Memory-mapped: only the tensors that are used are read (not the optimizer state).
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - every unreadable file gets the same clear error
        raise CheckpointError(
            f"cannot read checkpoint {path} ({load_error(error)}): "
            "expected a complete .ckpt written by `ptxseg train`; a truncated copy or a file "
            "from another program cannot be loaded"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("ptxseg"), dict):
        raise CheckpointError(
            f"checkpoint {path} has no 'ptxseg' entry: it was not written by `ptxseg train`"
        )
    if not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path} holds no state_dict: it cannot be loaded")
    return ckpt


def check_resumable(path: str | os.PathLike) -> None:
    """CheckpointError unless `path` is a complete training checkpoint that `train --resume` can
    continue from (weights, optimizer state and progress); the message names the file."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - a damaged file, whatever the parser raised
        raise CheckpointError(
            f"cannot resume from {path} ({load_error(error)}; a copy cut short by a full disk or "
            "a crash): restore the file, or train again into a new --out"
        ) from None
    missing = [k for k in ("state_dict", "optimizer_states", "epoch") if k not in ckpt]
    if not isinstance(ckpt, dict) or missing:
        raise CheckpointError(
            f"cannot resume from {path}: it holds no {', '.join(missing) or 'training state'} "
            "(not a checkpoint that `ptxseg train` writes for --resume); train into a new --out"
        )


def write_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> Path:
    """Save a checkpoint dict atomically (temporary name, then rename)."""
    return atomic.write_through(path, lambda f: torch.save(ckpt, f), binary=True)


def read_description(
    file: Path, fmt: str, what: str, error: type[ValueError] = CheckpointError
) -> dict[str, Any]:
    """A JSON file that describes models (`ptxseg.json`, `ensemble.json`) with its "format" tag;
    `error` (naming the file) when it cannot be read or is something else."""
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as problem:
        raise error(f"cannot read {file}: {problem}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise error(f'{file} is not a {what} (no "format": "{fmt}")')
    return data


def read_info(path: str | os.PathLike) -> dict[str, Any]:
    """What a model is, without its weights: config, operating point, validation metrics.

    For a `.ckpt` this is its `ptxseg` entry (plus epoch and step); for a folder its `ptxseg.json`.
    """
    path = Path(path)
    if path.is_dir():
        info_path = path / MODEL_INFO
        if not info_path.is_file():
            raise CheckpointError(
                f"{path} is a folder without {MODEL_INFO}: expected an inference-model folder "
                "written by `ptxseg train` (RUN/model) or `ptxseg export --format safetensors`"
            )
        info = read_description(info_path, FORMAT, "ptxseg model description", CheckpointError)
        if "config" not in info:
            raise CheckpointError(f"{info_path} is a ptxseg model description without a config")
        return info
    return info_from_checkpoint(read_checkpoint(path))


def info_from_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The `ptxseg` entry of a loaded checkpoint with its progress: epoch, step, best score."""
    entry = dict(ckpt.get("ptxseg") or {})
    entry.setdefault("epoch", ckpt.get("epoch"))
    entry.setdefault("global_step", ckpt.get("global_step"))
    entry.setdefault("best_score", _best_score(ckpt))
    return entry


def _best_score(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The monitored validation score of Lightning's ModelCheckpoint callback, if stored."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if "ModelCheckpoint" in str(key) and isinstance(state, dict):
            score = state.get("best_model_score")
            if score is not None:
                return {"monitor": state.get("monitor"), "value": round(float(score), 6)}
    return None


def _config(info: dict[str, Any], path: Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(info["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"the config stored in {path} is not valid: {error}") from None


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> SegmentationModel:
    """Rebuild a trained model from a `.ckpt` or an inference-model folder, in eval mode."""
    path = Path(path)
    if path.is_dir():
        info = read_info(path)
        ckpt = None
    else:
        ckpt = read_checkpoint(path)
        info = info_from_checkpoint(ckpt)
    # Built without initialising the weights: the file replaces every one of them.
    model = build_model(_config(info, path), load_weights=False, empty=True)
    if path.is_dir():
        from safetensors.torch import load_file

        weights = path / WEIGHTS
        if not weights.is_file():
            raise CheckpointError(f"{path} has no {WEIGHTS}: the model folder is incomplete")
        try:
            state = load_file(str(weights), device="cpu")
        except Exception as error:  # noqa: BLE001
            raise CheckpointError(f"cannot read {weights}: {load_error(error)}") from None
        target, what = model.net, "its own ptxseg.json"
    else:
        prefix = "model."
        state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        target, what = model, "its own config"
    try:
        target.load_state_dict(state, assign=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not match {what}: {load_error(error)}") from None
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        # An encoder with tensors outside its state dict: build it the ordinary way.
        model = build_model(_config(info, path), load_weights=False)
        (model.net if path.is_dir() else model).load_state_dict(state)
    model.operating_point = OperatingPoint.coerce(info.get("operating_point"))
    model.validation = info.get("validation")
    for key in STORED_ENTRIES:  # None for a model stored before they existed
        setattr(model, key, info.get(key))
    return model.to(device).eval()


def read_operating_point(path: str | os.PathLike) -> OperatingPoint | None:
    """The operating point stored with a model, or None when it has none yet."""
    return OperatingPoint.coerce(read_info(path).get("operating_point"))


STORED_ENTRIES = ("operating_points", "calibrator", "evaluation")
"""What a model carries besides its operating point: the named points and the calibrator (both
stored by the search), and the test evaluation of its model card (`evaluate --model-card`)."""


def store_operating_point(
    path: str | os.PathLike,
    op: OperatingPoint,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write `op` (and the validation metrics it was chosen on, and `extra` entries such as the
    named points and the calibrator) into the model, atomically."""
    entries: dict[str, Any] = {"operating_point": op.to_dict()}
    if metrics is not None:
        entries["validation"] = metrics
    entries.update(extra or {})
    update_info(path, entries)


def update_info(path: str | os.PathLike, entries: dict[str, Any]) -> None:
    """Replace top-level entries of a model's description (`ptxseg.json` of a folder, the
    `ptxseg` entry of a `.ckpt`), atomically."""
    path = Path(path)
    if path.is_dir():
        info = read_info(path)
        info.update(jsonable(entries))
        write_json(path / MODEL_INFO, info)
        return
    ckpt = read_checkpoint(path)
    ckpt["ptxseg"].update(jsonable(entries))
    write_checkpoint(path, ckpt)


def save_inference_model(
    model: SegmentationModel, folder: str | os.PathLike, source: dict[str, Any] | None = None
) -> Path:
    """Write `model` as an inference-model folder (replacing one that is there), atomically."""
    net = model.net
    op = OperatingPoint.coerce(getattr(model, "operating_point", None))
    info = {
        "format": FORMAT,
        "ptxseg_version": __version__,
        "encoder": model.encoder,
        "input_size": int(model.input_size),
        "config": model.config,
        "operating_point": None if op is None else op.to_dict(),
        "validation": jsonable(getattr(model, "validation", None)),
        **{key: jsonable(getattr(model, key, None)) for key in STORED_ENTRIES},
        "source": source or {},
    }

    def fill(tmp: Path) -> None:
        hub_config = getattr(net, "_hub_mixin_config", None)
        saved = dict(hub_config) if isinstance(hub_config, dict) else None
        if saved is not None:  # the weights are in the file: nothing to download on loading
            hub_config["encoder_weights"] = None
        try:
            net.save_pretrained(tmp)
        finally:
            if saved is not None:
                hub_config.clear()
                hub_config.update(saved)
        (tmp / MODEL_INFO).write_text(json.dumps(info, indent=2) + "\n")

    return atomic.write_folder(folder, fill)


def export_inference_model(checkpoint: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """The inference-model folder of a training checkpoint (weights, config, operating point)."""
    checkpoint = Path(checkpoint)
    model = load_model(checkpoint)
    info = read_info(checkpoint)
    source = {"checkpoint": checkpoint.name}
    source.update({k: info.get(k) for k in ("epoch", "global_step", "best_score")})
    return save_inference_model(model, folder, source)
