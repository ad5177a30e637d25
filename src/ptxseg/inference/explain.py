"""Grad-CAM for the segmentation model: which image regions drive the pneumothorax score.

The score is the label logit of the auxiliary classification head when the model has one
(`forward_with_aux`), else the sum of the positive mask logits. Its gradient with respect to the
deepest encoder feature map weights that map's channels (Selvaraju et al., 2017). Written here with
two hooks rather than taken from the `grad-cam` package, which needs the GUI build of OpenCV
(clashing with opencv-python-headless) and more dependencies for these ~40 lines.
"""

from __future__ import annotations

import cv2
import numpy as np


def find_encoder(model):
    """The smp encoder inside a model (the module whose forward returns the feature pyramid)."""
    from segmentation_models_pytorch.encoders._base import EncoderMixin

    for module in model.modules():
        if isinstance(module, EncoderMixin):
            return module
    raise ValueError(
        f"no segmentation_models_pytorch encoder found in {type(model).__name__}: "
        "Grad-CAM needs a U-Net built by ptxseg.model.unet"
    )


def grad_cam(model, image: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Heatmap (S, S) in [0, 1] for one model-size float32 image in [0, 1]."""
    import torch

    encoder = find_encoder(model)
    captured = {}

    def keep_features(_module, _inputs, outputs):
        feature = outputs[-1] if isinstance(outputs, list | tuple) else outputs
        feature.retain_grad()
        captured["feature"] = feature

    handle = encoder.register_forward_hook(keep_features)
    was_training = model.training
    model.eval()
    try:
        x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None].to(device)
        with torch.enable_grad():
            x.requires_grad_(True)  # gradients flow even when the weights are frozen
            label_logits = None
            if hasattr(model, "forward_with_aux"):
                mask_logits, label_logits = model.forward_with_aux(x)
            else:
                mask_logits = model(x)
            score = torch.relu(mask_logits).sum() if label_logits is None else label_logits.sum()
            model.zero_grad(set_to_none=True)
            score.backward()
    finally:
        handle.remove()
        model.train(was_training)
    feature = captured["feature"]
    weights = feature.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * feature).sum(dim=1))[0].detach().float().cpu().numpy()
    cam = cv2.resize(cam, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    peak = float(cam.max())
    return (cam / peak if peak > 0 else cam).astype(np.float32)


def heatmap_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """BGR uint8 picture: the X-ray with the JET-coloured heatmap blended on top."""
    gray = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    colour = cv2.applyColorMap((np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(colour, alpha, base, 1 - alpha, 0)
