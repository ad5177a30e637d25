"""Stage `train`: `ptxseg train` end to end (real loader, full augmentation, metrics) as it ran
before on a GPU (eager, NCHW, augmentation in loader workers) against today's GPU defaults
(compiled, channels_last, bf16, augmentation on the device), and the same compiled step on a
batch already on the device (the model alone), whose ratio is the loader's overhead."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ptxseg.benchmarks.common import device_sync, error_text, timed
from ptxseg.benchmarks.gpu.bench import Bench, GpuBenchSettings, StageContext, gpu_stage
from ptxseg.benchmarks.gpu.bench_data import ensure_prepared
from ptxseg.util.run_folders import RunFolder

# (row label, run name, extra options)
TRAIN_RUNS = (
    (
        "before: eager, NCHW, augmentation in loader workers",
        "before",
        ("--no-compile", "--no-channels-last", "--augment-on", "loader"),
    ),
    ("now: compiled, channels_last, augmentation on the device", "now", ()),
)
RATE = "train_images_per_s_after_first_epoch"
NOTES = (
    "images_per_s: epoch 2 of 2 ({batches} batches each; epoch 1 includes the "
    "compilation and warm-up), loader waits included, validation excluded "
    "(train_summary.json). loader_overhead_pct = 1 - end to end / model alone. "
    "first_batch_wait_s: the wait for epoch 2's first batch (the loader starting the "
    "epoch, a fixed cost that short epochs feel most); after_first_batch_images_per_s: "
    "epoch 2 from its first batch in hand; overhead_after_first_batch_pct: the same "
    "ratio as loader_overhead_pct from there."
)


@gpu_stage("train")
def stage_train(ctx: StageContext) -> None:
    """The table; the `now` run's model becomes the model of the stages after this one."""
    bench, s = ctx.bench, ctx.bench.s
    work = ensure_prepared(bench, ctx.data)
    precision = "bf16-mixed" if bench.gpu else "32"
    rows, summaries = [], {}
    for label, name, extra in TRAIN_RUNS:
        args = [*_train_options(s, work), "--precision", precision, *extra]
        row, summary = _train_run(bench, label, name, args)
        rows.append(row)
        if summary is not None:
            summaries[name] = summary
    before = summaries.get("before", {}).get(RATE)
    now = summaries.get("now", {}).get(RATE)
    if before and now:
        rows[1]["x_before"] = round(now / before, 2)
    rows.append(_model_alone_row(bench, work, summaries.get("now", {})))
    bench.write(
        "train",
        f"ptxseg train end to end: U-Net-{s.encoder}, {s.size} px, batch {s.batch_size}, "
        f"{precision}, full augmentation",
        rows,
        NOTES.format(batches=s.train_batches),
    )
    model = s.work / "train-now" / "model"
    if (model / "ptxseg.json").is_file():
        ctx.model = model


def _train_options(s: GpuBenchSettings, work: Path) -> list[Any]:
    """The options both training runs share."""
    return [
        "--data",
        work,
        "--encoder",
        s.encoder,
        "--encoder-weights",
        "none",
        "--size",
        s.size,
        "--batch-size",
        s.batch_size,
        "--epochs",
        2,
        "--limit-batches",
        s.train_batches,
        "--workers",
        min(s.workers, 16),
        "--aug",
        "full",
        "--positive-fraction",
        0.5,
        "--lr",
        1e-3,
        "--no-progress",
    ]


def _train_run(bench: Bench, label: str, name: str, args: list[Any]) -> tuple[dict, dict | None]:
    """One `ptxseg train` in a fresh process: its row, and its train_summary.json if it ran."""
    run_dir = bench.s.work / f"train-{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    code, seconds = bench.ptxseg(f"train-{name}", "train", *args, "--out", run_dir)
    row: dict[str, Any] = {"run": label, "seconds": round(seconds, 1)}
    summary_path = RunFolder(run_dir).train_summary
    if code != 0 or not summary_path.is_file():
        row["error"] = f"exit {code}"
        return row, None
    summary = json.loads(summary_path.read_text())
    row.update(
        images_per_s=summary.get(RATE),
        after_first_batch_images_per_s=last(summary.get("epoch_images_per_s_after_first_batch")),
        first_batch_wait_s=last(summary.get("epoch_first_batch_s")),
        first_epoch_images_per_s=(summary.get("epoch_images_per_s") or [None])[0],
        peak_gpu_mb=summary.get("peak_gpu_mb"),
        device=summary.get("device"),
        precision=summary.get("precision"),
    )
    return row, summary


def _model_alone_row(bench: Bench, work: Path, now: dict) -> dict[str, Any]:
    """Today's step on a batch already on the device, and the loader's share against it."""
    try:
        if bench.elapsed() > bench.s.budget_s:
            raise TimeoutError("skipped: the time budget is spent")
        alone = model_alone_rate(work, bench.s, bench.gpu)
    except Exception as err:  # noqa: BLE001 - the row says what failed
        return {"run": "model alone", "error": error_text(err)}
    row: dict[str, Any] = {"run": "now, model alone (one batch on the device, augmented there)"}
    row.update(images_per_s=round(alone, 1))
    if now.get(RATE):
        row["loader_overhead_pct"] = round(100 * (1 - now[RATE] / alone), 1)
    steady = last(now.get("epoch_images_per_s_after_first_batch"))
    if steady:
        row["overhead_after_first_batch_pct"] = round(100 * (1 - steady / alone), 1)
    return row


def last(values: list | None) -> Any:
    """The last of a per-epoch list (the steady epoch), or None."""
    return values[-1] if values else None


def model_alone_rate(work: Path, s: GpuBenchSettings, gpu: bool, steps: int = 20) -> float:
    """Images/s of today's training step on one batch that stays on the device."""
    import torch

    from ptxseg.config import load_config
    from ptxseg.data.dataset import SegmentationDataset
    from ptxseg.model.acceleration import use_fast_float32
    from ptxseg.model.random_weights import random_unet_overrides
    from ptxseg.training.batch_augment import BatchAugment
    from ptxseg.training.fit import resolve_device_defaults
    from ptxseg.training.module import SegmentationModule

    device = torch.device(s.device)
    overrides = {
        **random_unet_overrides(s.encoder, s.size),
        "data.work": str(work),
        "trainer.accelerator": "gpu" if gpu else "cpu",
        "trainer.precision": "bf16-mixed" if gpu else "32",
    }
    config = resolve_device_defaults(load_config(overrides=overrides))
    use_fast_float32(device)
    module = SegmentationModule(config).to(device)
    module.setup("fit")
    augment = BatchAugment(config.data.aug, s.size)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4, fused=gpu or None)
    dataset = SegmentationDataset(work, "train", s.size)
    items = [dataset[i % len(dataset)] for i in range(s.batch_size)]
    image = torch.stack([it["image"] for it in items]).to(device)
    mask = torch.stack([it["mask"] for it in items]).to(device)

    def step() -> None:
        x, y = augment(image, mask)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
            loss, _, _ = module.step_outputs(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    timing = timed(step, s.batch_size, warmup=3, repeats=steps, sync=device_sync(device))
    return timing.mean_rate
