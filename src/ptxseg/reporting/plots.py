"""Figures for the report: training curves, image panels and the ROC curve, as embeddable PNGs.

Every function returns PNG bytes (matplotlib, Agg backend) so the HTML report can inline them as
base64 data URIs and stays one self-contained file.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence

import numpy as np

from ptxseg.util.plotting import figure_png, pyplot

CURVE_METRICS = (
    ("loss", "Loss"),
    ("iou", "IoU"),
    ("dice", "Dice"),
    ("competition_dice", "Competition Dice"),
)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def curves_png(curves: Mapping[str, Mapping[str, Sequence[float]]], epochs: Sequence[int]) -> bytes:
    """Training and validation curves side by side (loss, IoU, Dice: the study's figures 3-4;
    the competition Dice when logged).

    `curves[metric][split]` is one value per epoch (NaN where not logged), split `train`/`val`.
    """
    plt = pyplot()
    shown = [(k, title) for k, title in CURVE_METRICS if k in curves]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], shown, strict=True):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = curves[key].get(split)
            if values is None:
                continue
            ys = np.asarray(values, dtype=float)
            xs = np.asarray(epochs[: len(ys)])
            keep = ~np.isnan(ys)
            ax.plot(
                xs[keep],
                ys[keep],
                style,
                ms=3,
                label="training" if split == "train" else "validation",
            )
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return figure_png(fig)


def _overlay(image: np.ndarray, mask: np.ndarray, color: tuple[float, float, float]) -> np.ndarray:
    rgb = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=-1).astype(np.float32)
    m = mask.astype(bool)
    rgb[m] = 0.55 * rgb[m] + 0.45 * np.asarray(color, dtype=np.float32)
    return rgb


def panels_png(
    images: np.ndarray,
    truths: np.ndarray,
    predictions: np.ndarray,
    titles: Sequence[str],
) -> bytes:
    """Rows of image | ground truth | prediction (the study's figure 5)."""
    plt = pyplot()
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.6 * n), squeeze=False)
    for row in range(n):
        image = np.asarray(images[row], dtype=np.float32)
        if image.max() > 1.0:
            image = image / 255.0
        panels = [
            (image, "image"),
            (_overlay(image, truths[row], (0.1, 0.9, 0.2)), "ground truth"),
            (_overlay(image, predictions[row], (1.0, 0.2, 0.1)), "prediction"),
        ]
        for col, (picture, label) in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(label, fontsize=10)
        axes[row][0].set_ylabel(titles[row], fontsize=8)
    fig.tight_layout()
    return figure_png(fig, dpi=90)


def roc_png(fpr: Sequence[float], tpr: Sequence[float], auc: float | None = None) -> bytes:
    """Image-level ROC curve (is there a pneumothorax?) with the chance diagonal."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    label = f"AUC {auc:.3f}" if auc is not None and not math.isnan(auc) else "ROC"
    ax.plot(fpr, tpr, lw=2, label=label)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return figure_png(fig)
