"""Stage `prepare`: the cache of the benchmark's DICOMs written by a CPU process pool and by
nvJPEG with the GPU resize; images/s, and how far the two caches differ."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ptxseg.benchmarks.gpu.bench import StageContext, gpu_stage
from ptxseg.benchmarks.gpu.bench_data import prepare_command

NOTES = (
    "Seconds of the whole command (start-up, headers, split, cache). cache_vs_cpu: largest "
    "difference in gray levels between the two caches and the share of pixels that differ "
    "(nvJPEG and libjpeg-turbo round the inverse DCT differently; the resize itself is "
    "exact at these sizes, see ptxseg.data.device_images)."
)


@gpu_stage("prepare")
def stage_prepare(ctx: StageContext) -> None:
    bench, data, s = ctx.bench, ctx.data, ctx.bench.s
    rows = []
    caches = {}
    for label, device, folder in (
        (f"CPU, {s.workers} processes (OpenCV)", "cpu", s.work / "prepare-cpu"),
        ("nvJPEG + GPU resize", "cuda", data.work),
    ):
        if device == "cuda" and not bench.gpu:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        code, seconds = bench.ptxseg(
            f"prepare-{device}", *prepare_command(data, folder, bench, device)
        )
        row = {"path": label, "images": s.images, "seconds": round(seconds, 2)}
        if code == 0:
            row["images_per_s"] = round(s.images / seconds, 1)
            caches[device] = folder
        else:
            row["error"] = f"exit {code}"
        rows.append(row)
    if "cpu" in caches and not bench.gpu:
        shutil.rmtree(data.work, ignore_errors=True)
        shutil.copytree(caches["cpu"], data.work)
    if len(caches) == 2:
        rows[-1]["cache_vs_cpu"] = _cache_difference(caches["cpu"], caches["cuda"], s.size)
    if len(rows) > 1 and rows[0].get("images_per_s") and rows[-1].get("images_per_s"):
        rows[-1]["x_cpu"] = round(rows[-1]["images_per_s"] / rows[0]["images_per_s"], 2)
    title = f"prepare: {s.images} DICOMs of {s.source_size} px cached at {s.size} px"
    bench.write("prepare", title, rows, NOTES)


def _cache_difference(a: Path, b: Path, size: int) -> str:
    from ptxseg.data.dataset import SPLITS, cache_paths

    worst, differing, total = 0, 0, 0
    for split in SPLITS:
        x = np.load(cache_paths(a, size, split)["images"], mmap_mode="r")
        y = np.load(cache_paths(b, size, split)["images"], mmap_mode="r")
        diff = np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16))
        worst = max(worst, int(diff.max()) if diff.size else 0)
        differing += int((diff > 0).sum())
        total += diff.size
    return f"max {worst}, {differing / max(total, 1):.4%} of pixels"
