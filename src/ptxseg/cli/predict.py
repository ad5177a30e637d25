"""Commands: predict, export, benchmark-runtime."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import typer

from ptxseg.cli import errors, options
from ptxseg.cli.app import EXIT_INPUTS_FAILED, app, fail
from ptxseg.cli.guarded import MODEL, READ, TABLES, WALKED, Out, guarded, shard_lock
from ptxseg.util import path_guard


def stored_operating_point(checkpoint: Path | list[Path], name: str | None = None):
    """The operating point stored with a model, an ONNX file or an ensemble file (the default
    when it has none, and for a list of models); `name` picks a named one."""
    from ptxseg.inference.ensemble import read_operating_point
    from ptxseg.model.operating_point import DEFAULT

    if isinstance(checkpoint, list | tuple):
        return DEFAULT
    return read_operating_point(checkpoint, name) or DEFAULT


def one_or_many(checkpoints: list[Path]) -> Path | list[Path]:
    """One `--checkpoint` as a path, several as the list whose probabilities are averaged."""
    return checkpoints[0] if len(checkpoints) == 1 else list(checkpoints)


def _device(device: str) -> str:
    """`cuda` becomes `cuda:LOCAL_RANK` under torchrun, so each rank uses its own GPU."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


PREDICT_WRITES = (
    "masks",
    "findings",
    "overlays",
    "seg",
    "sr",
    "explain",
    "summary*.csv",
    "submission*.csv",
    "run*.json",
    path_guard.MADE_BY,
    ".ptxseg*",
)


@app.command(rich_help_panel="Prediction and export")
@guarded(
    inputs={"inputs": WALKED, "checkpoint": MODEL},
    outputs={"out": Out(owns=PREDICT_WRITES, lock=shard_lock("shard"))},
)
def predict(
    inputs: list[Path] = typer.Argument(
        ..., help="DICOM, PNG or JPEG files and folders (searched recursively), mixed."
    ),
    checkpoint: list[Path] = typer.Option(..., "--checkpoint", "-c", help=options.CHECKPOINTS_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    runtime: str = options.RUNTIME,
    precision: str = options.PRECISION,
    batch_size: int = typer.Option(4, min=1, help="Images per model call."),
    device: str = typer.Option("cpu", help="cpu or cuda (torch runtime)."),
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
    max_megapixels: float = typer.Option(
        60.0, help=options.MAX_MEGAPIXELS_HELP, callback=options.positive_number
    ),
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
    from ptxseg.inference import pipeline, record
    from ptxseg.inference.seg import InvalidSourceUIDWarning
    from ptxseg.util.shards import parse_shard, take_shard
    from ptxseg.util.system import process_age_s

    started = time.perf_counter()
    at_command = process_age_s()
    console = Console(stderr=True)
    # Invalid header values are frequent in real data; each image's findings JSON lists them.
    warnings.filterwarnings("ignore", category=DicomHeaderWarning)
    warnings.filterwarnings("ignore", category=InvalidSourceUIDWarning)
    try:
        index, count = parse_shard(shard)
        extra = ["seg"] * seg + ["sr"] * sr + ["explain"] * explain
        chosen = pipeline.parse_outputs(outputs.split(",") + extra)
        if decode not in pipeline.DECODERS:
            raise ValueError(f"--decode {decode!r}: expected {', '.join(pipeline.DECODERS)}")
        files = pipeline.collect_inputs(inputs, skip=[out])
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    if not files:
        fail(f"no DICOM, PNG or JPEG files found in {', '.join(map(str, inputs))}")
    checkpoint = one_or_many(checkpoint)
    # The worker processes start (and import what they need) while the model loads.
    torch_runtime = runtime in ("torch", "auto")  # auto is torch on a GPU
    device_decode = decode != "cpu" and torch_runtime and device.startswith("cuda")
    pool = pipeline.Workers(
        pipeline.default_workers() if workers is None else workers, device_decode
    )
    startup = {"workers_launched_s": round(time.perf_counter() - started, 3)}
    try:
        import torch  # noqa: F401 - timed on its own: the largest import

        from ptxseg.model.acceleration import DeviceWarmUp

        startup["torch_imported_s"] = round(time.perf_counter() - started, 3)
        # The CUDA context is made in a thread while the model's libraries import and it loads.
        warm = DeviceWarmUp(_device(device) if torch_runtime else "cpu", started)
        from ptxseg.inference import choice
        from ptxseg.inference.int8 import ladder

        startup["predictor_imported_s"] = round(time.perf_counter() - started, 3)

        op = None
        if any(v is not None for v in (threshold, top, bottom, min_area)):
            op = stored_operating_point(checkpoint, operating_point).with_overrides(
                **options.overrides(threshold, top, bottom, min_area)
            )
        check_n = 4 * int8_calibration if precision == "int8" else choice.CHECK_IMAGES
        predictor = choice.build_predictor(
            checkpoint,
            runtime,
            precision,
            _device(device),
            operating_point=op,
            tta=tta,
            batch_size=batch_size,
            images=lambda size, config: choice.default_check_images(config, size, files, check_n),
            compile=compile,
            compile_mode=compile_mode,
            operating_point_name=operating_point,
            progress=lambda m: console.print(f"checking {choice.describe_measurement(m)}"),
            **({"int8_recipes": ladder(int8_calibration)} if precision == "int8" else {}),
        )
        model_ready = time.perf_counter() - started
        asked = {
            "runtime": runtime,
            "precision": precision,
            "device": device,
            "tta": tta,
            "threshold": threshold,
            "top": top,
            "bottom": bottom,
            "min_area": min_area,
            "outputs": list(chosen),
            "decode": decode,
            "compile": compile_mode if compile else False,
            "batch_size": batch_size,
            "int8_calibration": int8_calibration if precision == "int8" else None,
        }
        made = record.settings(
            predictor,
            checkpoint,
            asked,
            outputs=list(chosen),
            decode="device" if pipeline.use_device_decoder(predictor, decode) else "cpu",
            compile=compile_mode if compile else False,
            int8_calibration=asked["int8_calibration"],
        )
        record.claim(out, made, overwrite)
        if warm.wait() is not None:
            startup["cuda_ready_s"] = warm.ready_s
        mine = take_shard(files, index, count)
        console.print(f"path: {predictor.path_choice['line']}", soft_wrap=True)
        console.print(
            f"{len(mine)} of {len(files)} inputs (shard {index}/{count}); {predictor.runtime} "
            f"{predictor.precision} "
            f"on {predictor.device}{' compiled' if compile else ''}, {predictor.encoder} at "
            f"{predictor.input_size}, TTA {predictor.tta}, operating point "
            f"{predictor.operating_point_name}: {predictor.operating_point.describe()}"
        )
        result = pipeline.predict_files(
            predictor,
            mine,
            out,
            outputs=chosen,
            pool=pool,
            decode=decode,
            skip_existing=not overwrite,
            shard_index=index,
            shard_count=count,
            max_pixels=int(max_megapixels * 1e6),
        )
    except (ValueError, FileNotFoundError, ImportError) as err:  # SettingsChanged too
        fail(str(err))
    finally:
        pool.close()
    positives = sum(1 for r in result.rows if str(r.get("pneumothorax")) == "True")
    rate = f"{result.images_per_s:.1f} images/s end to end" if result.images_per_s else "-"
    if result.steady_images_per_s:
        rate += f" ({result.steady_images_per_s:.1f} after the first result)"
    first = result.first_result_s
    if result.replaced:
        console.print(
            f"{result.replaced} inputs changed since they were predicted into {out}: "
            "predicted again"
        )
    console.print(
        f"predicted {result.predicted}, skipped (already done) {result.skipped}, "
        f"errors {result.errors}; {positives} with pneumothorax. {result.seconds:.1f} s, {rate}"
        + (f", first result {first:.1f} s after start" if first is not None else "")
        + f" (decoded on the {'GPU' if result.decoder == 'device' else 'CPU'}). Results in {out}"
    )
    pipeline.write_run_record(
        result,
        out / pipeline.table_name("run", index, count, "json"),
        {
            "process_age_at_command_s": round(at_command, 3) if at_command is not None else None,
            "model_ready_after_command_s": round(model_ready, 3),
            # where the start-up goes: seconds after the command started that each step ended
            "startup_after_command_s": startup,
            "runtime": runtime,
            "precision": precision,
            "inference_path": predictor.path_choice,
            "device": str(predictor.device),
            "compiled": compile_mode if compile else False,
            "batch_size": batch_size,
            "workers": pool.count,
            "outputs": list(chosen),
            "encoder": predictor.encoder,
            "input_size": predictor.input_size,
            **operating_point_record(predictor),
        },
    )
    failed = [(row["file"], row["error"]) for row in result.rows if row["status"] == "error"]
    for line in errors.summarise(failed, where=f"{out}/summary.csv"):
        console.print(Text("error ", style="yellow") + Text(line), soft_wrap=True)
    if result.errors:
        raise typer.Exit(EXIT_INPUTS_FAILED)  # listed above and in summary.csv


def operating_point_record(predictor) -> dict:
    """What run.json says about the decision rule: the point's name, values and calibrator."""
    calibrator = predictor.calibrator
    return {
        "operating_point_name": predictor.operating_point_name,
        "operating_point": predictor.operating_point.to_dict(),
        "calibrator": None if calibrator is None else calibrator.describe(),
    }


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
    from ptxseg.inference.ensemble import (
        EnsembleError,
        ensemble_file,
        export_ensemble_folder,
        is_ensemble,
        load_ensemble,
    )
    from ptxseg.inference.export import FORMATS, ParityError, export_onnx
    from ptxseg.model.checkpoint import export_inference_model, load_model

    if format not in FORMATS:
        raise typer.BadParameter(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    several = len(checkpoint) > 1
    source = ensemble_file(checkpoint[0]) if is_ensemble(checkpoint[0]) else checkpoint[0]
    if several and out is None:
        raise typer.BadParameter("several --checkpoint: give --out for the exported ensemble")
    if format == "safetensors":
        target = out or source.with_name(source.stem + "-model")
        try:
            if several:
                raise ValueError(
                    "--format safetensors of several models: write an ensemble file first "
                    "(`ptxseg ensemble MODEL... --out ensemble.json`) and export that"
                )
            if is_ensemble(source):
                export_ensemble_folder(source, target)
            else:
                export_inference_model(source, target)
        except (ValueError, FileNotFoundError, FileExistsError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"wrote {target}/ (model.safetensors, config.json, ptxseg.json)")
        return
    target = out or source.with_suffix(".onnx")
    try:
        if several or is_ensemble(source):
            model = load_ensemble(list(checkpoint) if several else source)
        else:
            model = load_model(source)
        info = export_onnx(model, target, opset=opset)
    except (ParityError, ValueError, FileNotFoundError, EnsembleError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"wrote {target} ({info['encoder']} at {info['input_size']}, opset {opset}); parity vs "
        f"PyTorch: max probability difference {info['max_probability_difference']:.2e}"
    )
    if int8:
        _export_int8(target, data, images or [], int8_calibration)


def _export_int8(target: Path, data: Path | None, inputs: list[Path], n: int) -> None:
    """`target`.int8.onnx, made and checked by the Predictor's int8 path (atomically)."""
    from ptxseg.inference import choice
    from ptxseg.inference.int8 import ladder
    from ptxseg.inference.pipeline import collect_inputs
    from ptxseg.inference.runtimes import cpu_precision_plan
    from ptxseg.util import atomic

    out = target.with_suffix(".int8.onnx")

    def real_images(size: int, config: dict) -> choice.CheckImages:
        found = choice.default_check_images(config, size, files, 4 * n, data)
        if not found.real:
            raise ValueError(
                "--int8 checks int8 masks against fp32 on real images: give --data WORK (its "
                "validation split) or --images FILES; the model's own work folder was not found"
            )
        return found

    try:
        files = collect_inputs(inputs) if inputs else []
        predictor = choice.build_predictor(
            target, "onnxruntime", "int8", images=real_images, int8_recipes=ladder(n)
        )
        check = predictor.int8_check
        atomic.write_bytes(out, Path(predictor.onnx_path).read_bytes())
    except (ValueError, FileNotFoundError, ImportError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    kept = check.kept
    note = cpu_precision_plan("int8")["note"] or "full 8 bits for CPUs with VNNI, as this one"
    typer.echo(
        f"wrote {out} (int8: masks at Dice {kept.agreement.dice:.3f} vs fp32 on "
        f"{kept.agreement.images} images of {check.source}; {kept.recipe.name}: "
        f"{kept.recipe.describe()}; {note})"
    )


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
