"""Named augmentation strategies, applied jointly to a radiograph and its pneumothorax mask.

The study augments with rotation, flips, crops, brightness/contrast, noise (Gaussian, artifacts)
and elastic bending; the ablation asks which of them matter, so each family is a named strategy:

- `none`: nothing (only a resize when the input side differs from `size`).
- `geometric`: rotation (±10°), horizontal flip (p=0.5), random resized crop (scale 0.7-1.0).
- `photometric`: brightness and contrast jitter, gamma (image only).
- `noise`: Gaussian noise, Gaussian blur, burnt-in artifacts (wires, ECG electrodes, text
  labels), each with p=0.5 (image only).
- `elastic`: smooth elastic bending (RMS displacement about 1% of the side), image and mask.
- `full`: all of the above in that order, each applied with half its own probability
  (the flip keeps p=0.5).

Everything is built from torchvision.transforms.v2 on `tv_tensors.Image` / `tv_tensors.Mask`, so
geometric changes move both alike, masks are resampled with nearest neighbour, and photometric
changes leave the mask alone. Randomness comes from torch's global RNG: `torch.manual_seed` and the
DataLoader's per-worker seeding make a run reproducible. The transforms pickle, so they work in
DataLoader workers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

STRATEGIES = ("none", "geometric", "photometric", "noise", "elastic", "full")

ROTATION_DEGREES = 10.0
CROP_SCALE = (0.7, 1.0)
CROP_RATIO = (0.9, 1 / 0.9)  # near-square: the output is square and anatomy should not stretch
BRIGHTNESS = 0.25
CONTRAST = 0.25
GAMMA = (0.7, 1.5)
NOISE_SIGMAS = (0.01, 0.02, 0.04)
BLUR_SIGMA_AT_256 = (0.3, 1.5)  # pixels at 256 px; scaled with the image side
ELASTIC_SMOOTHNESS = 0.08  # correlation length of the bending, as a share of the image side
ELASTIC_DISPLACEMENT = 0.01  # mean RMS displacement, as a share of the image side
NOISE_PROBABILITY = 0.5


class RandomGamma(v2.Transform):
    """Gamma correction with a log-uniform random exponent; images only, masks pass through."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, gamma: tuple[float, float] = GAMMA) -> None:
        super().__init__()
        if not 0 < gamma[0] <= gamma[1]:
            raise ValueError(f"gamma range must satisfy 0 < low <= high, got {gamma}")
        self.gamma = tuple(gamma)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        low, high = math.log(self.gamma[0]), math.log(self.gamma[1])
        return {"gamma": math.exp(low + (high - low) * torch.rand(()).item())}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.adjust_gamma(inpt, params["gamma"])


class SyntheticArtifacts(v2.Transform):
    """Burn bright foreign objects into the image: a few wires/lines and small squares.

    Real radiographs carry ECG leads, lines and tubes (thin bright curves) and electrodes or text
    labels (small bright blocks) that a model must learn to ignore. Sizes are shares of the image
    side, so the look does not depend on resolution. Images only; masks pass through.
    """

    _transformed_types = (tv_tensors.Image,)

    def __init__(
        self,
        max_lines: int = 3,
        max_markers: int = 4,
        line_width: tuple[float, float] = (0.004, 0.012),
        marker_size: tuple[float, float] = (0.02, 0.06),
        intensity: tuple[float, float] = (0.75, 1.0),
    ) -> None:
        super().__init__()
        self.max_lines = max_lines
        self.max_markers = max_markers
        self.line_width = tuple(line_width)
        self.marker_size = tuple(marker_size)
        self.intensity = tuple(intensity)

    def _uniform(self, bounds: tuple[float, float], n: int = 1) -> torch.Tensor:
        return bounds[0] + (bounds[1] - bounds[0]) * torch.rand(n)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = flat_inputs[0].shape[-2:]
        overlay = torch.zeros(height, width)
        for _ in range(int(torch.randint(1, self.max_lines + 1, ()))):
            self._draw_curve(overlay)
        for _ in range(int(torch.randint(0, self.max_markers + 1, ()))):
            side = max(2, round(float(self._uniform(self.marker_size)) * min(height, width)))
            aspect = float(self._uniform((1.0, 2.5)))  # squares (electrodes) to bars (labels)
            h, w = side, min(width, max(2, round(side * aspect)))
            top = int(torch.randint(0, height - h + 1, ()))
            left = int(torch.randint(0, width - w + 1, ()))
            block = overlay[top : top + h, left : left + w]
            block.copy_(torch.maximum(block, self._uniform(self.intensity)))
        return {"overlay": overlay}

    def _draw_curve(self, overlay: torch.Tensor) -> None:
        """A quadratic Bezier from border to border-ish, dilated to its width."""
        height, width = overlay.shape
        scale = torch.tensor([width - 1, height - 1], dtype=torch.float32)
        p0, p1, p2 = torch.rand(3, 2) * scale
        n_points = 4 * (height + width)
        t = torch.linspace(0, 1, n_points)[:, None]
        points = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        cols = points[:, 0].round().long().clamp(0, width - 1)
        rows = points[:, 1].round().long().clamp(0, height - 1)
        line = torch.zeros(1, 1, height, width)
        line[0, 0, rows, cols] = 1.0
        thickness = max(1, round(float(self._uniform(self.line_width)) * min(height, width)))
        if thickness > 1:
            kernel = thickness | 1  # odd, so the line stays centred
            line = torch.nn.functional.max_pool2d(line, kernel, stride=1, padding=kernel // 2)
        overlay.copy_(torch.maximum(overlay, line[0, 0] * self._uniform(self.intensity)))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        overlay = params["overlay"].to(dtype=inpt.dtype, device=inpt.device)
        return tv_tensors.wrap(torch.maximum(inpt, overlay), like=inpt)


class SmoothElastic(v2.ElasticTransform):
    """`v2.ElasticTransform` with a displacement field that is cheap at any smoothness.

    v2 blurs full-resolution noise with a 2-D kernel of side 8 sigma, which costs seconds per
    image once the bending is smooth (sigma of 8% of a 256 px side). The same kind of field is
    drawn here on a coarse grid (cells of half `smoothness`), blurred there by two cells and
    upsampled bicubically.
    Its RMS displacement is `displacement` times the side, scaled by a random factor in 0.5-1.5.
    Warping (bilinear image, nearest mask, zero fill) is v2's own.
    """

    def __init__(
        self, displacement: float = ELASTIC_DISPLACEMENT, smoothness: float = ELASTIC_SMOOTHNESS
    ) -> None:
        super().__init__(interpolation=v2.InterpolationMode.BILINEAR)
        if not (displacement >= 0 and 0 < smoothness <= 1):
            raise ValueError(
                f"elastic displacement must be >= 0 and smoothness in (0, 1], "
                f"got {displacement} and {smoothness}"
            )
        self.displacement = displacement
        self.smoothness = smoothness

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = flat_inputs[0].shape[-2:]
        cells = max(8, math.ceil(2 / self.smoothness))  # blurring 2 cells = `smoothness`
        noise = F.gaussian_blur(torch.randn(1, 2, cells, cells), [13, 13], [2.0, 2.0])
        field = torch.nn.functional.interpolate(
            noise, size=(height, width), mode="bicubic", align_corners=False
        )
        rms = field.pow(2).mean(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        scale = self.displacement * (0.5 + torch.rand(()))
        # v2 wants offsets in grid units of [-1, 1]: a share `f` of the side is 2 * f.
        return {"displacement": (2 * scale * field / rms).permute(0, 2, 3, 1)}


def _resize_mask_exact(mask: tv_tensors.Mask, size: int) -> tv_tensors.Mask:
    """Nearest-neighbour resize with pixel centres aligned ("nearest-exact").

    torch's plain "nearest", which torchvision uses for masks in `resized_crop`, shifts the mask
    by up to half an output pixel towards the bottom right of the bilinear image
    (pytorch/pytorch#34808); "nearest-exact" keeps mask and image aligned.
    """
    if tuple(mask.shape[-2:]) == (size, size):
        return mask
    plain = mask.as_subclass(torch.Tensor)[None]
    out = torch.nn.functional.interpolate(plain.float(), size=(size, size), mode="nearest-exact")
    return tv_tensors.wrap(out[0].to(plain.dtype), like=mask)


class AlignedResize(v2.Resize):
    """`v2.Resize` to a square side whose masks are resampled with centre-aligned nearest."""

    def __init__(self, size: int) -> None:
        super().__init__((size, size), antialias=True)
        self.side = size

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return _resize_mask_exact(inpt, self.side)
        return super().transform(inpt, params)


class AlignedRandomResizedCrop(v2.RandomResizedCrop):
    """`v2.RandomResizedCrop` to a square side, masks resampled with centre-aligned nearest."""

    def __init__(self, size: int, **kwargs: Any) -> None:
        super().__init__(size, **kwargs)
        self.side = size

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return _resize_mask_exact(F.crop(inpt, **params), self.side)
        return super().transform(inpt, params)


def _maybe(transform: v2.Transform, p: float) -> v2.Transform:
    return transform if p >= 1.0 else v2.RandomApply([transform], p=p)


def _blur(size: int) -> v2.GaussianBlur:
    low, high = (s * size / 256 for s in BLUR_SIGMA_AT_256)
    kernel = 2 * math.ceil(3 * high) + 1
    return v2.GaussianBlur(kernel_size=kernel, sigma=(max(low, 0.1), max(high, 0.1)))


def _components(strategy: str, size: int, scale: float) -> list[v2.Transform]:
    """The transforms of one family; `scale` multiplies their probabilities (0.5 inside `full`)."""
    if strategy == "geometric":
        return [
            _maybe(
                v2.RandomRotation(ROTATION_DEGREES, interpolation=v2.InterpolationMode.BILINEAR),
                scale,
            ),
            v2.RandomHorizontalFlip(p=0.5),
            _maybe(
                AlignedRandomResizedCrop(size, scale=CROP_SCALE, ratio=CROP_RATIO, antialias=True),
                scale,
            ),
        ]
    if strategy == "photometric":
        return [
            _maybe(v2.ColorJitter(brightness=BRIGHTNESS, contrast=CONTRAST), scale),
            _maybe(RandomGamma(GAMMA), scale),
        ]
    if strategy == "noise":
        p = NOISE_PROBABILITY * scale
        return [
            _maybe(SyntheticArtifacts(), p),
            _maybe(_blur(size), p),
            _maybe(v2.RandomChoice([v2.GaussianNoise(sigma=s) for s in NOISE_SIGMAS]), p),
        ]
    if strategy == "elastic":
        return [_maybe(SmoothElastic(), scale)]
    return []


def _pipeline(strategy: str, size: int) -> v2.Compose:
    steps: list[v2.Transform] = [AlignedResize(size)]  # a no-op at `size`
    if strategy == "full":
        for family in ("geometric", "elastic", "photometric", "noise"):
            steps += _components(family, size, scale=0.5)
    else:
        steps += _components(strategy, size, scale=1.0)
    return v2.Compose(steps)


class PairTransform:
    """`transform(image, mask) -> (image, mask)` on float32 (1, H, W) tensors.

    Returns float32 (1, size, size) tensors: the image clamped to [0, 1], the mask exactly {0, 1}.
    """

    def __init__(self, strategy: str, size: int) -> None:
        self.strategy = strategy
        self.size = size
        self.pipeline = _pipeline(strategy, size)

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_pair(image, mask)
        out_image, out_mask = self.pipeline(tv_tensors.Image(image), tv_tensors.Mask(mask))
        out_image = out_image.as_subclass(torch.Tensor).clamp(0.0, 1.0).to(torch.float32)
        out_mask = (out_mask.as_subclass(torch.Tensor) > 0.5).to(torch.float32)
        return out_image, out_mask

    def __repr__(self) -> str:
        return f"PairTransform(strategy={self.strategy!r}, size={self.size}, {self.pipeline!r})"


def _check_pair(image: torch.Tensor, mask: torch.Tensor) -> None:
    for name, t in (("image", image), ("mask", mask)):
        if not isinstance(t, torch.Tensor) or t.ndim != 3 or t.shape[0] != 1:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(
                f"augmentation {name} must be a (1, H, W) tensor, got {shape}; "
                "add the channel axis with tensor[None]"
            )
        if not t.is_floating_point():
            raise ValueError(
                f"augmentation {name} must be float (image in [0, 1], mask in {{0, 1}}), "
                f"got {t.dtype}; convert with .float() (divide uint8 images by 255)"
            )
    if image.shape != mask.shape:
        raise ValueError(
            f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in shape; "
            "resize the mask to the image first"
        )


def build_transform(strategy: str, size: int) -> PairTransform:
    """The augmentation called `strategy` (one of `STRATEGIES`), producing `size` x `size` pairs."""
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown augmentation strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}"
        )
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"augmentation size must be an integer >= 8 pixels, got {size!r}")
    return PairTransform(strategy, size)
