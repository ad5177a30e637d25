"""The one preprocessing step between a read image and the model, shared by prepare and Predictor.

`prepare` caches what this returns and training reads the cache; the `Predictor` calls the same
function on every image it is given. So the model sees the same pixels in training, evaluation
and prediction: the image is resized to the model's square input (area averaging when shrinking,
bilinear when enlarging) and quantised to 8 bits, as the cache stores it.
"""

from __future__ import annotations

import cv2
import numpy as np


def _interpolation(shape: tuple[int, ...], size: int) -> int:
    return cv2.INTER_AREA if max(shape[:2]) > size else cv2.INTER_LINEAR


def to_model_input(image: np.ndarray, size: int) -> np.ndarray:
    """A float (H, W) image in [0, 1] -> uint8 (size, size), as the cache and the model see it."""
    if image.ndim != 2:
        raise ValueError(
            f"expected a grayscale (H, W) image, got shape {image.shape}: convert colour images "
            "to one channel first"
        )
    if size <= 0:
        raise ValueError(f"model input size {size}: expected a positive number of pixels")
    small = image.astype(np.float32, copy=False)
    if small.shape != (size, size):
        small = cv2.resize(small, (size, size), interpolation=_interpolation(image.shape, size))
    return np.clip(small * 255.0 + 0.5, 0, 255).astype(np.uint8)


def mask_to_model_size(mask: np.ndarray, size: int) -> np.ndarray:
    """A bool (H, W) mask -> uint8 0/1 (size, size), resampled like the image."""
    if mask.shape == (size, size):
        return mask.astype(np.uint8)
    small = cv2.resize(
        mask.astype(np.uint8) * 255, (size, size), interpolation=_interpolation(mask.shape, size)
    )
    return (small >= 128).astype(np.uint8)


def to_float(batch: np.ndarray) -> np.ndarray:
    """uint8 model inputs -> float32 in [0, 1] (the model's input range)."""
    return batch.astype(np.float32) / 255.0
