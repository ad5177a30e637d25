"""Backbone benchmark: size, compute, speed and memory of each encoder, side by side in one run.

Inference is timed through the `Predictor` (the path that predict and serve run: 8-bit input,
normalisation inside the model, sigmoid). Each configuration is measured in a fresh subprocess
(spawned, not forked) so that one model's allocations cannot inflate the next one's memory
figure, and a crash in one configuration becomes an `error` cell in its row instead of ending the
run (the habit of timm's benchmark.py). Throughput ratios are taken against a named baseline
encoder at the same precision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

from ptxseg.benchmarks.common import (
    add_ratios,
    device_sync,
    error_text,
    read_table_csv,
    timed,
    write_table,
)
from ptxseg.model.random_weights import random_unet
from ptxseg.util import atomic
from ptxseg.util.system import peak_rss_mb, rss_now_mb

PRECISIONS = ("fp32", "bf16")

# Column name -> header shown in the Markdown and rich tables.
COLUMNS: dict[str, str] = {
    "encoder": "Encoder",
    "size": "Size",
    "batch_size": "Batch",
    "device": "Device",
    "precision": "Precision",
    "compile": "Compiled",
    "params_m": "Params (M)",
    "gflops_per_image": "GFLOPs/img",
    "latency_p50_ms": "Infer p50 (ms/batch)",
    "latency_p95_ms": "Infer p95 (ms/batch)",
    "images_per_s": "Images/s",
    "speedup": "x baseline",
    "infer_mem_mb": "Infer mem (MB)",
    "train_step_ms": "Train step (ms)",
    "train_mem_mb": "Train mem (MB)",
    "mem_kind": "Memory measure",
    "error": "Error",
}

# Short headers for the terminal table.
SHORT_COLUMNS: dict[str, str] = {
    "encoder": "encoder",
    "precision": "prec",
    "compile": "compiled",
    "params_m": "params M",
    "gflops_per_image": "GFLOP/img",
    "latency_p50_ms": "p50 ms",
    "latency_p95_ms": "p95 ms",
    "images_per_s": "img/s",
    "speedup": "x base",
    "infer_mem_mb": "infer MB",
    "train_step_ms": "train ms",
    "train_mem_mb": "train MB",
    "error": "error",
}


@dataclass(frozen=True)
class BenchConfig:
    """One row of the benchmark: an encoder at one input size, batch, device and precision."""

    encoder: str
    size: int = 256
    batch_size: int = 4
    device: str = "cpu"
    precision: str = "fp32"
    warmup: int = 3
    iters: int = 10
    threads: int | None = None
    train: bool = True  # also time a training step (forward + backward + Adam)
    compile: bool = False  # torch.compile the model, channels_last (the GPU path)

    def __post_init__(self) -> None:
        if self.size % 32 != 0 or self.size <= 0:
            raise ValueError(f"size {self.size} is not a positive multiple of 32 (U-Net needs it)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.batch_size < 1 or self.iters < 1 or self.warmup < 0:
            raise ValueError("batch_size and iters must be >= 1 and warmup >= 0")


def compile_modes(choice: str, device: str) -> list[str]:
    """`off`, `on` or `off,on`; `auto`: both on a GPU, off on the CPU."""
    if choice == "auto":
        choice = "off,on" if device.startswith("cuda") else "off"
    modes = [m.strip() for m in choice.split(",") if m.strip()]
    if not modes or set(modes) - {"off", "on"}:
        raise ValueError(f"--compile {choice!r}: expected off, on, off,on or auto")
    return modes


def backbone_configs(
    encoders: Sequence[str], precisions: Sequence[str], modes: Sequence[str], template: BenchConfig
) -> list[BenchConfig]:
    """Every encoder x precision x compile mode, the rest as in `template` (ValueError names a
    value that cannot run)."""
    return [
        replace(template, encoder=encoder, precision=precision, compile=mode == "on")
        for mode in modes
        for precision in precisions
        for encoder in encoders
    ]


def terminal_table(rows: Sequence[dict], title: str):
    """The rows as a rich table under SHORT_COLUMNS (empty columns left out)."""
    from rich.table import Table

    table = Table(title=title)
    keys = [k for k in SHORT_COLUMNS if any(str(r.get(k, "")) != "" for r in rows)]
    for key in keys:
        table.add_column(
            SHORT_COLUMNS[key], justify="left" if key in ("encoder", "error") else "right"
        )
    for row in rows:
        table.add_row(*(str(row.get(k, ""))[:50] for k in keys))
    return table


def count_gflops_per_image(model, size: int, device: str = "cpu") -> float:
    """Forward-pass GFLOPs for one image, counted by torch's FlopCounterMode (2 FLOPs per MAC)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 1, size, size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops() / 1e9


def measure(config: BenchConfig, build: Callable[[str, int], object] | None = None) -> dict:
    """Measure one configuration in this process and return its row (never raises)."""
    row: dict = {key: "" for key in COLUMNS}
    row.update(
        encoder=config.encoder,
        size=config.size,
        batch_size=config.batch_size,
        device=config.device,
        precision=config.precision,
        compile="yes" if config.compile else "no",
    )
    try:
        row.update(_measure(config, build or random_unet))
    except Exception as exc:  # one row per configuration, an error column instead of a crash
        row["error"] = error_text(exc)
    return row


def _measure(config: BenchConfig, build: Callable[[str, int], object]) -> dict:
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but torch.cuda.is_available() is False")

    import segmentation_models_pytorch  # noqa: F401  (imports are not the model's memory)

    import ptxseg.model.unet  # noqa: F401

    base_rss = rss_now_mb()
    model = build(config.encoder, config.size).to(device).eval()
    result = _inference_cells(config, model, device, base_rss)
    if config.train:
        result.update(_training_cells(config, model, device, base_rss))
    return result


def _peak_mb(device, base_rss: float) -> float:
    """Memory high-water mark: CUDA's max allocated, else this process's RSS increase."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb() - base_rss


def _inference_cells(config: BenchConfig, model, device, base_rss: float) -> dict:
    """Size, GFLOPs, latency, images/s and memory of inference through the Predictor."""
    import numpy as np
    import torch

    from ptxseg.inference.predictor import Predictor

    cuda = device.type == "cuda"
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    gflops = count_gflops_per_image(model, config.size, config.device)
    predictor = Predictor(
        model,
        device=config.device,
        precision=config.precision,
        tta="none",
        batch_size=config.batch_size,
        compile=config.compile,
    )
    inputs = np.random.default_rng(0).integers(
        0, 256, (config.batch_size, config.size, config.size), dtype=np.uint8
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    infer = timed(
        lambda: predictor.probabilities(inputs),
        items=config.batch_size,
        warmup=config.warmup,
        repeats=config.iters,
        sync=device_sync(device),
    )
    infer_mem = _peak_mb(device, base_rss)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    return {
        "params_m": round(params_m, 3),
        "gflops_per_image": round(gflops, 3),
        "latency_p50_ms": round(infer.p50 * 1e3, 2),
        "latency_p95_ms": round(infer.p95 * 1e3, 2),
        "images_per_s": round(infer.rate, 2),
        "infer_mem_mb": round(infer_mem, 1),
        "mem_kind": "cuda max allocated" if cuda else "RSS increase (fresh process)",
    }


def _training_cells(config: BenchConfig, model, device, base_rss: float) -> dict:
    """Milliseconds and memory of a training step (forward, BCE, backward, Adam)."""
    import torch

    layout = torch.channels_last if config.compile else torch.contiguous_format
    model = model.to(memory_format=layout).train()
    x = torch.rand(config.batch_size, 1, config.size, config.size, device=device)
    x = x.contiguous(memory_format=layout)
    train_run = model
    if config.compile:
        from ptxseg.model.acceleration import compile_function

        train_run = compile_function(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    target = (torch.rand_like(x) > 0.9).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    bf16 = config.precision == "bf16"

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(train_run(x).float(), target)
        loss.backward()
        optimizer.step()

    sync = device_sync(device)
    step = timed(train_step, warmup=config.warmup, repeats=config.iters, sync=sync)
    train_mem = _peak_mb(device, base_rss)
    return {"train_step_ms": round(step.p50 * 1e3, 2), "train_mem_mb": round(train_mem, 1)}


def measure_isolated(config: BenchConfig) -> dict:
    """Measure one configuration in a fresh spawned process; a dead worker gives an error row."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        try:
            return pool.submit(measure, config).result()
        except Exception as exc:  # e.g. BrokenProcessPool when the worker is killed for memory
            row = {key: "" for key in COLUMNS}
            row.update({k: v for k, v in asdict(config).items() if k in COLUMNS})
            row["error"] = f"worker failed: {type(exc).__name__}: {exc}"[:300]
            return row


def run_benchmark(
    configs: Sequence[BenchConfig],
    isolate: bool = True,
    on_row: Callable[[dict], None] | None = None,
    baseline: str | None = None,
) -> list[dict]:
    """Measure every configuration one after another; `isolate` spawns a process per row.

    `speedup` is images/s over the `baseline` encoder's, eager, at the same precision (default:
    the first encoder), so a compiled row shows what compiling gains.
    """
    rows = []
    for config in configs:
        row = measure_isolated(config) if isolate else measure(config)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    base = baseline or (configs[0].encoder if configs else None)
    add_ratios(
        rows,
        "images_per_s",
        lambda r: r["encoder"] == base and r.get("compile") != "yes",
        group=lambda r: r["precision"],
    )
    return rows


def run_benchmark_with_status(
    configs: Sequence[BenchConfig], console, isolate: bool = True, baseline: str | None = None
) -> list[dict]:
    """`run_benchmark` on a rich console: a line per finished configuration (its error, if
    any) and a status line that counts them."""
    with console.status("benchmarking") as status:

        def progress(row: dict) -> None:
            state = f"[red]error[/red] {row['error'][:100]}" if row["error"] else "done"
            console.print(f"{row['encoder']} {row['precision']}: {state}")
            status.update(f"benchmarking ({len(done) + 1}/{len(configs)} done)")
            done.append(row)

        done: list[dict] = []
        return run_benchmark(configs, isolate=isolate, on_row=progress, baseline=baseline)


def plot_benchmark(rows: Sequence[dict], path: Path) -> Path:
    """Bar charts of latency, training step, memory and GFLOPs per configuration."""
    from ptxseg.util.plotting import pyplot

    plt = pyplot()

    ok = [r for r in rows if not r.get("error")]
    labels = [
        f"{r['encoder']} {r['precision']}" + (" compiled" if r.get("compile") == "yes" else "")
        for r in ok
    ]
    fmt = lambda v: f"{v:g}" if isinstance(v, float) else str(v)  # noqa: E731
    panels = [
        ("latency_p50_ms", "Inference p50 (ms/batch)"),
        ("train_step_ms", "Training step (ms)"),
        ("infer_mem_mb", "Inference memory (MB)"),
        ("gflops_per_image", "GFLOPs per image"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = [float(r[key]) if r.get(key) != "" else 0.0 for r in ok]
        bars = ax.bar(range(len(ok)), values, color="#3b6ea8")
        ax.bar_label(bars, fmt=lambda v: f"{v:.0f}" if v >= 100 else f"{v:.3g}", fontsize=8)
        ax.set_xticks(range(len(ok)), labels, fontsize=8, rotation=35, ha="right")
        ax.set_title(title, fontsize=10)
        ax.margins(y=0.15)
    if ok:
        r0 = ok[0]
        fig.suptitle(
            f"U-Net backbones, {fmt(r0['size'])} px, batch {fmt(r0['batch_size'])}, {r0['device']}",
            fontsize=11,
        )
    fig.tight_layout()
    return atomic.save_figure(fig, path, dpi=110)


def write_benchmark(rows: Sequence[dict], out_dir: Path, baseline: str = "") -> dict[str, Path]:
    """Write benchmark.csv, benchmark.md and benchmark.png into `out_dir`."""
    notes = (
        "Latency is per batch through the Predictor (8-bit input to probabilities) under"
        " `torch.inference_mode()` after warm-up; images/s = batch / p50. GFLOPs count 2 FLOPs"
        " per multiply-add (torch FlopCounterMode). Train step = forward + backward + Adam step."
        " Memory on CPU is the resident-set increase of a fresh process (high-water mark minus"
        " the RSS before the model was built); on GPU it is `torch.cuda.max_memory_allocated`."
    )
    base = baseline or (rows[0]["encoder"] if rows else "")
    paths = write_table(
        out_dir,
        "benchmark",
        "Backbone benchmark",
        COLUMNS,
        rows,
        baseline=f"{base} at the same precision (column x baseline)" if base else "",
        notes=notes,
    )
    if any(not r.get("error") for r in rows):
        paths["png"] = plot_benchmark(rows, Path(out_dir) / "benchmark.png")
    return paths


def read_benchmark_csv(path: Path) -> list[dict]:
    """Rows of a benchmark.csv with numbers parsed back (empty cells stay '')."""
    return read_table_csv(path)
