"""Training throughput: the real data loader against the model alone, per encoder, in one run.

For each encoder the same model takes `steps` training steps (forward, backward, Adam) fed by
the real pipeline (memory-mapped cache + augmentation + positive-fraction sampler + DataLoader
workers) and fed one batch already in memory. The model-alone block runs before and after the
loader block and the two are averaged, so a load that drifts during the run cancels out. The
ratio of the two speeds shows how much of the training time the loader costs. A failing encoder
becomes an `error` cell instead of ending the run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptxseg.benchmarks.common import device_sync, error_text, timed, write_table

COLUMNS: dict[str, str] = {
    "encoder": "Encoder",
    "size": "Size",
    "batch_size": "Batch",
    "workers": "Workers",
    "aug": "Augmentation",
    "device": "Device",
    "steps": "Steps",
    "loader_images_per_s": "With loader (img/s)",
    "model_images_per_s": "Model alone (img/s)",
    "ratio": "Ratio",
    "loader_overhead_pct": "Loader overhead (%)",
    "error": "Error",
}


def _timed_steps(step: Callable[[dict], None], batches, steps: int, warmup: int, device) -> float:
    """Seconds for `steps` steps after `warmup` untimed ones; `batches` is an iterator."""
    timing = timed(
        lambda: step(next(batches)), warmup=warmup, repeats=steps, sync=device_sync(device)
    )
    return sum(timing.seconds)


@dataclass(frozen=True)
class TrainingBenchSettings:
    """How every encoder of one run is fed and timed."""

    size: int = 256
    batch_size: int = 8
    steps: int = 10
    workers: int = 2
    aug: str = "full"
    positive_fraction: float | None = 0.5
    device: str = "auto"
    warmup: int = 2
    seed: int = 0


def measure_encoder(encoder: str, work: str | Path, s: TrainingBenchSettings) -> dict[str, Any]:
    """One row: images/s with the real loader and with the model alone on in-memory tensors."""
    import itertools

    import torch

    dev = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if s.device == "auto" else s.device
    )
    step = _training_step(encoder, s, dev)
    loader = _training_loader(work, s, dev)
    # Model alone, with the loader, model alone again (A-B-A): averaging the two model blocks
    # cancels a load that drifts during the run on a shared machine.
    first = next(iter(loader))
    in_memory = {k: v.to(dev) for k, v in first.items() if k in ("image", "mask")}
    model_a = _timed_steps(step, itertools.repeat(in_memory), s.steps, s.warmup, dev)
    loader_s = _timed_steps(step, iter(loader), s.steps, s.warmup, dev)
    model_b = _timed_steps(step, itertools.repeat(in_memory), s.steps, 0, dev)
    model_s = (model_a + model_b) / 2
    loader_ips = s.steps * s.batch_size / loader_s
    model_ips = s.steps * s.batch_size / model_s
    ratio = loader_ips / model_ips
    return {
        "loader_images_per_s": round(loader_ips, 2),
        "model_images_per_s": round(model_ips, 2),
        "ratio": round(ratio, 3),
        "loader_overhead_pct": round(100.0 * (1.0 - ratio), 1),
        "device": str(dev),
    }


def _training_step(encoder: str, s: TrainingBenchSettings, dev) -> Callable[[dict], None]:
    """One training step (forward, loss, backward, Adam) of a random-weight `encoder` U-Net."""
    import torch

    from ptxseg.config import load_config
    from ptxseg.model.losses import build_loss
    from ptxseg.model.random_weights import random_unet_overrides
    from ptxseg.model.unet import build_model

    config = load_config(overrides=random_unet_overrides(encoder, s.size))
    torch.manual_seed(s.seed)
    model = build_model(config).to(dev).train()
    loss_fn = build_loss(config.loss)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(batch: dict) -> None:
        image = batch["image"].to(dev, non_blocking=True)
        mask = batch["mask"].to(dev, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(image), mask).backward()
        optimizer.step()

    return step


def _training_loader(work: str | Path, s: TrainingBenchSettings, dev):
    """The real loader: cache, augmentation, positive-fraction sampler, DataLoader workers."""
    import numpy as np
    from torch.utils.data import DataLoader

    from ptxseg.data.dataset import PositiveFractionSampler, SegmentationDataset
    from ptxseg.training.module import loader_transform

    dataset = SegmentationDataset(work, "train", s.size, loader_transform(s.aug, s.size))
    samples = (s.steps + s.warmup) * s.batch_size
    sampler = PositiveFractionSampler(
        np.asarray(dataset.has_pneumothorax), s.positive_fraction, samples, s.seed
    )
    return DataLoader(
        dataset,
        batch_size=s.batch_size,
        sampler=sampler,
        num_workers=s.workers,
        pin_memory=dev.type == "cuda",
        drop_last=True,
    )


def run_training_benchmark(
    work: str | Path,
    encoders: Sequence[str],
    settings: TrainingBenchSettings = TrainingBenchSettings(),
    on_row: Callable[[dict], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per encoder; exceptions become the row's `error` instead of ending the run."""
    s = settings
    rows = []
    for encoder in encoders:
        row: dict[str, Any] = {
            "encoder": encoder,
            "size": s.size,
            "batch_size": s.batch_size,
            "workers": s.workers,
            "aug": s.aug,
            "steps": s.steps,
            "device": s.device,
        }
        try:
            row.update(measure_encoder(encoder, work, s))
        except Exception as error:  # noqa: BLE001  (a benchmark reports, it does not stop)
            row["error"] = error_text(error)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


SHORT_COLUMNS = {
    "encoder": "encoder",
    "device": "device",
    "loader_images_per_s": "loader img/s",
    "model_images_per_s": "alone img/s",
    "ratio": "ratio",
    "loader_overhead_pct": "overhead %",
    "error": "error",
}


def training_terminal_table(rows: Sequence[dict], title: str):
    """The rows as a rich table under SHORT_COLUMNS (empty columns left out)."""
    from rich.table import Table

    table = Table(title=title)
    keys = [k for k in SHORT_COLUMNS if any(str(r.get(k, "")) != "" for r in rows)]
    for key in keys:
        table.add_column(SHORT_COLUMNS[key])
    for row in rows:
        table.add_row(*(str(row.get(k, "")) for k in keys))
    return table


def write_training_benchmark(rows: Sequence[dict], out_dir: str | Path) -> dict[str, Path]:
    """`training_benchmark.csv` and `training_benchmark.md` in `out_dir`."""
    notes = (
        "Both columns time the same training steps (forward, backward, Adam) after warm-up;"
        " model alone is the mean of a block before and a block after the loader block."
        " *With loader*: batches come from the cache through augmentation, the positive-fraction"
        " sampler and DataLoader workers. *Model alone*: one batch already on the device."
        " Ratio = with loader / alone; loader overhead = 1 - ratio (share of the time lost to"
        " loading)."
    )
    return write_table(
        out_dir,
        "training_benchmark",
        "Training throughput: data loader vs model alone",
        COLUMNS,
        rows,
        baseline="the same encoder's model-alone steps (column Ratio)",
        notes=notes,
    )
