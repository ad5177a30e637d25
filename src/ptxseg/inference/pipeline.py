"""`predict` as a library call: `run(PredictRequest) -> RunResult`.

The command only parses its options into a request; everything a run does beyond the main loop
is here, in order: the worker processes start (and import what they need) while the model loads
and the CUDA context is made in a thread; the Predictor is built once from the request's
`PredictorSpec` (`ptxseg.inference.choice.build_predictor`; `cuda` becomes this rank's GPU under
torchrun); the output folder's record is checked and written (`ptxseg.inference.record`); this
shard of the sorted inputs (`ptxseg.util.shards`) goes through the main loop
(`ptxseg.inference.main_loop.predict_files`); and `run.json` records the counts, the start-up
timings and what ran (`ptxseg.inference.run_record`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptxseg.data.device_images import DECODERS
from ptxseg.inference.device_batch import use_device_decoder
from ptxseg.inference.inputs import DEFAULT_OUTPUTS, collect_inputs, parse_outputs, table_name
from ptxseg.inference.main_loop import (
    LoopOptions,
    Workers,
    default_workers,
    predict_files,
)
from ptxseg.inference.run_record import RunResult, operating_point_record, write_run_record
from ptxseg.inference.spec import PredictorSpec


@dataclass(frozen=True)
class PredictRequest:
    """What `ptxseg predict` was asked: the `inputs` (files and folders), the `out` folder, the
    model and how to run it (`spec`), the `outputs` to write, where to `decode`, this `shard`
    ('i/n' or 'auto'), the `workers` (None: one per core), whether to `overwrite` a folder of
    other settings, int8's calibration images, the largest image header accepted, and `report`,
    which prints a line for the user."""

    inputs: Sequence[Path]
    out: Path
    spec: PredictorSpec
    outputs: Sequence[str] = DEFAULT_OUTPUTS
    decode: str = "auto"
    shard: str | None = None
    workers: int | None = None
    overwrite: bool = False
    int8_calibration: int = 8
    max_megapixels: float = 60.0
    report: Callable[[str], None] = field(default=print, repr=False)


def torchrun_device(device: str) -> str:
    """`cuda` becomes `cuda:LOCAL_RANK` under torchrun, so each rank uses its own GPU."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


@dataclass
class _Startup:
    """When each start-up step ended, in seconds after the command started."""

    started: float = field(default_factory=time.perf_counter)
    steps: dict[str, float] = field(default_factory=dict)

    def mark(self, step: str) -> float:
        self.steps[step] = round(time.perf_counter() - self.started, 3)
        return self.steps[step]


def run(request: PredictRequest) -> RunResult:
    """Predict the request's inputs into its folder; returns the run's counts and rows.

    Raises ValueError (a usage error, a folder of other settings: `record.SettingsChanged`),
    FileNotFoundError or ImportError, each in one line for the user."""
    from ptxseg.util.shards import parse_shard, take_shard
    from ptxseg.util.system import process_age_s

    startup = _Startup()
    at_command = process_age_s()
    index, count = parse_shard(request.shard)
    chosen = parse_outputs(list(request.outputs))
    if request.decode not in DECODERS:
        raise ValueError(f"--decode {request.decode!r}: expected {', '.join(DECODERS)}")
    files = collect_inputs(request.inputs, skip=[request.out])
    if not files:
        raise ValueError(
            f"no DICOM, PNG or JPEG files found in {', '.join(map(str, request.inputs))}"
        )
    spec = request.spec
    # The worker processes start (and import what they need) while the model loads.
    torch_runtime = spec.runtime in ("torch", "auto")  # auto is torch on a GPU
    device_decode = request.decode != "cpu" and torch_runtime and spec.device.startswith("cuda")
    workers = default_workers() if request.workers is None else request.workers
    pool = Workers(workers, device_decode)
    startup.mark("workers_launched_s")
    try:
        predictor = _predictor(request, files, startup, torch_runtime)
        model_ready = time.perf_counter() - startup.started
        _claim(request, predictor, chosen)
        mine = take_shard(files, index, count)
        _announce(request, predictor, f"{len(mine)} of {len(files)} inputs (shard {index}/{count})")
        options = LoopOptions(
            outputs=chosen,
            pool=pool,
            decode=request.decode,
            skip_existing=not request.overwrite,
            shard_index=index,
            shard_count=count,
            max_pixels=int(request.max_megapixels * 1e6),
        )
        result = predict_files(predictor, mine, request.out, options)
    finally:
        pool.close()
    extra = {
        "process_age_at_command_s": round(at_command, 3) if at_command is not None else None,
        "model_ready_after_command_s": round(model_ready, 3),
        # where the start-up goes: seconds after the command started that each step ended
        "startup_after_command_s": startup.steps,
        **_ran(request, predictor, pool, chosen),
    }
    write_run_record(result, request.out / table_name("run", index, count, "json"), extra)
    return result


def _predictor(request: PredictRequest, files, startup: _Startup, torch_runtime: bool):
    """The Predictor of the request's spec (the CUDA context made meanwhile, in a thread)."""
    import torch  # noqa: F401 - timed on its own: the largest import

    from ptxseg.model.acceleration import DeviceWarmUp

    startup.mark("torch_imported_s")
    spec = request.spec.replace(device=torchrun_device(request.spec.device))
    warm = DeviceWarmUp(spec.device if torch_runtime else "cpu", startup.started)
    from ptxseg.inference import choice
    from ptxseg.inference.int8 import ladder

    startup.mark("predictor_imported_s")
    int8 = spec.precision == "int8"
    n = 4 * request.int8_calibration if int8 else choice.CHECK_IMAGES
    hooks = choice.ChoiceHooks(
        images=lambda size, config: choice.default_check_images(config, size, files, n),
        progress=lambda m: request.report(f"checking {choice.describe_measurement(m)}"),
        int8_recipes=ladder(request.int8_calibration) if int8 else None,
    )
    predictor = choice.build_predictor(spec, hooks)
    if warm.wait() is not None:
        startup.steps["cuda_ready_s"] = warm.ready_s
    return predictor


def _asked(request: PredictRequest, chosen: Sequence[str]) -> dict[str, Any]:
    """The raw option values that change results, as the folder's record keeps them."""
    spec = request.spec
    asked = spec.asked()
    return {
        **asked,
        "outputs": list(chosen),
        "decode": request.decode,
        "compile": spec.compile_mode if spec.compile else False,
        "batch_size": spec.batch_size,
        "int8_calibration": request.int8_calibration if spec.precision == "int8" else None,
    }


def _claim(request: PredictRequest, predictor, chosen: Sequence[str]) -> None:
    """Check the output folder's record against these settings, then record them."""
    from ptxseg.inference import record

    asked = _asked(request, chosen)
    made = record.settings(
        predictor,
        asked,
        outputs=list(chosen),
        decode="device" if use_device_decoder(predictor, request.decode) else "cpu",
        compile=asked["compile"],
        int8_calibration=asked["int8_calibration"],
    )
    record.claim_folder(request.out, made, request.overwrite)


def _announce(request: PredictRequest, predictor, inputs: str) -> None:
    """The path that runs and why, then the inputs and the settings, one line each."""
    compiled = " compiled" if request.spec.compile else ""
    request.report(f"path: {predictor.path_choice['line']}")
    request.report(
        f"{inputs}; {predictor.runtime} {predictor.precision} on {predictor.device}{compiled}, "
        f"{predictor.encoder} at {predictor.input_size}, TTA {predictor.tta}, operating point "
        f"{predictor.operating_point_name}: {predictor.operating_point.describe()}"
    )


def _ran(request: PredictRequest, predictor, pool: Workers, chosen) -> dict[str, Any]:
    """What run.json says about what ran: asked runtime and precision, the path, the device."""
    spec = request.spec
    return {
        "runtime": spec.runtime,
        "precision": spec.precision,
        "inference_path": predictor.path_choice,
        "device": str(predictor.device),
        "compiled": spec.compile_mode if spec.compile else False,
        "batch_size": spec.batch_size,
        "workers": pool.count,
        "outputs": list(chosen),
        "encoder": predictor.encoder,
        "input_size": predictor.input_size,
        **operating_point_record(predictor),
    }
