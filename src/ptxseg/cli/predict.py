"""Commands: predict, export, benchmark-runtime."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer

from ptxseg.cli import errors, options
from ptxseg.cli.app import EXIT_INPUTS_FAILED, app, fail
from ptxseg.cli.guarded import MODEL, READ, TABLES, WALKED, Out, guarded, shard_lock
from ptxseg.util import path_guard
from ptxseg.util.run_folders import PREDICT_WRITES


@app.command(rich_help_panel="Prediction and export")
@guarded(
    inputs={"inputs": WALKED, "checkpoint": MODEL},
    outputs={"out": Out(owns=PREDICT_WRITES, lock=shard_lock("shard"))},
)
def predict(
    inputs: list[Path] = typer.Argument(
        ..., help="DICOM, PNG or JPEG files and folders (searched recursively), mixed."
    ),
    checkpoint: list[Path] = options.CHECKPOINTS,
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    runtime: str = options.RUNTIME,
    precision: str = options.PRECISION,
    batch_size: int = typer.Option(4, min=1, help="Images per model call."),
    device: str = options.DEVICE,
    tta: str | None = options.TTA,
    operating_point: str | None = options.OPERATING_POINT,
    threshold: float | None = options.THRESHOLD,
    top: float | None = options.TOP,
    bottom: float | None = options.BOTTOM,
    min_area: int | None = options.MIN_AREA,
    outputs: str = typer.Option(
        "mask,findings,overlay",
        help="What to write per image: mask, findings, overlay, seg (DICOM SEG of positive "
        "DICOMs), sr (DICOM SR of every DICOM), explain (Grad-CAM). Masks and findings are "
        "always written.",
    ),
    seg: bool = typer.Option(False, "--seg", help="Also write a DICOM SEG (same as adding seg)."),
    sr: bool = typer.Option(
        False,
        "--sr",
        help="Also write a DICOM SR (TID 1500 measurement report) per DICOM: sr/<ImageId>.dcm "
        "(same as adding sr).",
    ),
    explain: bool = typer.Option(
        False, "--explain", help="Also write Grad-CAM heatmaps (same as adding explain)."
    ),
    decode: str = typer.Option(
        "auto",
        help="Where images are decoded and resized: cpu (worker processes), device (in batches "
        "on the model's device: nvJPEG on a GPU for JPEG Baseline DICOMs), or auto (device for "
        "the torch runtime on a GPU, else cpu).",
    ),
    compile: bool = typer.Option(
        False,
        "--compile/--no-compile",
        help="torch.compile the model (torch runtime): faster per batch on a GPU after a "
        "compilation of a minute or so; pays off for large archives.",
    ),
    compile_mode: str = typer.Option(
        "default",
        help="torch.compile mode with --compile: default, or reduce-overhead (adds CUDA graphs: "
        "fewer launches per batch, more GPU memory), max-autotune, max-autotune-no-cudagraphs.",
    ),
    shard: str | None = typer.Option(
        None,
        help="'i/n': predict the i-th of n shards of the sorted inputs (0-based); 'auto' "
        "reads torchrun's RANK/WORLD_SIZE or a Slurm array's task id and count.",
    ),
    workers: int = typer.Option(
        None,
        help="Processes reading and writing beside the model (default: one per core; 0: none, "
        "all in this process).",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Predict every image again, even those already done in --out, and record these "
        "settings there (a rerun with other settings is refused without it).",
    ),
    int8_calibration: int = typer.Option(
        8,
        help="int8: calibrate on this many images (the validation split of the model's work "
        "folder, else the first of the unsharded, sorted inputs); the int8 masks are checked "
        "against fp32 on 4 times as many.",
    ),
    max_megapixels: float = options.MAX_MEGAPIXELS,
) -> None:
    """Predict masks, overlays and findings for chest X-rays; write summary and submission CSVs.

    Exit code 0 when every input was predicted, 1 when some failed (listed, and in summary.csv),
    2 for a usage error.

    A rerun into the same --out predicts only what is missing, and again any input file that
    changed since; it refuses when the model or a setting that changes results differs from what
    made the folder (made-by.json), unless --overwrite. --out may lie inside an input folder:
    the search for inputs skips it.

    Example: ptxseg predict scans/ --checkpoint runs/r50/model --out results/ --seg --sr
    """
    from rich.console import Console
    from rich.text import Text

    from ptxseg.data.dicom import DicomHeaderWarning
    from ptxseg.inference import pipeline
    from ptxseg.inference.run_record import outcome_line
    from ptxseg.inference.seg import InvalidSourceUIDWarning

    console = Console(stderr=True)
    # Invalid header values are frequent in real data; each image's findings JSON lists them.
    warnings.filterwarnings("ignore", category=DicomHeaderWarning)
    warnings.filterwarnings("ignore", category=InvalidSourceUIDWarning)
    spec = options.predictor_spec(
        checkpoint,
        runtime,
        precision,
        device,
        tta,
        batch_size,
        operating_point,
        overrides=options.overrides(threshold, top, bottom, min_area),
        compile=compile,
        compile_mode=compile_mode,
    )
    request = pipeline.PredictRequest(
        inputs,
        out,
        spec,
        outputs.split(",") + ["seg"] * seg + ["sr"] * sr + ["explain"] * explain,
        decode,
        shard,
        workers,
        overwrite,
        int8_calibration,
        max_megapixels,
        report=lambda line: console.print(line, soft_wrap=True),
    )
    try:
        result = pipeline.run(request)
    except (ValueError, FileNotFoundError, ImportError) as err:  # SettingsChanged too
        fail(str(err))
    if result.replaced:
        console.print(
            f"{result.replaced} inputs changed since they were predicted into {out}: "
            "predicted again"
        )
    console.print(outcome_line(result))
    failed = [(row["file"], row["error"]) for row in result.rows if row["status"] == "error"]
    for line in errors.summarise_failures(failed, where=f"{out}/summary.csv"):
        console.print(Text("error ", style="yellow") + Text(line), soft_wrap=True)
    if result.errors:
        raise typer.Exit(EXIT_INPUTS_FAILED)  # listed above and in summary.csv


def _exported(params) -> list:
    """The files export writes: --out, or its default beside the model; the int8 copy."""
    from ptxseg.cli.guarded import model_inputs

    first = params["checkpoint"][0]
    source = (
        model_inputs(first)[0]
        if first.is_dir() and not (first / "ptxseg.json").is_file()
        else first
    )
    if params["format"] == "safetensors":
        return [(params["out"] or source.with_name(source.stem + "-model"), path_guard.REPLACE)]
    target = params["out"] or source.with_suffix(".onnx")
    extra = [(target.with_suffix(".int8.onnx"), path_guard.FILE)] if params["int8"] else []
    return [(target, path_guard.FILE), *extra]


@app.command(rich_help_panel="Prediction and export")
@guarded(
    inputs={"checkpoint": MODEL, "data": READ, "images": WALKED},
    outputs={"out": Out(paths=_exported)},
)
def export(
    checkpoint: list[Path] = typer.Option(
        ...,
        "--checkpoint",
        "-c",
        help="A .ckpt from `ptxseg train` or a model folder; an ensemble file, a cv folder, or "
        "this option repeated for an ensemble.",
    ),
    format: str = typer.Option(
        "onnx",
        "--format",
        help="onnx (a file for ONNX Runtime / OpenVINO; an ensemble becomes one graph that "
        "averages its members' probabilities) or safetensors (an inference-model folder: "
        "weights, config and operating point, no optimizer state; an ensemble becomes a folder "
        "of member folders and its ensemble.json).",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output file or folder (default: CKPT.onnx or CKPT-model/)."
    ),
    opset: int = typer.Option(17, help="ONNX opset version."),
    int8: bool = typer.Option(
        False,
        "--int8",
        help="Also write an int8 (static QDQ) copy next to it (*.int8.onnx), calibrated and "
        "checked against fp32's masks on real images (--data, else the model's work folder, "
        "else --images); refused, with the numbers, when they agree below Dice 0.99.",
    ),
    data: Path | None = typer.Option(
        None, help="--int8: a work folder whose validation split calibrates and checks int8."
    ),
    images: list[Path] | None = typer.Option(
        None,
        "--images",
        help="--int8: DICOM/PNG/JPEG files or folders to calibrate and check int8 with, when "
        "no work folder is at hand (repeatable).",
    ),
    int8_calibration: int = typer.Option(
        8, help="--int8: calibrate on this many images; check on 4 times as many."
    ),
) -> None:
    """Export a model: ONNX (dynamic batch, [0, 1] input, logits) with a parity check through
    the Predictor, or an inference-model folder in safetensors.

    Example: ptxseg export --checkpoint best.ckpt --format onnx --out model.onnx
    """
    from ptxseg.inference.export import ExportRequest, ParityError, export_model

    if format not in ("onnx", "safetensors"):
        raise typer.BadParameter(f"--format {format!r}: expected one of onnx, safetensors")
    if len(checkpoint) > 1 and out is None:
        raise typer.BadParameter("several --checkpoint: give --out for the exported ensemble")
    request = ExportRequest(
        checkpoint, format, out, opset, int8, data, images or [], int8_calibration
    )
    try:
        export_model(request, report=typer.echo)
    except (ParityError, ValueError, FileNotFoundError, FileExistsError, ImportError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None


@app.command("benchmark-runtime", rich_help_panel="Benchmarks")
@guarded(inputs={"checkpoint": MODEL, "work": READ, "dicom_dir": READ}, outputs={"out": TABLES})
def benchmark_runtime(
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", "-c", help="A .ckpt to measure (default: random-weight --encoder)."
    ),
    encoder: list[str] = typer.Option(
        ["resnet50"], help="Encoder(s) with random weights when no checkpoint is given."
    ),
    size: int = typer.Option(512, help="Model input size (multiple of 32)."),
    batch_size: int = typer.Option(4, min=1, help="Images per model call."),
    runtimes: list[str] | None = typer.Option(
        None, "--runtimes", help="Limit to these runtimes or path names (repeatable)."
    ),
    out: Path = typer.Option(Path("benchmarks/results"), help="Folder for the .md/.csv table."),
    work: Path | None = typer.Option(
        None, help="Prepared work folder: compare masks on its test split, calibrate on train."
    ),
    dicom_dir: Path | None = typer.Option(
        None, help="DICOM folder for the end-to-end predict rate (default: 16 synthetic DICOMs)."
    ),
    end_to_end: bool = typer.Option(
        True, help="Also time `predict` end to end on DICOMs (eager fp32 and the auto path)."
    ),
    min_time: float = typer.Option(3.0, help="Seconds to time each path at least."),
    rounds: int = typer.Option(
        3, min=1, help="Time the paths in turn this many times over (median reported)."
    ),
    int8_remedies: bool = typer.Option(
        False,
        "--int8-remedies",
        help="Add an onnxruntime int8 row per recipe of int8's remedy ladder (per-channel "
        "weights, layers kept in fp32, percentile/entropy calibration, more images).",
    ),
) -> None:
    """Time PyTorch eager fp32 against ONNX Runtime, OpenVINO, bf16 and int8 side by side.

    Example: ptxseg benchmark-runtime --encoder resnet50 --size 512 --batch-size 4
    """
    from rich.console import Console

    from ptxseg.benchmarks import cpu_runtimes as rb

    console = Console(stderr=True)
    names = [""] if checkpoint else encoder
    models = [rb.runtime_benchmark_model(name, size, checkpoint) for name in names]
    options = rb.RuntimeBenchOptions(
        batch_size, runtimes, work, min_time, int8_remedies=int8_remedies, rounds=rounds
    )
    rows = rb.runtime_benchmark_rows(
        models,
        options,
        dicom_dir,
        end_to_end,
        progress=lambda r: console.print(
            f"{r.get('encoder', '')} {r['path']}: {r.get('images_per_s', '')} images/s "
            f"{r.get('error', '')}"
        ),
    )
    source = rb.runtime_table_note(work, int(models[-1].input_size))
    path = rb.write_tables(rows, out, note=source)
    typer.echo(path.read_text())
