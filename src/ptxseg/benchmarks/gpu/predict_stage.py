"""Stage `predict`: `ptxseg predict` on DICOMs (real SIIM files when given, replicated to
`images` files): CPU decode against nvJPEG, eager against compiled, with and without overlays,
with the model's masks and with every mask empty (the writers' least work: what the rest of the
pipeline sustains); images/s end to end, seconds from the process start to the first result,
where the start-up went and where the main loop waited (`run.json`), and the Dice of each path's
masks against eager fp32 with CPU decoding; plus a 16-file run (start-up dominated)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg.benchmarks.gpu.bench import Bench, StageContext, gpu_stage
from ptxseg.benchmarks.predict_pipeline import format_loop

NOTES = (
    "images_per_s: predicted images over "
    "the pipeline's own seconds (reading, model, masks, writing; a compiled model's "
    "compilation included); steady_images_per_s: the same after the first result; "
    "command_s: the whole command; first_result_s: from the process start to the first "
    "findings written; model_ready_s: from the command's start to the model on the device; "
    "imports_s: from the process start to the command's start; startup: seconds after the "
    "command's start when the workers were launched, torch imported, the CUDA context "
    "ready and the model on the device (run.json); main_loop: seconds the main process "
    "spent waiting for the readers, launching batches, waiting for the device, handing "
    "results out and waiting for the writers (the largest is what bounds the run). "
    "dice_vs_reference: pooled Dice of all masks against the first row's (1 when both are "
    "empty: see positive_masks); max_probability_difference: largest change of an image's "
    "peak probability against the first row. 'every mask empty': `--min-area` above the "
    "model's pixel count, so that every mask is empty: the writers' least work, which shows "
    "what the rest of the pipeline sustains."
)


@dataclass(frozen=True)
class PredictRun:
    """One `ptxseg predict` of the table: its row's label and what differs from the others."""

    label: str
    inputs: Path
    precision: str
    decode: str
    outputs: str = "mask,findings"
    extra: tuple[str, ...] = ()
    every_mask_empty: bool = False


def model_for_predict(bench: Bench, model: Path | None) -> Path:
    """The trained model of the train stage, else a random-weight one saved for the purpose."""
    if model is not None:
        return model
    folder = bench.s.work / "random-model"
    if not (folder / "ptxseg.json").is_file():
        from ptxseg.model.checkpoint import save_inference_model
        from ptxseg.model.random_weights import random_unet

        save_inference_model(random_unet(bench.s.encoder, bench.s.size), folder)
    return folder


def predict_runs(gpu: bool, everything: Path, files16: Path, size: int) -> list[PredictRun]:
    """The runs of the table, the most telling first, so that a spent budget drops the least."""
    bf16 = "bf16" if gpu else "fp32"
    # Every mask empty: no model-size area reaches this, so the writers' work is the least a
    # trained model costs them (most radiographs are negative); with these rows the table shows
    # the pipeline's own ceiling next to the worst case of an untrained model's noisy masks.
    empty = ("--min-area", str(size * size + 1))
    runs = [PredictRun("reference: eager fp32, CPU decode", everything, "fp32", "cpu")]
    if gpu:
        runs += [
            PredictRun("eager bf16, nvJPEG", everything, bf16, "device"),
            PredictRun(
                "compiled bf16, nvJPEG, every mask empty",
                everything,
                bf16,
                "device",
                extra=("--compile", *empty),
                every_mask_empty=True,
            ),
        ]
    overlays = "mask,findings,overlay"
    runs.append(PredictRun("16 files, default outputs (start-up)", files16, bf16, "auto", overlays))
    name, decode = ("nvJPEG", "device") if gpu else ("CPU decode", "cpu")
    label = f"eager {bf16}, {name}, every mask empty"
    runs.append(PredictRun(label, everything, bf16, decode, extra=empty, every_mask_empty=True))
    if gpu:
        runs += [
            PredictRun("compiled bf16, nvJPEG", everything, bf16, "device", extra=("--compile",)),
            PredictRun("eager bf16, CPU decode", everything, bf16, "cpu"),
            PredictRun("eager bf16, nvJPEG, overlays", everything, bf16, "device", overlays),
        ]
    return runs


@gpu_stage("predict")
def stage_predict(ctx: StageContext) -> None:
    bench, data, s = ctx.bench, ctx.data, ctx.bench.s
    model = model_for_predict(bench, ctx.model)
    files16 = _first_files(data.predict_inputs, s.work / "inputs-16", 16)
    rows: list[dict[str, Any]] = []
    reference: Path | None = None
    for index, run in enumerate(predict_runs(bench.gpu, data.predict_inputs, files16, s.size)):
        if index and bench.elapsed() > s.budget_s:
            rows.append({"path": run.label, "error": "skipped: the time budget is spent"})
            continue
        row, out = _predict(bench, index, run, model)
        rows.append(row)
        if out is None:
            continue
        if reference is None:
            reference = out
        elif run.inputs == data.predict_inputs and not run.every_mask_empty:
            row["dice_vs_reference"] = mask_dice(reference, out)
            row["max_probability_difference"] = peak_difference(reference, out)
    notes = f"Inputs: {data.predict_source}; model {model}. " + NOTES
    if bench.gpu:
        notes += " " + _input_agreement(data.predict_inputs, s.size, s.device)
    title = f"ptxseg predict end to end: U-Net-{s.encoder} at {s.size} px, batch {s.batch_size}"
    bench.write("predict", title, rows, notes)


def _first_files(folder: Path, copy: Path, n: int) -> Path:
    """`copy` holding the first `n` DICOMs of `folder` (made once)."""
    if not copy.is_dir():
        copy.mkdir(parents=True)
        for path in sorted(folder.glob("*.dcm"))[:n]:
            shutil.copyfile(path, copy / path.name)
    return copy


def _predict(bench: Bench, index: int, run: PredictRun, model: Path) -> tuple[dict, Path | None]:
    """One `ptxseg predict` in a fresh process: its row, and its output folder if it ran."""
    s = bench.s
    out = s.work / f"predict-{index}"
    shutil.rmtree(out, ignore_errors=True)
    code, seconds = bench.ptxseg(
        f"predict-{index}",
        "predict",
        run.inputs,
        *("-c", model, "-o", out, "--device", s.device, "--precision", run.precision),
        *("--decode", run.decode, "--batch-size", s.batch_size, "--workers", s.workers),
        *("--outputs", run.outputs, *run.extra),
    )
    row: dict[str, Any] = {"path": run.label, "command_s": round(seconds, 1)}
    record = out / "run.json"
    if code != 0 or not record.is_file():
        row["error"] = f"exit {code}"
        return row, None
    row.update(_run_cells(json.loads(record.read_text()), out))
    return row, out


def _run_cells(info: dict[str, Any], out: Path) -> dict[str, Any]:
    """The row's cells from a predict run's run.json and masks."""
    return dict(
        images=info["predicted"],
        errors=info["errors"],
        images_per_s=info["images_per_s"],
        steady_images_per_s=info["images_per_s_after_first_result"],
        first_result_s=info["first_result_after_start_s"],
        model_ready_s=info["model_ready_after_command_s"],
        imports_s=info.get("process_age_at_command_s"),
        startup=startup_text(info),
        main_loop=loop_text(info),
        positive_masks=sum(1 for m in (out / "masks").glob("*.png") if _any(m)),
    )


def startup_text(record: dict[str, Any]) -> str:
    """`workers 0.3, torch 1.3, cuda 3.0, model 8.6`: where a predict run's start-up went."""
    steps = record.get("startup_after_command_s", {})
    names = (("workers", "workers_launched_s"), ("torch", "torch_imported_s"))
    parts = [f"{label} {steps[key]:.1f}" for label, key in names if steps.get(key) is not None]
    if steps.get("cuda_ready_s") is not None:
        parts.append(f"cuda {steps['cuda_ready_s']:.1f}")
    if record.get("model_ready_after_command_s") is not None:
        parts.append(f"model {record['model_ready_after_command_s']:.1f}")
    return ", ".join(parts)


def loop_text(record: dict[str, Any]) -> str:
    """`reads 0.2, launch 3.1, device 0.4, hand_out 0.6, writers 9.8`, from run.json."""
    return format_loop(record.get("main_loop_s"))


def mask_dice(a: Path, b: Path) -> float:
    """Pooled Dice of the masks two predict runs wrote for the same files."""
    from ptxseg.inference.outputs import read_mask

    inter = total = 0
    for path in sorted((a / "masks").glob("*.png")):
        other = b / "masks" / path.name
        if not other.is_file():
            continue
        x, y = read_mask(path), read_mask(other)
        inter += int((x & y).sum())
        total += int(x.sum()) + int(y.sum())
    return round(1.0 if total == 0 else 2 * inter / total, 5)


def _any(mask_png: Path) -> bool:
    from ptxseg.inference.outputs import read_mask

    return bool(read_mask(mask_png).any())


def peak_difference(a: Path, b: Path) -> float:
    """Largest difference of the per-image peak probability (findings) between two runs."""
    worst = 0.0
    for path in (a / "findings").glob("*.json"):
        other = b / "findings" / path.name
        if other.is_file():
            x = json.loads(path.read_text())["probability"]
            y = json.loads(other.read_text())["probability"]
            worst = max(worst, abs(x - y))
    return round(worst, 6)


def _input_agreement(folder: Path, size: int, device: str, n: int = 64) -> str:
    """How far nvJPEG + the GPU resize land from the CPU's model inputs on these files."""
    from ptxseg.inference.workers import read_input

    files = sorted(folder.glob("*.dcm"))[:n]
    cpu = [read_input(str(p), size, keep_frame=False) for p in files]
    dev = [read_input(str(p), size, keep_frame=True) for p in files]
    pairs = [(c, d) for c, d in zip(cpu, dev, strict=True) if d.frame is not None and not c.error]
    if not pairs:
        return "No JPEG Baseline frames to compare model inputs on."
    from ptxseg.data.device_images import decode_to_inputs

    got = decode_to_inputs(
        [d.frame for _, d in pairs],
        [tuple(d.shape) for _, d in pairs],
        [d.invert for _, d in pairs],
        size,
        device,
    )
    if got.inputs is None:
        return "No frame could be decoded on the device to compare model inputs on."
    small = got.inputs.cpu().numpy()
    ref = np.stack([pairs[k][0].model_input for k in got.decoded])
    diff = np.abs(small.astype(np.int16) - ref.astype(np.int16))
    return (
        f"Model inputs from nvJPEG + GPU resize against OpenCV on the CPU ({len(got.decoded)} "
        "files): "
        f"max difference {int(diff.max())} gray levels, {float((diff > 0).mean()):.4%} of "
        "pixels differ."
    )
