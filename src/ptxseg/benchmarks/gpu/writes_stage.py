"""Stage `writes`: what the writer processes of `predict` sustain alone for empty, lesion-like
and noisy full-size masks (findings, PNG, RLE): the bound of `predict` once reading and the model
keep up. An untrained model's masks are noise, the slowest kind, so this says what `predict`
with a trained model can reach on the same cores."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from typing import Any

import numpy as np

from ptxseg.benchmarks.common import timed
from ptxseg.benchmarks.gpu.bench import StageContext, gpu_stage

NOTES = (
    "One real input's header ({name}); each image: findings (regions, size classes), "
    "the mask PNG, the findings JSON and the RLE, as `predict --outputs mask,findings` "
    "writes them. ms_per_image_one_process: one image in this process; images_per_s: the "
    "writer processes of `predict --workers N --decode device` together, after a warm-up."
)


def sample_masks(shape: tuple[int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Full-size masks of the kinds a model gives: none, one lesion-like region, noise (what an
    untrained model gives: 512 px coin flips scaled up)."""
    import cv2

    height, width = shape
    rng = np.random.default_rng(seed)
    lesion = np.zeros(shape, np.uint8)
    centre = (int(width * 0.3), int(height * 0.3))
    cv2.ellipse(lesion, centre, (width // 9, height // 4), 0, 0, 360, 1, -1)
    noise = cv2.resize(
        (rng.random((512, 512)) > 0.5).astype(np.uint8),
        (width, height),
        interpolation=cv2.INTER_NEAREST,
    )
    return {
        "empty": np.zeros(shape, bool),
        "lesion (one region)": lesion.astype(bool),
        "noise (untrained model)": noise.astype(bool),
    }


@gpu_stage("writes")
def stage_writes(ctx: StageContext) -> None:
    """Images/s of `predict`'s writer pool alone, per kind of mask, outputs mask and findings."""
    from ptxseg.inference.main_loop import Workers
    from ptxseg.inference.workers import WriteTask, read_input
    from ptxseg.model.operating_point import OperatingPoint

    bench, s = ctx.bench, ctx.bench.s
    source = sorted(ctx.data.predict_inputs.glob("*.dcm"))[0]
    read = read_input(str(source), s.size, keep_frame=False)
    if read.error is not None:
        raise ValueError(f"{source}: {read.error}")
    describer = {
        "operating_point": dict(OperatingPoint().to_dict(), applied_tta="none"),
        "encoder": s.encoder,
        "runtime": "torch",
        "precision": "bf16",
    }
    rows: list[dict[str, Any]] = []
    with Workers(s.workers, device_decode=True) as pool:
        for kind, mask in sample_masks(tuple(read.shape)).items():
            out = s.work / "writes" / kind.split()[0]
            shutil.rmtree(out, ignore_errors=True)
            task = WriteTask(
                path=str(source),
                image_id="serial",
                out_dir=str(out),
                outputs=("mask", "findings"),
                meta=read.meta,
                shape=tuple(read.shape),
                describer=describer,
            )
            task.mask_bits, task.peak = np.packbits(mask.ravel()), 0.9
            rows.append({"mask": kind, **_time_writers(pool, task)})
    title = f"predict's writers alone: masks of {read.shape[1]}x{read.shape[0]}, mask and findings"
    bench.write("writes", title, rows, NOTES.format(name=source.name))


def _time_writers(pool, task) -> dict[str, Any]:
    """ms for `task` in this process, then images/s of the writer pool on 16 copies a writer."""
    from ptxseg.inference.workers import write_outputs

    results = []
    # the first call warms imports and caches in this process
    serial = timed(lambda: results.append(write_outputs(task)), warmup=1, repeats=1)
    if results[-1].error is not None:
        return {"error": results[-1].error}
    # one task object per submission: the pool pickles them later, in its own thread
    warm = [replace(task, image_id=f"w{k}") for k in range(pool.write_slots)]
    for future in [pool.writers.submit(write_outputs, t) for t in warm]:
        future.result()  # every writer has imported what it needs
    count = 16 * pool.write_slots
    start = time.perf_counter()
    futures = [
        pool.writers.submit(write_outputs, replace(task, image_id=f"m{k}")) for k in range(count)
    ]
    errors = sum(1 for f in futures if f.result().error is not None)
    seconds = time.perf_counter() - start
    return {
        "ms_per_image_one_process": round(serial.p50 * 1000, 1),
        "writer_processes": pool.write_slots,
        "images": count,
        "errors": errors,
        "images_per_s": round(count / seconds, 1),
    }
