"""Batch augmentation on the device: the same strategies as the CPU pipeline, in distribution.

Both pipelines run here on CPU tensors. Each test looks at one transform (or one strategy) on
many draws and compares a statistic that the transform controls (flip rate, rotation angle, crop
zoom, brightness, noise) with the CPU pipeline's (two-sample Kolmogorov-Smirnov distance below
0.16: the 0.1% critical value for 300 draws each) or with its specified law.
"""

import math

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ptxseg.training.augmentations import (
    CROP_RATIO,
    CROP_SCALE,
    ROTATION_DEGREES,
    STRATEGIES,
    AlignedRandomResizedCrop,
    SmoothElastic,
    build_transform,
)
from ptxseg.training.batch_augment import (
    BatchAugment,
    Probabilities,
    build_batch_augment,
    probabilities,
)

SIZE = 64
DRAWS = 300
KS_LIMIT = 0.16


def ks(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov distance."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def bar_pair(size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """A long horizontal bar left of centre (orientation, side and zoom are all visible)."""
    mask = torch.zeros(1, size, size)
    mask[:, size // 2 - 3 : size // 2 + 3, size // 8 : size // 2 + size // 8] = 1
    image = 0.2 + 0.6 * mask
    return image, mask


def batch_of(pair, n: int = DRAWS):
    image, mask = pair
    return image[None].repeat(n, 1, 1, 1), mask[None].repeat(n, 1, 1, 1)


def cpu_draws(transform, pair, n: int = DRAWS, seed: int = 0):
    """n draws of a CPU transform: a PairTransform, or a v2 transform of (Image, Mask)."""
    torch.manual_seed(seed)
    image, mask = pair
    if not hasattr(transform, "strategy"):
        image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)
    outs = [transform(image, mask) for _ in range(n)]
    plain = [(o[0].as_subclass(torch.Tensor), o[1].as_subclass(torch.Tensor)) for o in outs]
    return torch.stack([o[0] for o in plain]), torch.stack([o[1] for o in plain])


def angle_of(mask: torch.Tensor) -> float:
    """Orientation in degrees of the principal axis of a mask (its second moments)."""
    ys, xs = torch.nonzero(mask[0] > 0.5, as_tuple=True)
    x, y = xs.float() - xs.float().mean(), ys.float() - ys.float().mean()
    return math.degrees(0.5 * math.atan2(2 * float((x * y).mean()), float((x * x - y * y).mean())))


def centre_x(mask: torch.Tensor) -> float:
    return float(torch.nonzero(mask[0] > 0.5)[:, 1].float().mean())


def test_probability_table_follows_the_strategies():
    assert probabilities("none") == Probabilities()
    assert probabilities("geometric") == Probabilities(rotation=1.0, flip=0.5, crop=1.0)
    assert probabilities("noise") == Probabilities(artifacts=0.5, blur=0.5, noise=0.5)
    full = probabilities("full")
    assert (full.rotation, full.flip, full.crop, full.elastic) == (0.5, 0.5, 0.5, 0.5)
    assert (full.jitter, full.gamma, full.artifacts, full.blur, full.noise) == (
        0.5,
        0.5,
        0.25,
        0.25,
        0.25,
    )
    assert build_batch_augment("none", SIZE) is None
    with pytest.raises(ValueError, match="choose one of"):
        probabilities("sideways")


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "none"])
def test_types_ranges_and_repeatability(strategy):
    image, mask = batch_of(bar_pair(), 8)
    augment = BatchAugment(strategy, SIZE, seed=3)
    out_image, out_mask = augment(image, mask)
    assert out_image.shape == out_mask.shape == (8, 1, SIZE, SIZE)
    assert out_image.dtype == out_mask.dtype == torch.float32
    assert float(out_image.min()) >= 0.0 and float(out_image.max()) <= 1.0
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
    again = BatchAugment(strategy, SIZE, seed=3)(image, mask)
    assert torch.equal(again[0], out_image) and torch.equal(again[1], out_mask)
    other = BatchAugment(strategy, SIZE, seed=3)
    other.reseed(3, 0, 1)  # another epoch: another stream
    assert not torch.equal(other(image, mask)[0], out_image)


def test_bad_batches_are_explained():
    augment = BatchAugment("full", SIZE)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        augment(torch.zeros(1, SIZE, SIZE), torch.zeros(1, SIZE, SIZE))
    with pytest.raises(ValueError, match="differ in shape"):
        augment(torch.zeros(2, 1, SIZE, SIZE), torch.zeros(3, 1, SIZE, SIZE))


def test_flip_rate_is_one_half_like_the_cpu_pipeline():
    pair = bar_pair()
    _, masks = BatchAugment("geometric", SIZE, rates=Probabilities(flip=0.5))(*batch_of(pair))
    flipped = np.mean([centre_x(m) > SIZE / 2 for m in masks])
    _, cpu = cpu_draws(v2.RandomHorizontalFlip(0.5), pair)
    cpu_flipped = np.mean([centre_x(m) > SIZE / 2 for m in cpu])
    assert abs(flipped - 0.5) < 0.09 and abs(cpu_flipped - 0.5) < 0.09


def test_rotation_angles_are_uniform_within_ten_degrees_like_the_cpu_pipeline():
    pair = bar_pair()
    _, masks = BatchAugment("geometric", SIZE, rates=Probabilities(rotation=1.0))(*batch_of(pair))
    angles = [angle_of(m) for m in masks]
    rotation = v2.RandomRotation(ROTATION_DEGREES, interpolation=v2.InterpolationMode.BILINEAR)
    _, cpu = cpu_draws(rotation, pair)
    cpu_angles = [angle_of(m) for m in cpu]
    assert max(abs(a) for a in angles) < ROTATION_DEGREES + 1.5
    assert np.std(angles) == pytest.approx(ROTATION_DEGREES / math.sqrt(3), rel=0.15)
    assert ks(np.abs(angles), np.abs(cpu_angles)) < KS_LIMIT


def test_crop_zoom_matches_random_resized_crop():
    pair = bar_pair()
    _, masks = BatchAugment("geometric", SIZE, rates=Probabilities(crop=1.0))(*batch_of(pair))
    crop = AlignedRandomResizedCrop(SIZE, scale=CROP_SCALE, ratio=CROP_RATIO, antialias=True)
    _, cpu = cpu_draws(crop, pair)
    area = masks.sum(dim=(1, 2, 3)).numpy()
    cpu_area = cpu.sum(dim=(1, 2, 3)).numpy()
    assert ks(area, cpu_area) < KS_LIMIT
    # Zooming in never shrinks the bar, and the scale range caps the zoom at 1/0.7 per area.
    assert area.min() >= 0.95 * float(pair[1].sum())


def test_elastic_bending_moves_pixels_as_much_as_the_cpu_pipeline():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, SIZE), torch.linspace(0, 1, SIZE), indexing="ij")
    image = (0.5 + 0.4 * torch.sin(12 * xx) * torch.cos(9 * yy))[None]
    pair = (image, (image > 0.5).float())
    out, _ = BatchAugment("elastic", SIZE, rates=Probabilities(elastic=1.0))(*batch_of(pair))
    cpu, _ = cpu_draws(SmoothElastic(), pair)
    change = (out - image).abs().mean(dim=(1, 2, 3)).numpy()
    cpu_change = (cpu - image).abs().mean(dim=(1, 2, 3)).numpy()
    assert change.mean() > 0.005
    assert ks(change, cpu_change) < KS_LIMIT


@pytest.mark.parametrize("strategy", ["photometric", "noise", "full"])
def test_strategies_change_images_as_the_cpu_pipeline_does(strategy):
    pair = bar_pair()
    out, masks = BatchAugment(strategy, SIZE)(*batch_of(pair))
    cpu, cpu_masks = cpu_draws(build_transform(strategy, SIZE), pair)
    for stat in (lambda x: x.mean(dim=(1, 2, 3)), lambda x: x.std(dim=(1, 2, 3))):
        assert ks(stat(out).numpy(), stat(cpu).numpy()) < KS_LIMIT
    area, cpu_area = masks.sum(dim=(1, 2, 3)).numpy(), cpu_masks.sum(dim=(1, 2, 3)).numpy()
    assert ks(area, cpu_area) < KS_LIMIT


def test_geometry_keeps_image_and_mask_aligned():
    pair = bar_pair()
    rates = Probabilities(rotation=1.0, flip=0.5, crop=1.0, elastic=1.0)
    images, masks = BatchAugment("full", SIZE, rates=rates)(*batch_of(pair, 64))
    for image, mask in zip(images, masks, strict=True):
        bright, truth = image[0] > 0.5, mask[0] > 0.5
        dice = 2 * float((bright & truth).sum()) / max(float(bright.sum() + truth.sum()), 1.0)
        assert dice > 0.9


def test_pixel_strategies_leave_the_mask_alone():
    image, mask = batch_of(bar_pair(), 16)
    for strategy in ("photometric", "noise"):
        _, out_mask = BatchAugment(strategy, SIZE)(image, mask)
        assert torch.equal(out_mask, mask)


def test_artifacts_only_brighten():
    image, mask = batch_of(bar_pair(), 32)
    rates = Probabilities(artifacts=1.0)
    out, _ = BatchAugment("noise", SIZE, rates=rates)(image, mask)
    assert bool((out >= image - 1e-6).all())
    assert float((out > image + 0.3).float().mean()) > 0.001  # lines and blocks were drawn
