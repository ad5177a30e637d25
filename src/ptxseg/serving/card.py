"""The model card that the web service shows at `GET /v1/model`: what the model is and is not for.

Everything comes from the model file itself (`checkpoint.read_info`: training config, operating
point, validation metrics, epoch and best score), read once with the model
(`ptxseg.inference.loaded.LoadedModel.card_facts`), so the card cannot drift from the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ptxseg.inference.loaded import LoadedModel, model_facts

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


def card_from_info(info: dict[str, Any]) -> dict[str, Any]:
    """The model-describing part of the card from `checkpoint.read_info` of a model."""
    config = info.get("config") or {}
    source = info.get("source") or {}
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
            "epochs_completed": info.get("epoch", source.get("epoch")),
            "steps": info.get("global_step", source.get("global_step")),
        },
        "validation": info.get("validation"),
        "best_checkpoint_score": info.get("best_score", source.get("best_score")),
        "operating_point": info.get("operating_point"),
        **stored_evidence(info),
    }


def stored_evidence(info: dict[str, Any]) -> dict[str, Any]:
    """The named operating points, the calibrator and the test evaluation (with intervals) that
    `ptxseg evaluate` stored with a model (None for what it does not have)."""
    from ptxseg.stats.calibration import Calibrator

    calibrator = Calibrator.coerce(info.get("calibrator")) if info.get("calibrator") else None
    return {
        "operating_points": {
            name: {k: entry.get(k) for k in ("operating_point", "target", "validation")}
            for name, entry in (info.get("operating_points") or {}).items()
        },
        "calibrator": None if calibrator is None else calibrator.describe(),
        "evaluation": info.get("evaluation"),
    }


def build_model_card(
    model: Any = None,
    info: dict[str, Any] | None = None,
    predictor: Any = None,
) -> dict[str, Any]:
    """The full card: model facts from the model's files, how it runs here, intended use, limits.

    `model` is a `LoadedModel` (whose facts were read once with it) or a path or list of paths
    (read here). `info` describes the model when given (`checkpoint.read_info`; an exported
    `.onnx` has none; an ensemble is described by its first member and lists all members under
    `ensemble`). `predictor` (a `Predictor`) adds the runtime, the TTA and the operating point
    actually in use, which may override the stored one.
    """
    card: dict[str, Any] = {"name": "ptxseg pneumothorax segmentation"}
    if isinstance(model, LoadedModel):
        facts = model.card_facts
    else:
        facts = model_facts(model) if model is not None else {"info": None}
    if "ensemble" in facts:
        card["ensemble"] = dict(facts["ensemble"])
    if "checkpoint" in facts:
        card["checkpoint"] = facts["checkpoint"]
    info = info if info is not None else facts.get("info")
    if info is not None:
        card.update(card_from_info(info))
    if "ensemble" in card:  # the ensemble's point, not its first member's
        card["operating_point"] = card["ensemble"]["operating_point"]
        card.update(stored_evidence(card["ensemble"].pop("stored", {})))
    if predictor is not None:
        size = getattr(predictor, "input_size", None)
        card["encoder"] = card.get("encoder") or getattr(predictor, "encoder", None)
        card["input_size"] = card.get("input_size") or ([size, size] if size else None)
        op = getattr(predictor, "operating_point", None)
        card["operating_point"] = op.to_dict() if op is not None else card.get("operating_point")
        card["tta"] = getattr(predictor, "tta", None)
        card["operating_point_name"] = getattr(predictor, "operating_point_name", None)
        calibrator = getattr(predictor, "calibrator", None)
        card["calibrator"] = (
            calibrator.describe()
            if calibrator is not None
            else "none: `probability` is the raw score (search the operating point again to "
            "fit a calibrator)"
        )
        card["runtime"] = {
            key: getattr(predictor, key, None) for key in ("runtime", "precision", "device")
        }
        choice = getattr(predictor, "path_choice", None)
        if choice:  # how the runtime and precision were chosen (`ptxseg.inference.choice`)
            card["runtime"]["chosen_by"] = choice.get("chosen_by")
            card["runtime"]["choice"] = choice.get("line")
    card["intended_use"] = INTENDED_USE
    card["limitations"] = LIMITATIONS
    return card
