"""The model card that the web service shows at `GET /v1/model`: what the model is and is not for.

Everything comes from the checkpoint itself (its `ptxseg` entry: training config, operating point,
validation metrics; Lightning's epoch and best score), so the card cannot drift from the weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

INTENDED_USE = (
    "Research use only. Not a medical device and not a diagnosis: ptxseg outlines regions that "
    "look like pneumothorax on a chest radiograph so that researchers can study the model. Every "
    "finding must be confirmed by a qualified radiologist reading the original images."
)
LIMITATIONS = [
    "Trained on the SIIM-ACR Pneumothorax Segmentation data (frontal chest radiographs, mostly "
    "PA/AP CR images at 1024x1024); other views, devices, populations or image processing may "
    "perform worse.",
    "Chest drains, skin folds and image borders can be mistaken for a pleural line; small or "
    "apical pneumothoraces can be missed.",
    "The side (right/left) assumes the standard radiographic display of a frontal view.",
    "Areas in cm² need the DICOM PixelSpacing; PNG and JPEG inputs report pixels only.",
]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _best_score(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The monitored validation score of Lightning's ModelCheckpoint callback, if stored."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if "ModelCheckpoint" in str(key) and isinstance(state, dict):
            score = state.get("best_model_score")
            if score is not None:
                return {"monitor": state.get("monitor"), "value": round(float(score), 6)}
    return None


def card_from_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The model-describing part of the card from a loaded checkpoint dict."""
    entry = ckpt.get("ptxseg") or {}
    config = entry.get("config") or {}
    model = config.get("model") or {}
    data = config.get("data") or {}
    size = data.get("size")
    return {
        "architecture": "U-Net"
        + (" + scSE decoder attention" if model.get("decoder_attention") else ""),
        "encoder": model.get("encoder"),
        "encoder_weights": model.get("encoder_weights"),
        "classification_head": bool(model.get("aux_head", False)),
        "input_size": [size, size] if size else None,
        "input": "one grayscale channel scaled to [0, 1], resized to the input size; "
        "normalised with the encoder's own parameters",
        "training": {
            "data": "SIIM-ACR Pneumothorax Segmentation (or data in its format)",
            "work_folder": Path(data["work"]).name if data.get("work") else None,
            "augmentation": data.get("aug"),
            "loss": config.get("loss"),
            "epochs_completed": ckpt.get("epoch"),
            "steps": ckpt.get("global_step"),
        },
        "validation": entry.get("validation"),
        "best_checkpoint_score": _best_score(ckpt),
        "operating_point": entry.get("operating_point"),
    }


def build_model_card(
    checkpoint: str | Path | None = None,
    ckpt: dict[str, Any] | None = None,
    predictor: Any = None,
) -> dict[str, Any]:
    """The full card: model facts from the checkpoint, how it runs here, intended use, limits.

    `ckpt` is the loaded checkpoint dict (read from a `.ckpt` `checkpoint` when not given; an
    exported `.onnx` has no such dict). `predictor` (a `Predictor`) adds the
    runtime and the operating point actually in use, which may override the stored one.
    """
    card: dict[str, Any] = {"name": "ptxseg pneumothorax segmentation"}
    if checkpoint is not None:
        path = Path(checkpoint)
        card["checkpoint"] = {"file": path.name, "sha256": _sha256(path)}
        if ckpt is None and path.suffix.lower() != ".onnx":
            import torch

            ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt is not None:
        card.update(card_from_checkpoint(ckpt))
    if predictor is not None:
        size = getattr(predictor, "input_size", None)
        card["encoder"] = card.get("encoder") or getattr(predictor, "encoder", None)
        card["input_size"] = card.get("input_size") or ([size, size] if size else None)
        card["operating_point"] = getattr(predictor, "operating_point", card.get("operating_point"))
        card["runtime"] = {
            key: getattr(predictor, key, None) for key in ("runtime", "precision", "device")
        }
    card["intended_use"] = INTENDED_USE
    card["limitations"] = LIMITATIONS
    return card
