"""What each augmentation strategy does to one radiograph: the `ptxseg augment-preview` figure.

Kept apart from `augment` so that the training path carries no plotting or synthetic-data code.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from ptxseg.training.augmentations import STRATEGIES, build_transform
from ptxseg.util import atomic


def synthetic_pair(size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic radiograph with a pneumothorax, written and read back like real data."""
    from ptxseg.data.dicom import read_image
    from ptxseg.data.rle import read_annotations, rles_to_mask
    from ptxseg.data.synthetic import CSV_NAME, IMAGES_DIR, generate_dataset

    with tempfile.TemporaryDirectory(prefix="ptxseg-augment-") as tmp:
        generate_dataset(tmp, 1, size=size, seed=seed, positive_fraction=1.0, progress=False)
        path = next((Path(tmp) / IMAGES_DIR).glob("*/*/*.dcm"))
        image, _ = read_image(path)
        rles = read_annotations(Path(tmp) / CSV_NAME)[path.stem]
        mask = rles_to_mask(rles, *image.shape)
    return image.astype(np.float32), mask.astype(bool)


def load_pair(
    image_path: str | Path, mask_path: str | Path | None, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read an image (DICOM, PNG, JPEG) and an optional mask PNG (non-zero = pneumothorax),
    both resized to `size` (area for the image, nearest for the mask). No mask: an empty one."""
    import cv2

    from ptxseg.data.dicom import read_image

    image, _ = read_image(image_path)
    if mask_path is None:
        mask = np.zeros(image.shape, dtype=bool)
    else:
        raw = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if raw is None:
            raise ValueError(f"{mask_path}: cannot read it as an image; expected a mask PNG")
        if raw.shape != image.shape:
            raise ValueError(
                f"{mask_path} is {raw.shape[1]}x{raw.shape[0]} but {image_path} is "
                f"{image.shape[1]}x{image.shape[0]}; give the mask at the image's size"
            )
        mask = raw > 0
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
    return image.astype(np.float32), mask


def plot_preview(
    image: np.ndarray,
    mask: np.ndarray,
    out_png: str | Path,
    n: int = 4,
    seed: int = 0,
    size: int = 256,
    strategies: tuple[str, ...] = STRATEGIES,
) -> Path:
    """A PNG grid: one row per strategy, the input then `n` augmented samples, mask outlined.

    The global torch RNG is seeded with `seed` inside and restored afterwards.
    """
    from ptxseg.util.plotting import pyplot

    plt = pyplot()

    if n < 1:
        raise ValueError(f"number of samples per strategy must be >= 1, got {n}")
    image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    mask_t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
    fig, axes = plt.subplots(
        len(strategies), n + 1, figsize=(1.9 * (n + 1), 1.9 * len(strategies)), squeeze=False
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for row, strategy in enumerate(strategies):
            transform = build_transform(strategy, size)
            samples = [build_transform("none", size)(image_t, mask_t)]
            samples += [transform(image_t, mask_t) for _ in range(n)]
            for col, (img, msk) in enumerate(samples):
                ax = axes[row, col]
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
                if msk.any():
                    ax.contour(msk[0].numpy(), levels=[0.5], colors="red", linewidths=0.8)
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title("input" if col == 0 else f"sample {col}", fontsize=9)
            axes[row, 0].set_ylabel(strategy, fontsize=10)
    fig.tight_layout()
    return atomic.save_figure(fig, out_png, dpi=100)
