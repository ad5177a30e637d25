"""Decode JPEG frames and make model inputs on a torch device (nvJPEG and the GPU on CUDA).

The SIIM radiographs are JPEG Baseline DICOMs at 1024 px. At archive scale the CPU cannot keep a
GPU fed with them (about 300 frames/s per core with libjpeg-turbo), while nvJPEG decodes a batch
at thousands per second. This module is the device half of that path:

- `decode_frames`: a batch of compressed frames -> uint8 (H, W) tensors on the device; nvJPEG
  (`torchvision.io.decode_jpeg(..., device="cuda")`) on CUDA, OpenCV's libjpeg-turbo (exactly
  what `ptxseg.data.dicom` uses) elsewhere. A frame the batch decoder rejects is retried alone,
  so one corrupt file costs its own row, not the batch.
- `choose_decoder`: which device decodes for `--decode auto|device|cpu` (None: the CPU reader).
- `decode_to_inputs`: both steps for a batch, with the frames to hand back to the CPU reader.
- `to_model_inputs`: the same 8-bit model input as `ptxseg.data.preprocess.to_model_input`,
  computed on the device. For the sizes that matter (no resize, or shrinking by 2 or 4 in both
  directions: 1024 px to 512 or 256) it repeats OpenCV's float32 arithmetic operation for
  operation and gives identical bytes. Any other shrink uses exact area weights in float64: it
  can differ from OpenCV by one gray level where the exact value lies on a rounding tie
  (`AREA_TOLERANCE`). Enlarging is left to the CPU path (`needs_cpu_resize`).

nvJPEG and libjpeg-turbo implement the inverse DCT differently, so a frame decoded on the GPU
can differ from the CPU's by a gray level in some pixels; `ptxseg benchmark-gpu` measures how
far the model inputs and the masks of the two paths differ on real files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

EXACT_FACTORS = (1, 2, 4)
"""Integer shrink factors whose OpenCV arithmetic is repeated exactly."""

AREA_TOLERANCE = 1
"""Largest difference in gray levels from `to_model_input` for other shrink factors."""

_INV_255 = np.float32(1 / 255)

DECODERS = ("auto", "device", "cpu")
"""The values of `--decode`: auto (the device when it pays), device (insist), cpu (never)."""


def jpeg_device_available(device: str | torch.device) -> bool:
    """True when `device` is a CUDA device that torchvision's nvJPEG decoder can use."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:  # pragma: no cover - torchvision without image support
        return False
    return True


def choose_decoder(decode: str, device: str, runtime: str = "torch") -> str | None:
    """The torch device that decodes and shrinks the frames, or None for the CPU reader.

    `auto` takes `device` only for the torch runtime on a CUDA device with nvJPEG; `device`
    insists (nvJPEG on CUDA; without CUDA the same batched path on the CPU with libjpeg-turbo,
    which gives the CPU reader's bytes) and needs the torch runtime; `cpu` never.
    """
    if decode not in DECODERS:
        raise ValueError(f"--decode {decode!r}: expected one of {', '.join(DECODERS)}")
    if decode == "cpu":
        return None
    if decode == "device" and runtime != "torch":
        raise ValueError(
            f"--decode device needs the torch runtime (this run uses {runtime}): "
            "use --decode cpu or auto"
        )
    if decode == "auto":
        return str(device) if runtime == "torch" and jpeg_device_available(device) else None
    if torch.device(device).type == "cuda" and not jpeg_device_available(device):
        return "cpu"
    return str(device)


@dataclass
class DeviceInputs:
    """Model inputs of a batch of frames, and the frames the CPU reader must read instead."""

    inputs: torch.Tensor | None  # uint8 (len(decoded), size, size) on the device
    decoded: list[int] = field(default_factory=list)  # the frame of each row of `inputs`
    refused: dict[int, str] = field(default_factory=dict)  # frame -> why the device did not


def decode_to_inputs(
    frames: Sequence[bytes],
    shapes: Sequence[tuple[int, int]],
    inverts: Sequence[bool],
    size: int,
    device: str | torch.device,
) -> DeviceInputs:
    """Decode `frames` in one batch on `device` and shrink them into model inputs there.

    A frame the decoder refuses, or that comes back in another shape than the header's
    `shapes[i]` (or smaller than `size`), is listed in `refused` with the reason: the caller
    reads it with its CPU reader. `inverts[i]` turns frame i over (MONOCHROME1).
    """
    out = DeviceInputs(None)
    images = []
    for i, image in enumerate(decode_frames(frames, device)):
        if isinstance(image, Exception):
            out.refused[i] = str(image)
        elif tuple(image.shape) != tuple(shapes[i]):
            out.refused[i] = f"decoded {tuple(image.shape)}, the header says {tuple(shapes[i])}"
        elif needs_cpu_resize(*image.shape, size):
            out.refused[i] = f"{tuple(image.shape)} is smaller than the model input {size}"
        else:
            out.decoded.append(i)
            images.append(image)
    if images:
        out.inputs = to_model_inputs(images, size, [inverts[i] for i in out.decoded])
    return out


def decode_frames(
    frames: Sequence[bytes], device: str | torch.device
) -> list[torch.Tensor | Exception]:
    """Grayscale uint8 (H, W) tensors on `device`, or the error of a frame that cannot be read."""
    device = torch.device(device)
    if not frames:
        return []
    if device.type != "cuda":
        return [_decode_cpu(frame) for frame in frames]
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(frame), dtype=torch.uint8) for frame in frames]
    try:
        images = decode_jpeg(data, mode=ImageReadMode.GRAY, device=device)
        return [image[0] for image in images]
    except RuntimeError:  # one bad frame fails the batch: find it
        out: list[torch.Tensor | Exception] = []
        for one in data:
            try:
                out.append(decode_jpeg(one, mode=ImageReadMode.GRAY, device=device)[0])
            except RuntimeError as err:
                out.append(ValueError(f"nvJPEG cannot decode the frame: {err}"))
        return out


def _decode_cpu(frame: bytes) -> torch.Tensor | Exception:
    import cv2

    decoded = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_GRAYSCALE)
    if decoded is None:
        return ValueError("the JPEG frame cannot be decoded")
    return torch.from_numpy(decoded)


def needs_cpu_resize(height: int, width: int, size: int) -> bool:
    """True when an image must be enlarged to reach `size` (done by OpenCV on the CPU)."""
    return height < size or width < size


def exact_on_device(height: int, width: int, size: int) -> bool:
    """True when `to_model_inputs` gives exactly the bytes of `to_model_input` for this shape."""
    return height == width and height % size == 0 and height // size in EXACT_FACTORS


def to_model_inputs(images: Sequence[torch.Tensor], size: int, invert: Sequence[bool] = ()):
    """uint8 (B, size, size) model inputs from uint8 (H, W) images on one device.

    `invert[i]` turns image i over (MONOCHROME1) before anything else, as the DICOM reader does.
    Images larger than `size` are shrunk with area averaging; smaller ones are an error (see
    `needs_cpu_resize`).
    """
    if not images:
        raise ValueError("to_model_inputs needs at least one image")
    invert = list(invert) or [False] * len(images)
    out = torch.empty((len(images), size, size), dtype=torch.uint8, device=images[0].device)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        if image.ndim != 2 or image.dtype != torch.uint8:
            raise ValueError(
                f"image {i}: expected a uint8 (H, W) tensor, got {image.dtype} {tuple(image.shape)}"
            )
        if needs_cpu_resize(*image.shape, size):
            raise ValueError(
                f"image {i} is {tuple(image.shape)}, smaller than the model input {size}: "
                "enlarge it on the CPU with ptxseg.data.preprocess.to_model_input"
            )
        groups.setdefault(tuple(image.shape), []).append(i)
    for indices in groups.values():
        batch = torch.stack([images[i] for i in indices])
        for j, i in enumerate(indices):  # rare (MONOCHROME1): no index tensor to upload
            if invert[i]:
                batch[j] = 255 - batch[j]
        small = _shrink_quantised(batch, size)
        if len(indices) == len(images):
            return small
        for j, i in enumerate(indices):
            out[i] = small[j]
    return out


def _shrink_quantised(batch: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, H, W) -> uint8 (B, size, size): image * (1/255), area shrink, * 255 + 0.5, cut."""
    height, width = batch.shape[-2:]
    image = batch.float() * torch.tensor(_INV_255, device=batch.device)
    if (height, width) == (size, size):
        small = image
    elif exact_on_device(height, width, size):
        small = _area_exact(image, height // size)
    else:
        small = _area_weights(image, size)
    # Two float32 operations, as numpy does: `small * 255.0 + 0.5`, then clip and truncate.
    return (small * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)


def _area_exact(image: torch.Tensor, factor: int) -> torch.Tensor:
    """OpenCV's INTER_AREA for an integer factor, in its float32 summation order."""
    n, height, width = image.shape
    blocks = image.view(n, height // factor, factor, width // factor, factor)
    if factor == 2:  # the vectorised 2x2 path: (a + b) + (c + d), times 0.25
        top = blocks[:, :, 0, :, 0] + blocks[:, :, 0, :, 1]
        bottom = blocks[:, :, 1, :, 0] + blocks[:, :, 1, :, 1]
        return (top + bottom) * 0.25
    total = None  # each row's sum left to right, then the rows top to bottom, times 1 / factor²
    for dy in range(factor):
        row = blocks[:, :, dy, :, 0]
        for dx in range(1, factor):
            row = row + blocks[:, :, dy, :, dx]
        total = row if total is None else total + row
    return total * float(np.float32(1 / factor**2))


def area_matrix(source: int, size: int, device=None) -> torch.Tensor:
    """(size, source) float64 weights of area averaging: each row sums to 1."""
    scale = source / size
    starts = torch.arange(size, dtype=torch.float64, device=device)[:, None] * scale
    pixels = torch.arange(source, dtype=torch.float64, device=device)[None, :]
    overlap = torch.clamp(
        torch.minimum(pixels + 1, starts + scale) - torch.maximum(pixels, starts), min=0
    )
    return overlap / scale


def _area_weights(image: torch.Tensor, size: int) -> torch.Tensor:
    """Area averaging as two float64 matrix products (exact weights; see AREA_TOLERANCE)."""
    _, height, width = image.shape
    rows = area_matrix(height, size, image.device)
    cols = area_matrix(width, size, image.device)
    return (rows @ image.double() @ cols.T).float()
