"""`ptxseg benchmark-gpu`: the GPU measurements of ptxseg in one run, one table per stage.

Built for one prepared run on a lent GPU (`benchmarks/gpu.sh`, under 7 minutes on one H100 or
H200): every stage compares configurations side by side on the same card, so the ratios hold,
and writes `gpu-<stage>.md` (and `.csv`) with the machine in its header.

- `prepare`: the cache of the benchmark's DICOMs written by a CPU process pool and by nvJPEG with
  the GPU resize; images/s, and how far the two caches differ (nvJPEG is not libjpeg-turbo).
- `train`: `ptxseg train` end to end (real loader, full augmentation, metrics) as it ran before
  on a GPU (eager, NCHW, augmentation in loader workers) against today's GPU defaults (compiled,
  channels_last, bf16, augmentation on the device), and the same compiled step on a batch already
  on the device (the model alone), whose ratio is the loader's overhead.
- `predict`: `ptxseg predict` on DICOMs (real SIIM files when given, replicated to `images`
  files): CPU decode against nvJPEG, eager against compiled, with and without overlays, with
  the model's masks and with every mask empty (the writers' least work: what the rest of the
  pipeline sustains); images/s end to end, seconds from the process start to the first result,
  where the start-up went and where the main loop waited (`run.json`), and the Dice of each
  path's masks against eager fp32 with CPU decoding; plus a 16-file run (start-up dominated).
- `backbones`: inference and training step images/s of the encoder at the benchmark's size and
  batch: eager NCHW fp32/bf16, eager channels_last bf16, compiled, compiled with CUDA graphs.
- `serve`: seconds from `ptxseg serve` to its first answer, and the first request's latency.
- `writes`: what the writer processes of `predict` sustain alone for empty, lesion-like and noisy
  full-size masks (findings, PNG, RLE): the bound of `predict` once reading and the model keep
  up. An untrained model's masks are noise, the slowest kind, so this says what `predict` with a
  trained model can reach on the same cores.

The same stages run on the CPU at toy sizes (`--device cpu`), which is how the tests check them.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg.benchmarks.common import environment_lines, write_table
from ptxseg.benchmarks.predict_pipeline import format_loop
from ptxseg.util.system import usable_cores

# What the open targets need first (predict's rate and start-up, serve's start-up, training's
# rate and loader overhead), the stages whose targets are settled last: a spent budget drops
# those. Without a train stage before them, predict and serve use a random-weight model.
STAGES = ("pipeline", "serve", "predict", "train", "writes", "prepare", "backbones")


@dataclass
class GpuBenchSettings:
    """What one `benchmark-gpu` run measures and where it works."""

    out: Path = Path("benchmarks/results")
    work: Path = Path("/tmp/ptxseg-gpu-bench")
    dicoms: Path | None = None  # real DICOMs for the predict stage (replicated to `images`)
    images: int = 1024  # DICOMs for prepare and predict (copies of a few distinct ones)
    distinct: int = 48  # distinct synthetic radiographs
    source_size: int = 1024  # their side (SIIM's)
    size: int = 512  # model input and cache size
    encoder: str = "resnet50"
    batch_size: int = 32
    train_batches: int = 40  # batches per training epoch (2 epochs: compile, then steady)
    workers: int = field(default_factory=usable_cores)
    device: str = "cuda"
    stages: tuple[str, ...] = STAGES
    budget_s: float = 420.0  # no stage starts after this many seconds
    stage_timeout_s: float = 240.0  # one command's limit

    def __post_init__(self) -> None:
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise ValueError(
                f"unknown stage(s) {', '.join(sorted(unknown))}: choose from {', '.join(STAGES)}"
            )


class Bench:
    """One run: settings, the clock, the log folder and the tables written so far."""

    def __init__(self, settings: GpuBenchSettings, say: Callable[[str], None] = print) -> None:
        self.s = settings
        self.say = say
        self.start = time.perf_counter()
        self.logs = settings.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.tables: list[Path] = []

    @property
    def gpu(self) -> bool:
        return self.s.device.startswith("cuda")

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def ptxseg(self, name: str, *args: str, timeout: float | None = None) -> tuple[int, float]:
        """Run `python -m ptxseg ARGS` in a fresh process; (exit code, seconds). Logs kept."""
        command = [sys.executable, "-m", "ptxseg", *map(str, args)]
        log = self.logs / f"{name}.log"
        start = time.perf_counter()
        with open(log, "w") as handle:
            handle.write(" ".join(command) + "\n")
            handle.flush()
            try:
                code = subprocess.run(
                    command,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    timeout=timeout or self.s.stage_timeout_s,
                    env=_child_env(),
                ).returncode
            except subprocess.TimeoutExpired:
                code = 124
        seconds = time.perf_counter() - start
        self.say(f"  {name}: exit {code} in {seconds:.1f} s (log {log})")
        return code, seconds

    def write(
        self, stage: str, title: str, rows: list[dict], notes: str = "", baseline: str = ""
    ) -> Path:
        """gpu-<stage>.md and .csv in the output folder, through the benchmark harness."""
        keys = list(dict.fromkeys(k for row in rows for k in row))
        paths = write_table(
            self.s.out, f"gpu-{stage}", title, {k: k for k in keys}, rows, baseline, notes
        )
        self.tables.append(paths["md"])
        self.say(paths["md"].read_text())
        return paths["md"]


def _child_env() -> dict[str, str]:
    """This process's environment with its import path, so children import the same ptxseg."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run(settings: GpuBenchSettings, say: Callable[[str], None] = print) -> list[Path]:
    """Every stage asked for, within the time budget; returns the tables written."""
    bench = Bench(settings, say)
    say("\n".join(environment_lines()))
    data = make_data(bench)
    model: Path | None = None
    for stage in settings.stages:
        if bench.elapsed() > settings.budget_s:
            say(f"{stage}: skipped, the budget of {settings.budget_s:.0f} s is spent")
            continue
        say(f"{stage} (at {bench.elapsed():.0f} s)")
        try:
            if stage == "prepare":
                stage_prepare(bench, data)
            elif stage == "train":
                model = stage_train(bench, data)
            elif stage == "predict":
                stage_predict(bench, data, model)
            elif stage == "backbones":
                stage_backbones(bench)
            elif stage == "serve":
                stage_serve(bench, data, model)
            elif stage == "writes":
                stage_writes(bench, data)
            elif stage == "pipeline":
                stage_pipeline(bench, data)
        except Exception as err:  # noqa: BLE001 - one stage failing leaves the others
            bench.write(stage, f"{stage}: failed", [{"error": f"{type(err).__name__}: {err}"}])
    say(f"done in {bench.elapsed():.0f} s")
    return bench.tables


# ---------------------------------------------------------------------------- the data


@dataclass
class BenchData:
    dicoms: Path  # `images` synthetic DICOMs (distinct ones repeated), with annotations
    annotations: Path
    predict_inputs: Path  # what predict reads: the real DICOMs repeated, else the synthetic ones
    predict_source: str
    work: Path  # the prepared folder at `size` (made by the prepare stage, or on demand)


def make_data(bench: Bench) -> BenchData:
    """Synthetic SIIM-style DICOMs, repeated to `images` files (links, not copies)."""
    from ptxseg.data.synthetic import generate_dataset

    s = bench.s
    root = s.work / "synth"
    if not (root / "train-rle.csv").is_file():
        generate_dataset(
            root, s.distinct, s.source_size, seed=0, positive_fraction=0.5, conspicuity=3.0
        )
    dicoms, annotations = s.work / "dicoms", s.work / "dicoms.csv"
    originals = sorted((root / "dicom-images-train").rglob("*.dcm"))
    if not annotations.is_file():
        rows = _read_rows(root / "train-rle.csv")
        _repeat(originals, dicoms, s.images)
        with open(annotations, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["ImageId", "EncodedPixels"])
            for copy in sorted(dicoms.glob("*.dcm")):
                for rle in rows[copy.stem.rsplit("-r", 1)[0]]:
                    writer.writerow([copy.stem, rle])
    predict_inputs, source = dicoms, f"{s.images} synthetic DICOMs ({s.distinct} distinct)"
    if s.dicoms is not None:
        real = sorted(p for p in Path(s.dicoms).rglob("*") if p.suffix.lower() == ".dcm")
        if not real:
            raise FileNotFoundError(f"no .dcm files in {s.dicoms}")
        predict_inputs = s.work / "real"
        if not predict_inputs.is_dir():
            _repeat(real, predict_inputs, s.images)
        source = f"{s.images} real DICOMs ({len(real)} distinct, from {s.dicoms})"
    return BenchData(dicoms, annotations, predict_inputs, source, s.work / f"prepared-{s.size}")


def _read_rows(path: Path) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            keys = {k.strip(): v.strip() for k, v in row.items()}
            rows.setdefault(keys["ImageId"], []).append(keys["EncodedPixels"])
    return rows


def _repeat(files: Sequence[Path], folder: Path, count: int) -> None:
    """`count` files in `folder` named `<stem>-r<k>.dcm`, hard links where the disk allows."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for k in range(count):
        source = files[k % len(files)]
        target = tmp / f"{source.stem}-r{k // len(files)}.dcm"
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    os.replace(tmp, folder)


def _prepare_args(data: BenchData, out: Path, bench: Bench, device: str) -> list[str]:
    return [
        "prepare",
        "--images",
        data.dicoms,
        "--annotations",
        data.annotations,
        "--out",
        out,
        "--size",
        bench.s.size,
        "--workers",
        bench.s.workers,
        "--device",
        device,
    ]


def ensure_prepared(bench: Bench, data: BenchData) -> Path:
    """The prepared work folder (written on the GPU when there is one)."""
    if not (data.work / "manifest.csv").is_file():
        device = "cuda" if bench.gpu else "cpu"
        bench.ptxseg("prepare-work", *_prepare_args(data, data.work, bench, device))
    return data.work


# ---------------------------------------------------------------------------- prepare


def stage_prepare(bench: Bench, data: BenchData) -> None:
    s = bench.s
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
            f"prepare-{device}", *_prepare_args(data, folder, bench, device)
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
    bench.write(
        "prepare",
        f"prepare: {s.images} DICOMs of {s.source_size} px cached at {s.size} px",
        rows,
        "Seconds of the whole command (start-up, headers, split, cache). cache_vs_cpu: largest "
        "difference in gray levels between the two caches and the share of pixels that differ "
        "(nvJPEG and libjpeg-turbo round the inverse DCT differently; the resize itself is "
        "exact at these sizes, see ptxseg.data.device_images).",
    )


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


# ---------------------------------------------------------------------------- train


def stage_train(bench: Bench, data: BenchData) -> Path | None:
    s = bench.s
    work = ensure_prepared(bench, data)
    common = [
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
    precision = "bf16-mixed" if bench.gpu else "32"
    configs = [
        (
            "before: eager, NCHW, augmentation in loader workers",
            "before",
            ["--no-compile", "--no-channels-last", "--augment-on", "loader"],
        ),
        ("now: compiled, channels_last, augmentation on the device", "now", []),
    ]
    rows, summaries = [], {}
    for label, name, extra in configs:
        run_dir = s.work / f"train-{name}"
        shutil.rmtree(run_dir, ignore_errors=True)
        code, seconds = bench.ptxseg(
            f"train-{name}", "train", *common, "--precision", precision, "--out", run_dir, *extra
        )
        row: dict[str, Any] = {"run": label, "seconds": round(seconds, 1)}
        summary_path = run_dir / "train_summary.json"
        if code == 0 and summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            summaries[name] = summary
            rate = summary.get("train_images_per_s_after_first_epoch")
            row.update(
                images_per_s=rate,
                after_first_batch_images_per_s=last(
                    summary.get("epoch_images_per_s_after_first_batch")
                ),
                first_batch_wait_s=last(summary.get("epoch_first_batch_s")),
                first_epoch_images_per_s=(summary.get("epoch_images_per_s") or [None])[0],
                peak_gpu_mb=summary.get("peak_gpu_mb"),
                device=summary.get("device"),
                precision=summary.get("precision"),
            )
        else:
            row["error"] = f"exit {code}"
        rows.append(row)
    before = summaries.get("before", {}).get("train_images_per_s_after_first_epoch")
    now = summaries.get("now", {}).get("train_images_per_s_after_first_epoch")
    if before and now:
        rows[1]["x_before"] = round(now / before, 2)
    try:
        if bench.elapsed() > s.budget_s:
            raise TimeoutError("skipped: the time budget is spent")
        alone = model_alone_rate(work, s, bench.gpu)
        row = {"run": "now, model alone (one batch on the device, augmented there)"}
        row.update(images_per_s=round(alone, 1))
        if now:
            row["loader_overhead_pct"] = round(100 * (1 - now / alone), 1)
        steady = last(summaries.get("now", {}).get("epoch_images_per_s_after_first_batch"))
        if steady:
            row["overhead_after_first_batch_pct"] = round(100 * (1 - steady / alone), 1)
        rows.append(row)
    except Exception as err:  # noqa: BLE001
        rows.append({"run": "model alone", "error": f"{type(err).__name__}: {err}"})
    bench.write(
        "train",
        f"ptxseg train end to end: U-Net-{s.encoder}, {s.size} px, batch {s.batch_size}, "
        f"{precision}, full augmentation",
        rows,
        f"images_per_s: epoch 2 of 2 ({s.train_batches} batches each; epoch 1 includes the "
        "compilation and warm-up), loader waits included, validation excluded "
        "(train_summary.json). loader_overhead_pct = 1 - end to end / model alone. "
        "first_batch_wait_s: the wait for epoch 2's first batch (the loader starting the "
        "epoch, a fixed cost that short epochs feel most); after_first_batch_images_per_s: "
        "epoch 2 from its first batch in hand; overhead_after_first_batch_pct: the same "
        "ratio as loader_overhead_pct from there.",
    )
    model = s.work / "train-now" / "model"
    return model if (model / "ptxseg.json").is_file() else None


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
    config = resolve_device_defaults(
        load_config(
            overrides={
                **random_unet_overrides(s.encoder, s.size),
                "data.work": str(work),
                "trainer.accelerator": "gpu" if gpu else "cpu",
                "trainer.precision": "bf16-mixed" if gpu else "32",
            }
        )
    )
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

    for _ in range(3):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * s.batch_size / (time.perf_counter() - start)


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- predict


def _model_for_predict(bench: Bench, model: Path | None) -> Path:
    """The trained model of the train stage, else a random-weight one saved for the purpose."""
    if model is not None:
        return model
    folder = bench.s.work / "random-model"
    if not (folder / "ptxseg.json").is_file():
        from ptxseg.model.checkpoint import save_inference_model
        from ptxseg.model.random_weights import random_unet

        save_inference_model(random_unet(bench.s.encoder, bench.s.size), folder)
    return folder


def stage_predict(bench: Bench, data: BenchData, model: Path | None) -> None:
    s = bench.s
    model = _model_for_predict(bench, model)
    files16 = s.work / "inputs-16"
    if not files16.is_dir():
        files16.mkdir(parents=True)
        for path in sorted(data.predict_inputs.glob("*.dcm"))[:16]:
            shutil.copyfile(path, files16 / path.name)
    bf16 = "bf16" if bench.gpu else "fp32"
    everything = data.predict_inputs
    # Every mask empty: no model-size area reaches this, so the writers' work is the least a
    # trained model costs them (most radiographs are negative); with these rows the table shows
    # the pipeline's own ceiling next to the worst case of an untrained model's noisy masks.
    empty = ["--min-area", str(s.size * s.size + 1)]
    everything_flat = ("mask,findings", [])
    # (label, inputs, precision, decode, (outputs, extra options)); the most telling first, so
    # that a spent budget drops the least.
    runs = [("reference: eager fp32, CPU decode", everything, "fp32", "cpu", everything_flat)]
    if bench.gpu:
        runs += [
            ("eager bf16, nvJPEG", everything, bf16, "device", everything_flat),
            (
                "compiled bf16, nvJPEG, every mask empty",
                everything,
                bf16,
                "device",
                ("mask,findings", ["--compile", *empty]),
            ),
        ]
    runs.append(
        (
            "16 files, default outputs (start-up)",
            files16,
            bf16,
            "auto",
            ("mask,findings,overlay", []),
        )
    )
    decoder = ("nvJPEG", "device") if bench.gpu else ("CPU decode", "cpu")
    runs.append(
        (
            f"eager {bf16}, {decoder[0]}, every mask empty",
            everything,
            bf16,
            decoder[1],
            ("mask,findings", empty),
        )
    )
    if bench.gpu:
        runs += [
            ("compiled bf16, nvJPEG", everything, bf16, "device", ("mask,findings", ["--compile"])),
            ("eager bf16, CPU decode", everything, bf16, "cpu", everything_flat),
            (
                "eager bf16, nvJPEG, overlays",
                everything,
                bf16,
                "device",
                ("mask,findings,overlay", []),
            ),
        ]
    rows: list[dict[str, Any]] = []
    reference: Path | None = None
    for index, (label, inputs, precision, decode, (outputs, extra)) in enumerate(runs):
        if index and bench.elapsed() > s.budget_s:
            rows.append({"path": label, "error": "skipped: the time budget is spent"})
            continue
        out = s.work / f"predict-{index}"
        shutil.rmtree(out, ignore_errors=True)
        code, seconds = bench.ptxseg(
            f"predict-{index}",
            "predict",
            inputs,
            "-c",
            model,
            "-o",
            out,
            "--device",
            s.device,
            "--precision",
            precision,
            "--decode",
            decode,
            "--batch-size",
            s.batch_size,
            "--workers",
            s.workers,
            "--outputs",
            outputs,
            *extra,
        )
        row: dict[str, Any] = {"path": label, "command_s": round(seconds, 1)}
        record = out / "run.json"
        if code != 0 or not record.is_file():
            row["error"] = f"exit {code}"
            rows.append(row)
            continue
        info = json.loads(record.read_text())
        row.update(
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
        if reference is None:
            reference = out
        elif inputs == everything and empty[0] not in extra:
            row["dice_vs_reference"] = mask_dice(reference, out)
            row["max_probability_difference"] = peak_difference(reference, out)
        rows.append(row)
    notes = (
        f"Inputs: {data.predict_source}; model {model}. images_per_s: predicted images over "
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
    if bench.gpu:
        notes += " " + _input_agreement(data.predict_inputs, s.size, s.device)
    bench.write(
        "predict",
        f"ptxseg predict end to end: U-Net-{s.encoder} at {s.size} px, batch {s.batch_size}",
        rows,
        notes,
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


def last(values: list | None) -> Any:
    """The last of a per-epoch list (the steady epoch), or None."""
    return values[-1] if values else None


def loop_text(record: dict[str, Any]) -> str:
    """`reads 0.2, launch 3.1, device 0.4, hand_out 0.6, writers 9.8`, from run.json."""
    return format_loop(record.get("main_loop_s"))


def mask_dice(a: Path, b: Path) -> float:
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
    from ptxseg.data.device_images import decode_frames, to_model_inputs
    from ptxseg.inference.workers import read_input

    files = sorted(folder.glob("*.dcm"))[:n]
    cpu = [read_input(str(p), size, keep_frame=False) for p in files]
    dev = [read_input(str(p), size, keep_frame=True) for p in files]
    pairs = [(c, d) for c, d in zip(cpu, dev, strict=True) if d.frame is not None and not c.error]
    if not pairs:
        return "No JPEG Baseline frames to compare model inputs on."
    decoded = decode_frames([d.frame for _, d in pairs], device)
    small = to_model_inputs(decoded, size, [d.invert for _, d in pairs]).cpu().numpy()
    ref = np.stack([c.model_input for c, _ in pairs])
    diff = np.abs(small.astype(np.int16) - ref.astype(np.int16))
    return (
        f"Model inputs from nvJPEG + GPU resize against OpenCV on the CPU ({len(pairs)} files): "
        f"max difference {int(diff.max())} gray levels, {float((diff > 0).mean()):.4%} of "
        "pixels differ."
    )


# ---------------------------------------------------------------------------- backbones


def stage_backbones(bench: Bench) -> None:
    from ptxseg.benchmarks.backbones import BenchConfig, measure_isolated

    s = bench.s
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
    bench.write(
        "backbones",
        f"U-Net-{s.encoder} at {s.size} px, batch {s.batch_size}: eager against compiled",
        rows,
        "Random weights, inputs on the device. Inference under torch.inference_mode, training "
        "step = forward, BCE, backward, Adam (fused on a GPU). x_eager: ratio to eager NCHW "
        "bf16 (fp32 on the CPU). CUDA graphs: torch.compile mode reduce-overhead.",
    )


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
    dtype = torch.bfloat16 if bench.gpu else None
    model = random_unet(s.encoder, s.size)
    model = model.to(device).to(memory_format=torch.channels_last)
    x = torch.rand(s.batch_size, 1, s.size, s.size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    target = (torch.rand_like(x) > 0.9).float()
    # Compiled training is measured where it runs for real (the train stage); compiling a
    # second training graph here would cost a minute of the budget.
    variants = [("eager channels_last", model, True)]
    variants.append(("compiled channels_last", compile_function(model), False))
    if bench.gpu:
        variants.append(
            (
                "compiled + CUDA graphs (inference)",
                compile_function(model, "reduce-overhead"),
                False,
            )
        )
    rows = []
    for label, run, train in variants:
        row: dict[str, Any] = {"path": label + (" bf16" if dtype else " fp32")}
        try:
            model.eval()
            row["inference_images_per_s"] = round(
                _rate(lambda run=run: run(x), s.batch_size, device, dtype, inference=True), 1
            )
            if train:
                model.train()
                optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=bench.gpu or None)
                loss_fn = torch.nn.BCEWithLogitsLoss()

                def step(run=run, optimizer=optimizer, loss_fn=loss_fn) -> None:
                    loss = loss_fn(run(x).float(), target)
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)

                row["training_images_per_s"] = round(
                    _rate(step, s.batch_size, device, dtype, inference=False), 1
                )
        except Exception as err:  # noqa: BLE001
            row["error"] = f"{type(err).__name__}: {err}"[:200]
        rows.append(row)
    return rows


def _rate(fn, batch: int, device, dtype, inference: bool, warmup: int = 3, iters: int = 10):
    import contextlib

    import torch

    grad = torch.inference_mode() if inference else contextlib.nullcontext()
    cast = torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
    with grad, cast:
        for _ in range(warmup):
            fn()
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        _sync(device)
    return iters * batch / (time.perf_counter() - start)


# ---------------------------------------------------------------------------- serve


def stage_serve(bench: Bench, data: BenchData, model: Path | None) -> None:
    s = bench.s
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        bench.write("serve", "ptxseg serve start-up", [{"error": f"not installed: {err}"}])
        return
    model = _model_for_predict(bench, model)
    port = 18000 + os.getpid() % 1000
    command = [sys.executable, "-m", "ptxseg", "serve", "-c", str(model), "--port", str(port)]
    command += ["--device", s.device]
    log = open(bench.logs / "serve.log", "w")  # noqa: SIM115 - closed below
    start = time.perf_counter()
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_child_env())
    row: dict[str, Any] = {"device": s.device}
    try:
        url = f"http://127.0.0.1:{port}"
        ready = _wait_for(url + "/healthz", timeout=120, alive=lambda: server.poll() is None)
        row["ready_s"] = round(time.perf_counter() - start, 2) if ready else None
        if ready:
            sample = next(iter(sorted(data.predict_inputs.glob("*.dcm"))))
            t0 = time.perf_counter()
            status = _post_file(url + "/v1/predict?include=none", sample)
            row["first_request_s"] = round(time.perf_counter() - t0, 3)
            t0 = time.perf_counter()
            _post_file(url + "/v1/predict?include=none", sample)
            row["second_request_s"] = round(time.perf_counter() - t0, 3)
            row["status"] = status
        else:
            row["error"] = f"no answer within 120 s (log {bench.logs / 'serve.log'})"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    bench.write(
        "serve",
        f"ptxseg serve start-up: U-Net-{s.encoder} at {s.size} px",
        [row],
        "ready_s: from starting the command to the first answer of /healthz (the model is "
        "loaded and has run once by then). Requests: one DICOM, findings and RLE only.",
    )


def _wait_for(url: str, timeout: float, alive: Callable[[], bool]) -> bool:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline and alive():
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def _post_file(url: str, path: Path) -> int:
    boundary = "ptxsegbenchmarkboundary"
    body = (
        (
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="file"; filename="{path.name}"\r\n'
            "Content-Type: application/dicom\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        answer.read()
        return answer.status


# ---------------------------------------------------------------------------- writes


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


def stage_pipeline(bench: Bench, data: BenchData) -> None:
    """`predict_files` with a stand-in model: what readers, main loop and writers sustain."""
    from ptxseg.benchmarks.predict_pipeline import measure
    from ptxseg.inference.pipeline import FILES_PER_TASK

    s = bench.s
    inputs = sorted(data.predict_inputs.glob("*.dcm"))
    rows = []
    # (files per task, one lesion per mask, device work stubbed): without a GPU the device path
    # is also run with its tensor work stubbed out, to show the main loop's own cost there
    runs = [(1, False, False), (FILES_PER_TASK, False, False), (FILES_PER_TASK, True, False)]
    if not bench.gpu:
        runs += [(1, False, True), (FILES_PER_TASK, False, True)]
    for per_task, lesion, stub in runs:
        try:
            rows.append(
                measure(
                    inputs,
                    s.work / "pipeline",
                    size=s.size,
                    device=s.device,
                    batch_size=s.batch_size,
                    workers=s.workers,
                    per_task=per_task,
                    lesion=lesion,
                    stub_device=stub,
                )
            )
        except Exception as err:  # noqa: BLE001 - the row says what failed
            rows.append({"files_per_task": per_task, "error": f"{type(err).__name__}: {err}"})
    bench.write(
        "pipeline",
        f"predict without the model: {len(inputs)} DICOMs to masks and findings at "
        f"{s.size} px, batch {s.batch_size}",
        rows,
        "A stand-in model (constant logits: every mask empty, or one box of about 4% of the "
        "image each) in the real `predict_files`, outputs mask and findings: everything but "
        "the network. files_per_task: files a reader or writer process gets per message "
        "(`predict` uses 8 when the GPU decodes, 1 on the CPU path); main_cpu_ms_per_image: "
        "CPU time of the main process, its threads included, per image; main_loop: seconds "
        "the main loop waited for readers, launching batches, the device, handing out and "
        "writers. decode 'stubbed': the GPU path's "
        "readers and main loop with the device's work (decode, resize, model, masks) replaced by "
        "ready-made zeros, which shows the main loop's own cost on a machine without a GPU.",
    )


def stage_writes(bench: Bench, data: BenchData, tasks_per_kind: int | None = None) -> None:
    """Images/s of `predict`'s writer pool alone, per kind of mask, outputs mask and findings."""
    from ptxseg.inference.pipeline import Workers
    from ptxseg.inference.workers import WriteTask, read_input, write_outputs
    from ptxseg.model.operating_point import OperatingPoint

    s = bench.s
    source = sorted(data.predict_inputs.glob("*.dcm"))[0]
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
        count = tasks_per_kind or 16 * pool.write_slots
        for kind, mask in sample_masks(tuple(read.shape)).items():
            out = s.work / "writes" / kind.split()[0]
            shutil.rmtree(out, ignore_errors=True)
            task = WriteTask(
                path=str(source),
                image_id="",
                out_dir=str(out),
                outputs=("mask", "findings"),
                meta=read.meta,
                shape=tuple(read.shape),
                describer=describer,
            )
            task.mask_bits, task.peak = np.packbits(mask.ravel()), 0.9
            task.image_id = "serial"
            write_outputs(task)  # imports and caches warm in this process
            start = time.perf_counter()
            result = write_outputs(task)
            serial_ms = (time.perf_counter() - start) * 1000
            if result.error is not None:
                rows.append({"mask": kind, "error": result.error})
                continue
            # one task object per submission: the pool pickles them later, in its own thread
            warm = [replace(task, image_id=f"w{k}") for k in range(pool.write_slots)]
            for future in [pool.writers.submit(write_outputs, t) for t in warm]:
                future.result()  # every writer has imported what it needs
            start = time.perf_counter()
            futures = [
                pool.writers.submit(write_outputs, replace(task, image_id=f"m{k}"))
                for k in range(count)
            ]
            errors = sum(1 for f in futures if f.result().error is not None)
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "mask": kind,
                    "ms_per_image_one_process": round(serial_ms, 1),
                    "writer_processes": pool.write_slots,
                    "images": count,
                    "errors": errors,
                    "images_per_s": round(count / seconds, 1),
                }
            )
    bench.write(
        "writes",
        f"predict's writers alone: masks of {read.shape[1]}x{read.shape[0]}, mask and findings",
        rows,
        f"One real input's header ({source.name}); each image: findings (regions, size classes), "
        "the mask PNG, the findings JSON and the RLE, as `predict --outputs mask,findings` "
        "writes them. ms_per_image_one_process: one image in this process; images_per_s: the "
        "writer processes of `predict --workers N --decode device` together, after a warm-up.",
    )
