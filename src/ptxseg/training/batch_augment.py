"""The augmentation strategies of `ptxseg.training.augmentations`, on a whole batch on its device.

At several hundred images/s a GPU outruns CPU augmentation (elastic bending alone runs at about
50 images/s per CPU core), so on a GPU the loader only reads the cache and this module augments
the batch after the transfer. The strategies, their parameters and their probabilities are those
of `augment.py` (one table, `PROBABILITIES`, says which transform fires how often in which
strategy); every image of the batch draws its own parameters:

- geometric: rotation (uniform ±10°), horizontal flip, random resized crop (the same 10-attempt
  draw as torchvision's, central crop as the fallback) and the elastic field are composed into
  one sampling grid per image, so the batch is resampled once (bilinear image, nearest mask,
  zero fill). The CPU pipeline resamples once per transform; one resampling is a little sharper
  and keeps the mask aligned the same way.
- photometric: brightness and contrast (factors uniform in 1 ± 0.25, applied in a random order,
  contrast around the image's mean) and gamma (log-uniform in 0.7-1.5), images only.
- noise: burnt-in lines and markers (same shapes and sizes as `SyntheticArtifacts`), Gaussian
  blur (sigma uniform, reflect padding) and Gaussian noise (sigma chosen from 0.01/0.02/0.04).

Randomness comes from a `torch.Generator` on the batch's device, so a seeded run repeats and the
device draws its own numbers without a host round trip. Everything is plain tensor code: it runs
on CPU tensors as well (the tests compare its distributions with the CPU pipeline's there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf

from ptxseg.training.augmentations import (
    BLUR_SIGMA_AT_256,
    BRIGHTNESS,
    CONTRAST,
    CROP_RATIO,
    CROP_SCALE,
    ELASTIC_DISPLACEMENT,
    ELASTIC_SMOOTHNESS,
    GAMMA,
    NOISE_PROBABILITY,
    NOISE_SIGMAS,
    ROTATION_DEGREES,
    STRATEGIES,
)

# SyntheticArtifacts' defaults (augment.py), as shares of the image side.
MAX_LINES, MAX_MARKERS = 3, 4
LINE_WIDTH, MARKER_SIZE, MARKER_ASPECT, INTENSITY = (
    (0.004, 0.012),
    (0.02, 0.06),
    (1.0, 2.5),
    (0.75, 1.0),
)
CROP_ATTEMPTS = 10


@dataclass(frozen=True)
class Probabilities:
    """How often each transform fires in a strategy (0: never)."""

    rotation: float = 0.0
    flip: float = 0.0
    crop: float = 0.0
    elastic: float = 0.0
    jitter: float = 0.0
    gamma: float = 0.0
    artifacts: float = 0.0
    blur: float = 0.0
    noise: float = 0.0


def _families(scale: float) -> dict[str, dict[str, float]]:
    noise = NOISE_PROBABILITY * scale
    return {
        "geometric": {"rotation": scale, "flip": 0.5, "crop": scale},
        "elastic": {"elastic": scale},
        "photometric": {"jitter": scale, "gamma": scale},
        "noise": {"artifacts": noise, "blur": noise, "noise": noise},
    }


def probabilities(strategy: str) -> Probabilities:
    """The table of `augment.py`: a family alone at full rate, or all of them at half in `full`."""
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown augmentation strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}"
        )
    if strategy == "none":
        return Probabilities()
    if strategy == "full":
        merged: dict[str, float] = {}
        for family in _families(0.5).values():
            merged.update(family)
        return Probabilities(**merged)
    return Probabilities(**_families(1.0)[strategy])


class BatchAugment:
    """`augment(image, mask) -> (image, mask)` on float (B, 1, S, S) batches on any device.

    Returns the image clamped to [0, 1] and the mask exactly {0, 1}, as `PairTransform` does.
    `seed` seeds the generator that the first batch creates on its device; `rates` replaces the
    strategy's table of probabilities (to look at one transform alone).
    """

    def __init__(
        self, strategy: str, size: int, seed: int = 0, rates: Probabilities | None = None
    ) -> None:
        self.strategy = strategy
        self.p = probabilities(strategy) if rates is None else rates
        if not isinstance(size, int) or size < 8:
            raise ValueError(f"augmentation size must be an integer >= 8 pixels, got {size!r}")
        self.size = size
        self.seed = seed
        self._generator: torch.Generator | None = None

    def __repr__(self) -> str:
        return f"BatchAugment(strategy={self.strategy!r}, size={self.size}, {self.p})"

    def reseed(self, *entropy: int) -> None:
        """Start a new stream from these numbers (seed, rank, epoch): repeatable, independent."""
        import numpy as np

        self.seed = int(np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)[0] >> 1)
        self._generator = None

    def generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    # ------------------------------------------------------------------ random numbers

    def _rand(self, *shape: int, device: torch.device) -> torch.Tensor:
        return torch.rand(shape, generator=self._generator, device=device)

    def _uniform(self, low: float, high: float, *shape: int, device) -> torch.Tensor:
        return low + (high - low) * self._rand(*shape, device=device)

    def _fires(self, p: float, n: int, device) -> torch.Tensor:
        return self._rand(n, device=device) < p

    # ------------------------------------------------------------------ the batch

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_batch(image, mask)
        self.generator(image.device)
        image = image.float()
        mask = mask.float()
        if image.shape[-2:] != (self.size, self.size):
            image = nnf.interpolate(
                image,
                size=(self.size, self.size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
            mask = nnf.interpolate(mask, size=(self.size, self.size), mode="nearest-exact")
        image, mask = self._geometric(image, mask)
        image = self._photometric(image)
        image = self._noise(image)
        return image.clamp(0.0, 1.0), (mask > 0.5).float()

    # ------------------------------------------------------------------ geometry

    def _geometric(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        p, dev = self.p, image.device
        n, (height, width) = image.shape[0], image.shape[-2:]
        if not (p.rotation or p.flip or p.crop or p.elastic):
            return image, mask
        rotate = self._fires(p.rotation, n, dev)
        flip = self._fires(p.flip, n, dev)
        crop = self._fires(p.crop, n, dev)
        bend = self._fires(p.elastic, n, dev)
        angle = torch.deg2rad(self._uniform(-ROTATION_DEGREES, ROTATION_DEGREES, n, device=dev))
        angle = torch.where(rotate, angle, torch.zeros_like(angle))
        scale, offset = self._crop_boxes(n, height, width, dev)
        scale = torch.where(crop[:, None], scale, torch.ones_like(scale))
        offset = torch.where(crop[:, None], offset, torch.zeros_like(offset))
        # Sampling position in the input for an output position u (normalised, pixel centres):
        # crop (u -> scale * u + offset), then the flip (x -> -x), then the rotation.
        sign = torch.where(flip, -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        a = torch.stack(
            [
                torch.stack([cos * sign * scale[:, 0], -sin * scale[:, 1]], -1),
                torch.stack([sin * sign * scale[:, 0], cos * scale[:, 1]], -1),
            ],
            1,
        )  # (n, 2, 2)
        shifted = torch.stack([sign * offset[:, 0], offset[:, 1]], -1)
        b = torch.stack(
            [cos * shifted[:, 0] - sin * shifted[:, 1], sin * shifted[:, 0] + cos * shifted[:, 1]],
            -1,
        )  # (n, 2)
        grid = _identity_grid(height, width, dev).expand(n, -1, -1, -1)
        if p.elastic:
            grid = grid + self._elastic_field(n, height, width, dev) * bend[:, None, None, None]
        grid = torch.einsum("nij,nhwj->nhwi", a, grid) + b[:, None, None, :]
        # torchvision fills with 0 through a coverage channel that it multiplies in once more,
        # which darkens the border band a little further; do the same, for the same images.
        stacked = torch.cat([image, torch.ones_like(image)], dim=1)
        sampled = nnf.grid_sample(
            stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        image = sampled[:, :1] * sampled[:, 1:]
        mask = nnf.grid_sample(
            mask, grid, mode="nearest", padding_mode="zeros", align_corners=False
        )
        return image, mask

    def _crop_boxes(
        self, n: int, height: int, width: int, dev
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """torchvision's RandomResizedCrop draw, vectorised: (scale, offset) per image, (n, 2)."""
        area = height * width
        target = area * self._uniform(*CROP_SCALE, n, CROP_ATTEMPTS, device=dev)
        log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
        aspect = torch.exp(self._uniform(log_low, log_high, n, CROP_ATTEMPTS, device=dev))
        w = torch.round(torch.sqrt(target * aspect))
        h = torch.round(torch.sqrt(target / aspect))
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = torch.argmax(ok.int(), dim=1)  # the first attempt that fits
        found = ok.any(dim=1)
        w = torch.gather(w, 1, first[:, None])[:, 0]
        h = torch.gather(h, 1, first[:, None])[:, 0]
        w = torch.where(
            found, w, torch.full_like(w, float(width))
        )  # square ratios: the whole image
        h = torch.where(found, h, torch.full_like(h, float(height)))
        top = torch.floor(self._rand(n, device=dev) * (height - h + 1))
        left = torch.floor(self._rand(n, device=dev) * (width - w + 1))
        top = torch.where(found, top, torch.floor((height - h) / 2))
        left = torch.where(found, left, torch.floor((width - w) / 2))
        scale = torch.stack([w / width, h / height], -1)
        offset = torch.stack([(2 * left + w) / width - 1, (2 * top + h) / height - 1], -1)
        return scale, offset

    def _elastic_field(self, n: int, height: int, width: int, dev) -> torch.Tensor:
        """`SmoothElastic`'s field for n images: (n, H, W, 2) offsets in grid units."""
        cells = max(8, math.ceil(2 / ELASTIC_SMOOTHNESS))
        noise = torch.randn((n, 2, cells, cells), generator=self._generator, device=dev)
        noise = _gaussian_blur(noise, torch.full((n,), 2.0, device=dev), 13)
        field = nnf.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False)
        rms = field.pow(2).mean(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        scale = ELASTIC_DISPLACEMENT * (0.5 + self._rand(n, device=dev))
        return (2 * scale[:, None, None, None] * field / rms).permute(0, 2, 3, 1)

    # ------------------------------------------------------------------ intensity

    def _photometric(self, image: torch.Tensor) -> torch.Tensor:
        p, dev, n = self.p, image.device, image.shape[0]
        if p.jitter:
            jitter = self._fires(p.jitter, n, dev)[:, None, None, None]
            bright = self._uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS, n, device=dev)[
                :, None, None, None
            ]
            contrast = self._uniform(1 - CONTRAST, 1 + CONTRAST, n, device=dev)[:, None, None, None]
            contrast_first = (self._rand(n, device=dev) < 0.5)[:, None, None, None]

            def brighten(x: torch.Tensor) -> torch.Tensor:
                return (x * bright).clamp(0.0, 1.0)

            def contrasted(x: torch.Tensor) -> torch.Tensor:
                mean = x.mean(dim=(1, 2, 3), keepdim=True)
                return (contrast * x + (1 - contrast) * mean).clamp(0.0, 1.0)

            jittered = torch.where(
                contrast_first, brighten(contrasted(image)), contrasted(brighten(image))
            )
            image = torch.where(jitter, jittered, image)
        if p.gamma:
            fires = self._fires(p.gamma, n, dev)[:, None, None, None]
            low, high = math.log(GAMMA[0]), math.log(GAMMA[1])
            gamma = torch.exp(self._uniform(low, high, n, device=dev))[:, None, None, None]
            image = torch.where(fires, image.clamp_min(0.0).pow(gamma), image)
        return image

    def _noise(self, image: torch.Tensor) -> torch.Tensor:
        p, dev, n = self.p, image.device, image.shape[0]
        if p.artifacts:
            fires = self._fires(p.artifacts, n, dev)
            image = torch.where(
                fires[:, None, None, None],
                torch.maximum(image, self._artifacts(n, *image.shape[-2:], dev)[:, None]),
                image,
            )
        if p.blur:
            fires = self._fires(p.blur, n, dev)[:, None, None, None]
            low, high = (s * self.size / 256 for s in BLUR_SIGMA_AT_256)
            kernel = 2 * math.ceil(3 * high) + 1
            sigma = self._uniform(max(low, 0.1), max(high, 0.1), n, device=dev)
            image = torch.where(fires, _gaussian_blur(image, sigma, kernel), image)
        if p.noise:
            fires = self._fires(p.noise, n, dev)[:, None, None, None]
            sigmas = torch.tensor(NOISE_SIGMAS, device=dev)
            choice = torch.floor(self._rand(n, device=dev) * len(NOISE_SIGMAS)).long()
            sigma = sigmas[choice.clamp_max(len(NOISE_SIGMAS) - 1)][:, None, None, None]
            noise = torch.randn(image.shape, generator=self._generator, device=dev)
            image = torch.where(fires, (image + sigma * noise).clamp(0.0, 1.0), image)
        return image

    def _artifacts(self, n: int, height: int, width: int, dev) -> torch.Tensor:
        """(n, H, W) overlays of 1-3 bright curves and 0-4 bright blocks, as SyntheticArtifacts."""
        side = min(height, width)
        lines = self._curves(n, height, width, dev)
        counts = torch.floor(self._rand(n, device=dev) * MAX_LINES).long() + 1
        active = torch.arange(MAX_LINES, device=dev)[None, :] < counts[:, None]  # (n, lines)
        overlay = (lines * active[:, :, None, None]).amax(dim=1)
        markers = torch.floor(self._rand(n, device=dev) * (MAX_MARKERS + 1)).long()
        rows = torch.arange(height, device=dev, dtype=torch.float32)
        cols = torch.arange(width, device=dev, dtype=torch.float32)
        for k in range(MAX_MARKERS):
            h = torch.clamp(torch.round(self._uniform(*MARKER_SIZE, n, device=dev) * side), min=2)
            aspect = self._uniform(*MARKER_ASPECT, n, device=dev)
            w = torch.clamp(torch.clamp(torch.round(h * aspect), min=2), max=float(width))
            top = torch.floor(self._rand(n, device=dev) * (height - h + 1))
            left = torch.floor(self._rand(n, device=dev) * (width - w + 1))
            level = self._uniform(*INTENSITY, n, device=dev) * (k < markers).float()
            inside_r = (rows[None] >= top[:, None]) & (rows[None] < (top + h)[:, None])
            inside_c = (cols[None] >= left[:, None]) & (cols[None] < (left + w)[:, None])
            block = (inside_r[:, :, None] & inside_c[:, None, :]).float() * level[:, None, None]
            overlay = torch.maximum(overlay, block)
        return overlay

    def _curves(self, n: int, height: int, width: int, dev) -> torch.Tensor:
        """(n, MAX_LINES, H, W): quadratic Beziers of random width and brightness."""
        side = min(height, width)
        scale = torch.tensor([width - 1, height - 1], device=dev, dtype=torch.float32)
        control = self._rand(n, MAX_LINES, 3, 2, device=dev) * scale  # p0, p1, p2
        points = 4 * (height + width)
        t = torch.linspace(0, 1, points, device=dev)[None, None, :, None]
        p0, p1, p2 = control[:, :, 0:1], control[:, :, 1:2], control[:, :, 2:3]
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # (n, lines, points, 2)
        cols = curve[..., 0].round().long().clamp(0, width - 1)
        rows = curve[..., 1].round().long().clamp(0, height - 1)
        planes = torch.zeros(n * MAX_LINES, height * width, device=dev)
        planes.scatter_(1, (rows * width + cols).reshape(n * MAX_LINES, -1), 1.0)
        planes = planes.view(n * MAX_LINES, 1, height, width)
        thickness = torch.clamp(
            torch.round(self._uniform(*LINE_WIDTH, n * MAX_LINES, device=dev) * side),
            min=1,
        ).long()
        kernel = torch.where(thickness > 1, thickness | 1, torch.ones_like(thickness))
        out = planes
        # The few kernel sizes the width range allows, known on the host: no device sync.
        widths = range(max(1, round(LINE_WIDTH[0] * side)), round(LINE_WIDTH[1] * side) + 1)
        for k in sorted({w | 1 for w in widths if w > 1}):
            chosen = (kernel == k)[:, None, None, None]
            out = torch.where(chosen, nnf.max_pool2d(planes, k, stride=1, padding=k // 2), out)
        level = self._uniform(*INTENSITY, n * MAX_LINES, device=dev)
        return (out[:, 0] * level[:, None, None]).view(n, MAX_LINES, height, width)


def _identity_grid(height: int, width: int, dev) -> torch.Tensor:
    """(1, H, W, 2) pixel-centre coordinates in [-1, 1] (align_corners=False), x first."""
    xs = torch.linspace((1 - width) / width, (width - 1) / width, width, device=dev)
    ys = torch.linspace((1 - height) / height, (height - 1) / height, height, device=dev)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], -1)[None]


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur of (n, C, H, W) with one sigma per image, reflect padding."""
    n, channels, height, width = x.shape
    half = (kernel - 1) * 0.5
    pos = torch.linspace(-half, half, kernel, device=x.device)
    weights = torch.exp(-0.5 * (pos[None] / sigma[:, None]) ** 2)
    weights = weights / weights.sum(dim=1, keepdim=True)  # (n, k)
    weights = weights.repeat_interleave(channels, dim=0)  # one kernel per (image, channel)
    flat = x.reshape(1, n * channels, height, width)
    pad = kernel // 2
    flat = nnf.pad(flat, (pad, pad, 0, 0), mode="reflect")
    flat = nnf.conv2d(flat, weights[:, None, None, :], groups=n * channels)
    flat = nnf.pad(flat, (0, 0, pad, pad), mode="reflect")
    flat = nnf.conv2d(flat, weights[:, None, :, None], groups=n * channels)
    return flat.view(n, channels, height, width)


def _check_batch(image: torch.Tensor, mask: torch.Tensor) -> None:
    for name, t in (("image", image), ("mask", mask)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[1] != 1:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(
                f"batch augmentation {name} must be a (B, 1, H, W) tensor, got {shape}; "
                "it augments whole batches (use PairTransform for single images)"
            )
    if image.shape != mask.shape:
        raise ValueError(
            f"image batch {tuple(image.shape)} and mask batch {tuple(mask.shape)} differ in shape"
        )


def build_batch_augment(strategy: str, size: int, seed: int = 0) -> BatchAugment | None:
    """The batch form of strategy `strategy`; None for `none` (nothing to do)."""
    augment = BatchAugment(strategy, size, seed)
    return None if strategy == "none" else augment
