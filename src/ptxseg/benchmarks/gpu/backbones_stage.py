"""Stage `backbones`: inference and training step images/s of the encoder at the benchmark's
size and batch: eager NCHW fp32/bf16, eager channels_last bf16, compiled, compiled with CUDA
graphs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ptxseg.benchmarks.common import device_sync, error_text, timed
from ptxseg.benchmarks.gpu.bench import Bench, StageContext, gpu_stage

NOTES = (
    "Random weights, inputs on the device. Inference under torch.inference_mode, training "
    "step = forward, BCE, backward, Adam (fused on a GPU). x_eager: ratio to eager NCHW "
    "bf16 (fp32 on the CPU). CUDA graphs: torch.compile mode reduce-overhead."
)


@gpu_stage("backbones")
def stage_backbones(ctx: StageContext) -> None:
    from ptxseg.benchmarks.backbones import BenchConfig, measure_isolated

    bench, s = ctx.bench, ctx.bench.s
    paths = [("eager NCHW fp32", "fp32")]
    if bench.gpu:
        paths += [("eager NCHW bf16", "bf16")]
    rows = []
    for label, precision in paths:
        config = BenchConfig(
            s.encoder, s.size, s.batch_size, s.device, precision, warmup=3, iters=10, train=True
        )
        rows.append(_backbone_row(label, measure_isolated(config)))
    rows += _layout_rows(bench)
    base = next((r for r in rows if r["path"] == "eager NCHW bf16"), rows[0])
    for row in rows:
        for key in ("inference_images_per_s", "training_images_per_s"):
            if row.get(key) and base.get(key):
                row[key.replace("images_per_s", "x_eager")] = round(row[key] / base[key], 2)
    title = f"U-Net-{s.encoder} at {s.size} px, batch {s.batch_size}: eager against compiled"
    bench.write("backbones", title, rows, NOTES)


def _backbone_row(label: str, row: dict) -> dict:
    out = {"path": label}
    if row.get("error"):
        out["error"] = row["error"]
        return out
    out["inference_images_per_s"] = row["images_per_s"]
    if row.get("train_step_ms"):
        out["training_images_per_s"] = round(row["batch_size"] / (row["train_step_ms"] / 1000.0), 1)
    out["inference_mem_mb"] = row.get("infer_mem_mb")
    return out


def _layout_rows(bench: Bench) -> list[dict]:
    """channels_last eager, compiled and compiled with CUDA graphs, timed in this process."""
    import torch

    from ptxseg.model.acceleration import compile_function, use_fast_float32
    from ptxseg.model.random_weights import random_unet

    s = bench.s
    device = torch.device(s.device)
    use_fast_float32(device)
    model = random_unet(s.encoder, s.size).to(device).to(memory_format=torch.channels_last)
    # Compiled training is measured where it runs for real (the train stage); compiling a
    # second training graph here would cost a minute of the budget.
    variants = [("eager channels_last", model, True)]
    variants.append(("compiled channels_last", compile_function(model), False))
    if bench.gpu:
        graphs = compile_function(model, "reduce-overhead")
        variants.append(("compiled + CUDA graphs (inference)", graphs, False))
    rows = []
    for label, run, train in variants:
        row: dict[str, Any] = {"path": label + (" bf16" if bench.gpu else " fp32")}
        try:
            row.update(_layout_rates(bench, model, run, train))
        except Exception as err:  # noqa: BLE001 - the row says what failed
            row["error"] = error_text(err, 200)
        rows.append(row)
    return rows


def _layout_rates(bench: Bench, model, run: Callable, train: bool) -> dict[str, float]:
    """Inference (and, if `train`, training step) images/s of `run`, the channels_last `model`
    or a compiled form of it, on a random channels_last batch."""
    import torch

    s = bench.s
    device = next(model.parameters()).device
    x = torch.rand(s.batch_size, 1, s.size, s.size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    model.eval()
    rates = {"inference_images_per_s": round(_rate(lambda: run(x), bench, inference=True), 1)}
    if train:
        model.train()
        target = (torch.rand_like(x) > 0.9).float()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=bench.gpu or None)
        loss_fn = torch.nn.BCEWithLogitsLoss()

        def step() -> None:
            loss = loss_fn(run(x).float(), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        rates["training_images_per_s"] = round(_rate(step, bench, inference=False), 1)
    return rates


def _rate(fn: Callable[[], Any], bench: Bench, inference: bool) -> float:
    """Images/s of `fn` (one batch a call) under bf16 autocast on a GPU, through the harness."""
    import contextlib

    import torch

    device = torch.device(bench.s.device)
    grad = torch.inference_mode() if inference else contextlib.nullcontext()
    cast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bench.gpu)
    with grad, cast:
        timing = timed(fn, bench.s.batch_size, warmup=3, repeats=10, sync=device_sync(device))
    return timing.mean_rate
