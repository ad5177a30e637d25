"""What `ptxseg predict`'s pipeline sustains around the model: readers, main loop and writers.

A stand-in model (constant logits at the model's input size, next to nothing to compute) takes
the network's place in the real `predict_files`, so a run measures everything else: parsing the
DICOMs, decoding and resizing them (on the GPU with nvJPEG, or in the reader processes),
making the full-size masks, the messages between processes and the writers. If this cannot
reach a target rate on a machine, no model will; if it can, the model (or its compilation) is
what bounds `predict` there. `ptxseg benchmark-gpu --stages pipeline` runs it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


class StandInModel(nn.Module):
    """Logits -8 everywhere (every mask empty) or +8 in one box (a lesion-like region covering
    about 4% of the image), whatever the input."""

    def __init__(self, input_size: int, lesion: bool) -> None:
        super().__init__()
        logits = torch.full((1, 1, input_size, input_size), -8.0)
        if lesion:
            a, b = input_size // 5, input_size // 5 + input_size // 5
            logits[..., a:b, a:b] = 8.0
        self.register_buffer("pattern", logits)
        self.input_size = input_size
        self.encoder = "stand-in"
        self.config = {"encoder": "stand-in", "size": input_size}
        self.operating_point = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # tied to the input, so that the batch really goes through the device
        return self.pattern.expand(x.shape[0], -1, -1, -1) + 0.0 * x[:, :1, :1, :1]


@dataclass(frozen=True)
class PipelineRun:
    """One row of the pipeline table: the stand-in's size and masks, and how predict runs."""

    size: int
    device: str
    batch_size: int
    workers: int
    per_task: int  # files a reader or writer process gets per message
    lesion: bool  # one lesion-like box in every mask (else every mask empty)
    stub_device: bool = False  # the device path with its tensor work replaced by zeros


def measure_pipeline(inputs: list[Path], work: Path, run: PipelineRun) -> dict[str, Any]:
    """One `predict_files` run over `inputs` with the stand-in model: a row for the table.

    The pool is warmed up on the first batches first; main_cpu_ms_per_image is the CPU time of
    this process (its threads included) per image: the main loop's own cost. `stub_device`
    takes the device path (readers parse, the main process batches) with its tensor work
    replaced by ready-made zeros (`stubbed_device_work`): on a CPU, what the main loop costs
    when a GPU does that work."""
    from contextlib import nullcontext

    from ptxseg.inference.device_batch import use_device_decoder
    from ptxseg.inference.main_loop import Workers, predict_files
    from ptxseg.inference.predictor import Predictor

    model = StandInModel(run.size, run.lesion)
    predictor = Predictor(model, device=run.device, batch_size=run.batch_size)
    on_device = run.stub_device or use_device_decoder(predictor, "auto")
    options = dict(outputs=("mask", "findings"), decode="device" if on_device else "cpu")
    stubs = stubbed_device_work(run.size) if run.stub_device else nullcontext()
    with stubs, Workers(run.workers, device_decode=on_device) as pool:
        warm, out = work / "warm", work / "out"
        for folder in (warm, out):
            shutil.rmtree(folder, ignore_errors=True)
        first = inputs[: 2 * run.batch_size]
        predict_files(predictor, first, warm, pool=pool, progress=False, **options)
        cpu = time.process_time()
        result = predict_files(
            predictor, inputs, out, pool=pool, progress=False, per_task=run.per_task, **options
        )
        cpu = time.process_time() - cpu
        slots = (pool.read_slots, pool.write_slots)
    positives = sum(1 for row in result.rows if str(row.get("pneumothorax")) == "True")
    return {
        "files_per_task": run.per_task,
        "masks": "one lesion each" if run.lesion else "every one empty",
        "decode": "stubbed" if run.stub_device else "nvJPEG" if on_device else "CPU",
        "images": result.predicted,
        "errors": result.errors,
        "positive_masks": positives,
        "images_per_s": round(result.images_per_s or 0.0, 1),
        "main_cpu_ms_per_image": round(1000 * cpu / max(1, result.predicted), 3),
        "main_loop": format_loop(result.loop_s),
        "reader_processes": slots[0],
        "writer_processes": slots[1],
    }


@contextmanager
def stubbed_device_work(size: int) -> Iterator[None]:
    """Within: the device half of `predict`'s GPU path (decode, resize, the model, full-size
    masks, bit packing) answers with ready-made zeros of the right shapes, so the main loop's own
    cost (messages, batching, handing out) shows on a machine without a GPU."""
    from unittest import mock

    zeros: dict[tuple, torch.Tensor] = {}

    def zero(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        if (shape, dtype) not in zeros:
            zeros[(shape, dtype)] = torch.zeros(shape, dtype=dtype)
        return zeros[(shape, dtype)]

    def decode_frames(frames, device):
        return [zero(jpeg_shape(frame), torch.uint8) for frame in frames]

    def to_model_inputs(images, size, invert=()):
        return zero((len(images), size, size), torch.uint8)

    def probabilities_on_device(self, inputs):
        return zero((inputs.shape[0], self.input_size, self.input_size), torch.float32)

    def full_size_masks_on_device(prob_small, shapes, op):
        return [zero(tuple(shape), torch.bool) for shape in shapes], zero(
            (len(shapes),), torch.float32
        )

    def pack_bits_many(masks):
        return zero((sum((m.numel() + 7) // 8 for m in masks),), torch.uint8)

    with (
        mock.patch("ptxseg.data.device_images.decode_frames", decode_frames),
        mock.patch("ptxseg.data.device_images.to_model_inputs", to_model_inputs),
        mock.patch(
            "ptxseg.inference.predictor.Predictor.probabilities_on_device",
            probabilities_on_device,
        ),
        mock.patch(
            "ptxseg.inference.predictor.full_size_masks_on_device", full_size_masks_on_device
        ),
        mock.patch("ptxseg.inference.device_batch.pack_bits_many", pack_bits_many),
    ):
        yield


def jpeg_shape(frame: bytes) -> tuple[int, int]:
    """(height, width) from a JPEG's start-of-frame segment; (0, 0) when there is none."""
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        at = frame.find(marker)
        if at >= 0 and len(frame) >= at + 9:
            return int.from_bytes(frame[at + 5 : at + 7], "big"), int.from_bytes(
                frame[at + 7 : at + 9], "big"
            )
    return 0, 0


def format_loop(spent: dict[str, float] | None) -> str:
    """`reads 0.2, launch 3.1, device 0.4, hand_out 0.6, writers 9.8`: a run's `loop_s`."""
    return ", ".join(f"{name} {seconds:.1f}" for name, seconds in (spent or {}).items())
