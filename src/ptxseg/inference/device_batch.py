"""The device half of a `predict` batch: decoding on the GPU, masks made there, bits copied back.

With the torch runtime on a GPU, the readers hand on the JPEG Baseline frame of a DICOM; here a
batch of frames is decoded by nvJPEG and resized on the device (`ptxseg.data.device_images`), the
model runs there (`Predictor.probabilities_on_device`), the full-size masks are made there
(`full_size_masks_on_device`) and packed to bits, and their copy back to pinned host memory
starts while the main loop launches the next batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg.inference.workers import ReadResult, read_input


@dataclass
class Batch:
    """A batch on its way: the files, and what the model made of them (or will, on a GPU)."""

    items: list[tuple[Path, ReadResult]]
    shapes: list[tuple[int, int]]
    inputs_host: np.ndarray | None = None  # uint8 (B, S, S), for explanations
    probs: np.ndarray | None = None  # CPU path: model-size probabilities
    packed: Any = None  # device path: pinned host copy of the packed masks
    offsets: list[int] = field(default_factory=list)
    peaks: Any = None
    ready: Any = None  # CUDA event recorded after the copies back


def use_device_decoder(predictor, decode: str) -> bool:
    """Whether images are decoded and resized in batches on the model's device
    (`ptxseg.data.device_images.choose_decoder`)."""
    from ptxseg.data.device_images import choose_decoder

    return choose_decoder(decode, predictor.device, predictor.runtime) is not None


def launch_on_device(
    predictor, items, fail, max_pixels: int, explain: bool = False
) -> Batch | None:
    """Decode and resize a batch's frames on the model's device (nvJPEG on CUDA; an image the
    device cannot decode goes through the CPU's own reader), run the model and make the
    full-size masks there, and start copying them back: the GPU half of the main loop."""
    import torch

    from ptxseg.data.device_images import decode_to_inputs
    from ptxseg.inference.predictor import full_size_masks_on_device

    size = predictor.input_size
    framed = [i for i, (_, read) in enumerate(items) if read.frame is not None]
    got = decode_to_inputs(
        [items[i][1].frame for i in framed],
        [tuple(items[i][1].shape) for i in framed],
        [items[i][1].invert for i in framed],
        size,
        torch.device(predictor.device),
    )
    singles: dict[int, Any] = {}
    for k in got.refused:  # the CPU's own reader
        path = items[framed[k]][0]
        again = read_input(str(path), size, keep_frame=False, max_pixels=max_pixels)
        if again.error is not None:
            fail(path, again.error)
            continue
        items[framed[k]] = (path, again)
    where = [framed[k] for k in got.decoded]
    small = got.inputs
    kept = [i for i, (_, read) in enumerate(items) if i in where or read.model_input is not None]
    if not kept:
        return None
    if kept == where:  # the usual batch: every image decoded here, in order
        inputs = small
    else:
        singles.update({i: small[k : k + 1] for k, i in enumerate(where)})
        host = [i for i in kept if i not in singles]
        if host:
            uploaded = predictor.upload(np.stack([items[i][1].model_input for i in host]))
            singles.update({i: uploaded[k : k + 1] for k, i in enumerate(host)})
        inputs = torch.cat([singles[i] for i in kept])
    items = [items[i] for i in kept]
    shapes = [tuple(read.shape) for _, read in items]
    probs = predictor.probabilities_on_device(inputs)
    masks, peaks = full_size_masks_on_device(probs, shapes, predictor.operating_point)
    packed = pack_bits_many(masks)
    batch = Batch(items, shapes)
    batch.offsets = np.cumsum([0] + [(h * w + 7) // 8 for h, w in shapes]).tolist()
    batch.packed, batch.peaks, batch.ready = _copy_back(packed, peaks.float())
    if explain:
        batch.inputs_host = inputs.cpu().numpy()
    return batch


def pack_bits(mask):
    """`np.packbits(mask.ravel())` of a bool torch tensor, computed on its device."""
    import torch

    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.pow(2, torch.arange(7, -1, -1, device=flat.device)).to(torch.int32)
    return (flat.view(-1, 8).to(torch.int32) * weights).sum(1).to(torch.uint8)


def pack_bits_many(masks):
    """The `pack_bits` of each mask, one after the other: in one pass when every mask's pixel
    count is a multiple of 8 (any width that is), so a batch costs a few kernels, not a few
    per image."""
    import torch

    if not masks:
        raise ValueError("pack_bits_many needs at least one mask")
    if any(m.numel() % 8 for m in masks):
        return torch.cat([pack_bits(m) for m in masks])
    return pack_bits(torch.cat([m.reshape(-1) for m in masks]))


def _copy_back(*tensors):
    """Asynchronous copies of device tensors into pinned host memory, and an event when done."""
    import torch

    if tensors[0].device.type != "cuda":
        return (*(t.cpu() for t in tensors), None)
    hosts = []
    for t in tensors:
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        hosts.append(host)
    event = torch.cuda.Event()
    event.record()
    return (*hosts, event)
