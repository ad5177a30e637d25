"""Inference runtimes side by side: PyTorch eager fp32 vs ONNX Runtime / OpenVINO vs bf16 / int8.

One run measures every path through the `Predictor` (8-bit input to probabilities, as predict
and serve run it) on the same model, input size and batch, so the ratios to the baseline, eager
fp32, hold even on a noisy machine. Each row gives images/s, the ratio to eager fp32, the GFLOP/s
achieved and its share of the CPU's nominal fp32 peak (`cpu_peak_gflops`: physical cores x the
FLOP/cycle of the CPU's widest FMA x clock, its assumptions named under the table), the Dice of
the path's masks (at the model's operating point) against the fp32 masks, so a faster path states
how far its output moved, and which path `--runtime auto` would choose from these numbers
(`ptxseg.inference.choice.decide`). int8 rows are made as `predict --precision int8` makes them:
calibrated and checked on the validation split (`ptxseg.inference.int8`), reported on the test
split; `int8_remedies` adds a row per recipe of the remedy ladder. A path that fails, is refused,
or that this CPU cannot run well (see `inference.runtimes.cpu_precision_plan`), gets an `error`
cell.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg.benchmarks.common import add_ratios, error_text, timed, write_table
from ptxseg.util.system import CpuInfo, cpu_info, physical_cores, usable_cores

# (name, runtime, precision, options)
PATHS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("torch eager fp32", "torch", "fp32", {"channels_last": False}),
    ("torch fp32 channels_last", "torch", "fp32", {"channels_last": True}),
    ("onnxruntime fp32", "onnxruntime", "fp32", {}),
    ("openvino fp32", "openvino", "fp32", {}),
    ("torch bf16 (autocast)", "torch", "bf16", {"channels_last": True}),
    ("openvino bf16", "openvino", "bf16", {}),
    ("onnxruntime int8 (static QDQ)", "onnxruntime", "int8", {}),
    ("openvino int8 (QDQ model)", "openvino", "int8", {}),
]
COLUMNS = {
    "path": "Path",
    "encoder": "Encoder",
    "size": "Size",
    "batch_size": "Batch",
    "images_per_s": "Images/s",
    "rate_range": "Images/s range (rounds)",
    "speedup": "x eager fp32",
    "gflops_per_s": "GFLOP/s",
    "peak_share": "Share of fp32 peak",
    "dice_vs_fp32": "Dice vs fp32",
    "check_dice": "Dice vs fp32 on the int8 check",
    "auto": "auto",
    "recipe": "int8 recipe",
    "error": "Error",
}
AUTO_MARK = "chosen"


BASELINE = "torch eager fp32"
AUTO_PATHS = {
    "torch fp32 channels_last": ("torch", "fp32"),
    "onnxruntime fp32": ("onnxruntime", "fp32"),
    "openvino fp32": ("openvino", "fp32"),
    "torch bf16 (autocast)": ("torch", "bf16"),
    "openvino bf16": ("openvino", "bf16"),
    "onnxruntime int8 (static QDQ)": ("onnxruntime", "int8"),
    "openvino int8 (QDQ model)": ("openvino", "int8"),
}
"""The rows that are paths `--runtime auto` may choose (predict's torch path is channels_last)."""


def cpu_mhz() -> float:
    """The highest current clock of the CPU's cores in MHz (0 when unknown)."""
    try:
        with open("/proc/cpuinfo") as handle:
            values = [float(line.split(":")[1]) for line in handle if line.startswith("cpu MHz")]
    except OSError:
        return 0.0
    return max(values) if values else 0.0


def flop_per_cycle(cpu: CpuInfo) -> tuple[int, str]:
    """fp32 FLOP per cycle and core of the CPU's widest FMA, and the assumption behind it: the
    flags show the instruction set, not how wide the units that run it are."""
    if "avx512f" in cpu.flags and "AMD" in cpu.model.upper():
        return 32, (
            "AVX-512 run as two 256-bit halves: 2 FMA units x 8 fp32 lanes x 2 (AMD Zen 4; an "
            "assumption, as the flags do not show it: Zen 5 server cores run 512 bits whole, 64)"
        )
    if "avx512f" in cpu.flags:
        return 64, (
            "AVX-512: 2 FMA units x 16 fp32 lanes x 2 (an assumption: Xeons with one 512-bit "
            "FMA unit reach half)"
        )
    if "avx2" in cpu.flags and "fma" in cpu.flags:
        return 32, (
            "AVX2: 2 FMA units x 8 fp32 lanes x 2 (an assumption: cores with 128-bit units, "
            "such as AMD Zen 1, reach half)"
        )
    return 16, "no AVX2/FMA: 128-bit SSE, 2 units x 4 fp32 lanes x 2"


def cpu_peak_gflops(
    cores: int | None = None, mhz: float | None = None, cpu: CpuInfo | None = None
) -> tuple[float, str]:
    """Nominal fp32 peak: physical cores x FLOP/cycle of the ISA (`flop_per_cycle`) x clock, and
    the text that says how it was counted. Logical CPUs that share a core (SMT) count once."""
    cpu = cpu or cpu_info()
    logical = usable_cores()
    cores = physical_cores() if cores is None else cores
    mhz = cpu_mhz() if mhz is None else mhz
    flop, assumption = flop_per_cycle(cpu)
    counted = f"{cores} cores ({logical} logical CPUs; those that share a core count once)"
    if "hypervisor" in cpu.flags:
        counted += (
            "; a virtual machine, whose vCPUs may be SMT siblings of fewer physical cores "
            "without showing it (then the peak is lower and the shares higher)"
        )
    if not mhz:
        return float("nan"), f"{counted}, clock unknown; {flop} FLOP/cycle: {assumption}"
    return (
        cores * flop * mhz / 1000.0,
        f"{counted} x {flop} FLOP/cycle x {mhz / 1000:.2f} GHz; {flop} FLOP/cycle: {assumption}",
    )


def runtime_benchmark_model(encoder: str, size: int, checkpoint: str | Path | None = None):
    """The checkpoint's model, or a random-weight U-Net of `encoder` at `size` (speed only)."""
    if checkpoint:
        from ptxseg.model.checkpoint import load_model

        return load_model(checkpoint)
    from ptxseg.model.random_weights import random_unet

    return random_unet(encoder, size)


def evaluation_images(work: str | Path | None, size: int, n: int = 8, split: str = "test"):
    """Model inputs (uint8 (S, S)) to compare masks on and calibrate with: a prepared split's
    cache, else synthetic radiograph-like images; and where they came from."""
    if work:
        cache = Path(work) / "cache" / str(size)
        path = cache / f"{split}-images.npy"
        if path.is_file():
            arr = np.load(path, mmap_mode="r")[:n]
            return [np.asarray(a) for a in arr], f"{split} split of {work}"
    from ptxseg.data.preprocess import to_model_input
    from ptxseg.inference.onnx import synthetic_calibration_images

    seed = 1 if split == "test" else 2
    images = synthetic_calibration_images(n, size, seed=seed)
    return [to_model_input(im, size) for im in images], "synthetic images"


@dataclass(frozen=True)
class RuntimeBenchOptions:
    """What one `benchmark-runtime` measures for each model, and how long."""

    batch_size: int = 4
    paths: Sequence[str] | None = None  # path names or runtimes (default: every path)
    work: str | Path | None = None  # prepared folder: masks on its test split, int8 on val
    min_time: float = 3.0  # seconds each path is timed, over all rounds
    min_repeats: int = 2
    int8_remedies: bool = False  # a row per recipe of int8's remedy ladder
    rounds: int = 3


class _RuntimeRun:
    """One model's rows while they are built: the images, the ONNX files and the predictors."""

    def __init__(self, model, options: RuntimeBenchOptions, folder: Path) -> None:
        from ptxseg.benchmarks.backbones import count_gflops_per_image

        self.model, self.folder, self.options = model, folder, options
        self.size = int(model.input_size)
        self.gflop = count_gflops_per_image(model, self.size)
        work, batch_size = options.work, options.batch_size
        # a prepared split: compare the masks on (up to) 64 of its images; synthetic: a few batches
        images, _ = evaluation_images(work, self.size, n=64 if work else 2 * batch_size)
        # int8 is calibrated and checked as predict does it: on the validation split
        self.pool, self.pool_source = evaluation_images(work, self.size, n=32, split="val")
        self.batch = np.stack(images[:batch_size])
        self.evalset = np.stack(images)
        self.rows: list[dict[str, Any]] = []
        self.reference: dict[str, Any] = {}
        self.cache: dict[str, Any] = {}  # fp32 and int8 files (or the refusal of int8)
        self.built: dict[int, Any] = {}  # row index -> its predictor, timed once all are built

    def onnx_file(self, precision: str) -> Path:
        """The fp32 ONNX export (once), and its checked int8 copy (once) for int8 paths."""
        from ptxseg.inference.export import export_onnx

        if "fp32" not in self.cache:
            self.cache["fp32"] = Path(export_onnx(self.model, self.folder / "m.onnx")["path"])
        if precision == "int8" and "int8" not in self.cache:
            self._check_int8()
        found = self.cache["int8" if precision == "int8" else "fp32"]
        if isinstance(found, Exception):
            raise found
        return found

    def _check_int8(self) -> None:
        from ptxseg.inference.predictor import Predictor

        try:
            checked = Predictor(
                self.cache["fp32"],
                "onnxruntime",
                precision="int8",
                tta="none",
                calibration=self.pool,
                calibration_source=self.pool_source,
            )
        except Exception as err:  # refused once: refused for every int8 row
            self.cache["int8"] = err
            raise
        self.cache["int8"] = self.folder / "m8.onnx"
        self.cache["int8"].write_bytes(Path(checked.onnx_path).read_bytes())

    def measure_path(self, name: str, make) -> dict[str, Any]:
        """The row of the predictor `make()` builds: its masks against the baseline's."""
        row: dict[str, Any] = {
            "path": name,
            "encoder": getattr(self.model, "encoder", ""),
            "size": self.size,
            "batch_size": self.options.batch_size,
        }
        try:
            predictor = make()
            probs = predictor.probabilities(self.evalset)
            if not self.reference and name == BASELINE:
                self.reference.update(probs=probs, op=predictor.operating_point)
            row["dice_vs_fp32"] = _agreement(self.reference, probs)
            self.built[len(self.rows)] = predictor
        except Exception as err:  # noqa: BLE001 - one failing path must not end the run
            row["error"] = error_text(err, 200)
        self.rows.append(row)
        return row

    def add_rates(self, progress=None) -> None:
        """Time the built predictors in turn and put their rates in their rows."""
        o = self.options
        rates = _interleaved_rates(self.built, self.batch, o.rounds, o.min_time, o.min_repeats)
        peak, _ = cpu_peak_gflops()
        for i, row in enumerate(self.rows):
            if i in rates:
                rate = statistics.median(rates[i])
                row.update(
                    images_per_s=round(rate, 3),
                    rate_range=f"{min(rates[i]):.3g}-{max(rates[i]):.3g}",
                    gflops_per_s=round(rate * self.gflop, 1),
                    peak_share=round(rate * self.gflop / peak, 3) if peak == peak else "",
                )
            if progress:
                progress(row)
        self.built.clear()


def benchmark_model(
    model, options: RuntimeBenchOptions = RuntimeBenchOptions(), progress=None
) -> list[dict[str, Any]]:
    """One row per inference path for this model (see PATHS); ratios against BASELINE; the row
    of the path `--runtime auto` would choose marked in `auto`. `int8_remedies` adds one
    onnxruntime int8 row per recipe of the remedy ladder (`ptxseg.inference.int8.ladder`).

    Every path is built first; then they are timed in turn, `rounds` times over (each for
    `min_time / rounds` seconds), and a row's images/s is its median round: on a machine whose
    speed drifts (shared cores), each path sees the same conditions."""
    from ptxseg.inference.predictor import Predictor

    wanted = options.paths
    chosen = [p for p in PATHS if wanted is None or p[0] in wanted or p[1] in wanted]
    with tempfile.TemporaryDirectory(prefix="ptxseg-bench-") as tmp:
        run = _RuntimeRun(model, options, Path(tmp))
        for name, runtime, precision, opts in chosen:
            run.measure_path(
                name,
                lambda rt=runtime, prec=precision, opt=opts: _predictor(
                    Predictor, model, rt, prec, opt, run.onnx_file
                ),
            )
        if options.int8_remedies:
            fp32 = run.onnx_file("fp32")
            remedy_rows(fp32, run.pool, run.pool_source, run.measure_path, Path(tmp))
        run.add_rates(progress)
    add_ratios(run.rows, "images_per_s", lambda r: r["path"] == BASELINE)
    mark_auto(run.rows)
    return run.rows


def _interleaved_rates(built: dict[int, Any], batch, rounds: int, min_time: float, repeats: int):
    """Images/s of every predictor in each of `rounds` turns, the predictors one after another."""
    rates: dict[int, list[float]] = {i: [] for i in built}
    for turn in range(max(1, rounds)):
        for i, predictor in built.items():
            try:
                timing = timed(
                    lambda p=predictor: p.probabilities(batch),
                    items=len(batch),
                    warmup=1 if turn == 0 else 0,
                    repeats=repeats,
                    min_time=min_time / max(1, rounds),
                )
            except Exception:  # noqa: BLE001 - it ran once already; a failure here is not a rate
                continue
            rates[i].append(timing.mean_rate)
    return {i: r for i, r in rates.items() if r}


def _agreement(reference: dict[str, Any], probs: np.ndarray):
    """Dice of the masks vs the baseline's ('' without a baseline or without masks to compare)."""
    from ptxseg.inference.int8 import mask_agreement

    if not reference:
        return ""
    found = mask_agreement(reference["probs"], probs, reference["op"]).dice
    return "" if found is None else round(found, 4)


def remedy_rows(fp32: Path, pool, pool_source: str, measure, folder: Path) -> None:
    """One onnxruntime int8 row per recipe of the remedy ladder (through `measure`), each
    calibrated on the validation split; a row's `check_dice` is the agreement on the validation
    images that `predict` decides on, `dice_vs_fp32` the agreement on the test images."""
    import warnings

    from ptxseg.inference.int8 import ladder, more_images, quantize_recipe
    from ptxseg.inference.predictor import Predictor
    from ptxseg.inference.runtimes import cpu_precision_plan

    reduce_range = cpu_precision_plan("int8")["reduce_range"]
    floats = [im.astype(np.float32) / 255.0 for im in pool]
    val = np.stack(pool)
    recipes = ladder()
    fp32_val = None
    best = None
    for i, recipe in enumerate([*recipes, None]):
        if recipe is None:  # the last remedy: the best recipe so far on more images
            if best is None or len(pool) <= best[0].images:
                break
            recipe = more_images(best[0], len(pool))
        path = folder / f"remedy-{i}.onnx"

        def make(recipe=recipe, path=path):
            quantize_recipe(fp32, path, recipe, floats, reduce_range)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return Predictor(path, "onnxruntime", precision="int8", tta="none")

        row = measure(f"onnxruntime int8, {recipe.name}", make)
        if "error" not in row:
            with warnings.catch_warnings():  # no TTA and unchecked files, on purpose
                warnings.simplefilter("ignore")
                if fp32_val is None:
                    ref = Predictor(fp32, "onnxruntime", tta="none")
                    fp32_val = {"probs": ref.probabilities(val), "op": ref.operating_point}
                q = Predictor(path, "onnxruntime", precision="int8", tta="none")
            row["check_dice"] = _agreement(fp32_val, q.probabilities(val))
            row["recipe"] = recipe.describe() + f" (calibrated on {pool_source})"
            score = row["check_dice"] if row["check_dice"] != "" else -1.0
            if best is None or score > best[1]:
                best = (recipe, score)


def mark_auto(rows: list[dict[str, Any]]) -> None:
    """Mark the row of the path `--runtime auto --precision auto` would choose from these rows
    (the same rule, `ptxseg.inference.choice.decide`, over the paths it tries on this CPU)."""
    from ptxseg.inference.choice import Measurement, candidates, decide

    paths, _ = candidates()
    measured, by_name = [], {}
    for row in rows:
        found = AUTO_PATHS.get(row["path"])
        if found is None or found not in paths:
            continue
        m = Measurement(
            *found,
            images_per_s=row.get("images_per_s") or None,
            dice_vs_fp32=row.get("dice_vs_fp32") if row.get("dice_vs_fp32") != "" else None,
            error=row.get("error", ""),
            reference=found == ("torch", "fp32"),
        )
        measured.append(m)
        by_name[m.name] = row
    best, _ = decide(measured)
    if best is not None:
        by_name[best.name]["auto"] = AUTO_MARK


def _predictor(cls, model, runtime, precision, options, onnx_file):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if runtime == "torch":
            return cls(model, runtime, precision=precision, tta="none", **options)
        return cls(onnx_file(precision), runtime, precision=precision, tta="none")


def end_to_end(
    model,
    dicom_dir: str | Path | None,
    runtime: str,
    precision: str,
    batch_size: int,
    calibration: Sequence[np.ndarray] | None = None,
    n: int = 16,
) -> dict[str, Any]:
    """`predict` images/s on a folder of DICOMs, decoding and every output file included (int8
    calibrated and checked on `calibration`)."""
    import warnings

    from ptxseg.inference.inputs import collect_inputs
    from ptxseg.inference.main_loop import predict_files
    from ptxseg.inference.predictor import Predictor

    with tempfile.TemporaryDirectory(prefix="ptxseg-e2e-") as tmp:
        if dicom_dir is None:
            from ptxseg.data.synthetic import generate_dataset

            generate_dataset(Path(tmp) / "dicoms", n, size=1024, seed=0, progress=False)
            dicom_dir = Path(tmp) / "dicoms"
        files = collect_inputs([dicom_dir])[:n]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predictor = Predictor(
                model,
                runtime=runtime,
                precision=precision,
                batch_size=batch_size,
                calibration=calibration if precision == "int8" else None,
            )
            results = []
            run = lambda: results.append(  # noqa: E731
                predict_files(predictor, files, Path(tmp) / "out", progress=False)
            )
            seconds = timed(run, warmup=0, repeats=1).p50
            result = results[0]
    return {
        "path": f"end-to-end predict, {runtime} {precision}",
        "encoder": getattr(model, "encoder", ""),
        "size": int(model.input_size),
        "batch_size": batch_size,
        "images_per_s": round(result.predicted / seconds, 3),
        "error": f"{result.errors} files failed" if result.errors else "",
    }


def runtime_benchmark_rows(
    models: Sequence[Any],
    options: RuntimeBenchOptions,
    dicom_dir: str | Path | None = None,
    end_to_end_rates: bool = True,
    progress=None,
) -> list[dict[str, Any]]:
    """Every model's rows (`benchmark_model`), each followed, with `end_to_end_rates`, by
    `predict`'s end-to-end rate for eager fp32 and for the path `auto` chose."""
    rows = []
    for model in models:
        measured = benchmark_model(model, options, progress)
        rows += measured
        if end_to_end_rates:
            rows += _end_to_end_rows(model, measured, dicom_dir, options, progress)
    return rows


def _end_to_end_rows(model, measured, dicom_dir, options: RuntimeBenchOptions, progress=None):
    auto = next((r for r in measured if r.get("auto")), None)
    chosen = [("torch", "fp32")]
    if auto and AUTO_PATHS[auto["path"]] != ("torch", "fp32"):
        chosen.append(AUTO_PATHS[auto["path"]])
    pool, _ = evaluation_images(options.work, int(model.input_size), 32, split="val")
    rows = []
    for runtime, precision in chosen:
        try:
            rows.append(end_to_end(model, dicom_dir, runtime, precision, options.batch_size, pool))
        except Exception as err:  # noqa: BLE001 - reported in the table
            rows.append({"path": f"end-to-end {runtime} {precision}", "error": str(err)})
        if progress:
            progress(rows[-1])
    return rows


def runtime_table_note(work: str | Path | None, size: int) -> str:
    """Where the masks were compared and int8 calibrated, for under the table."""
    return (
        f"Masks compared on the {evaluation_images(work, size, 1)[1]} (up to 64 images, "
        f"model size, no TTA); int8 calibrated and checked on the "
        f"{evaluation_images(work, size, 1, split='val')[1]}, as `predict` does."
    )


def write_tables(rows: Sequence[dict[str, Any]], out_dir: str | Path, note: str = "") -> Path:
    """runtime-benchmark.md and .csv in `out_dir`; returns the Markdown path."""
    _, peak_text = cpu_peak_gflops()
    paths = write_table(
        out_dir,
        "runtime-benchmark",
        "Inference runtimes",
        COLUMNS,
        rows,
        baseline=f"{BASELINE} (column x eager fp32; masks compared with its masks)",
        header=[
            f"share of fp32 peak: of a nominal peak of {peak_text}",
            f"auto: `{AUTO_MARK}` marks the path `--runtime auto --precision auto` would choose "
            "from these numbers: the fastest whose masks agree with fp32 at Dice 0.99, among the "
            "paths it tries on this CPU (its own check times a few images, TTA included)",
        ],
        notes=note,
    )
    return paths["md"]
