"""`--runtime auto` / `--precision auto`: the fastest path on this CPU whose masks agree with fp32.

The same model runs up to several times faster on one CPU through another runtime or precision,
and bf16 or int8 masks may drift from fp32's. Which path is both fast and faithful depends on
the CPU's instructions, the runtimes' versions and the model, so it is measured, once:

1. `candidates`: the paths this CPU can run well (bf16 only with AVX-512 BF16 or AMX; int8 only
   with VNNI and with images to check it on: see `ptxseg.inference.int8`), whose runtime is
   installed, within what was asked (`--runtime onnxruntime --precision auto` chooses the
   precision only);
2. `measure_paths`: each candidate runs a few real images through the Predictor (TTA included,
   at the batch size that will run): images/s, Dice of its masks against fp32's, and the memory
   it added;
3. `decide`: the fastest path whose masks agree with fp32 at `FAITHFUL_DICE` and that needs no
   much more memory than fp32 (`MEMORY_FACTOR`); fp32 paths agree by construction (the export's
   parity check) when the images have no mask to compare;
4. the choice is cached under the user's cache folder (`runtime_cache_dir`), keyed by the
   model's digest (`LoadedModel.digest`), the CPU model and flags, the cores, TTA and batch,
   and the versions of the runtimes and of ptxseg (`cache_key`), so later runs start at once.

`build_predictor(spec)` is what the commands call (a `PredictorSpec`, built once from the
options): an explicit runtime and precision are built as
asked; `auto` (the default on a CPU) goes through the steps above; on a GPU `auto` is torch fp32.
The Predictor carries the choice (`Predictor.path_choice`), whose `line` says in one line which
path runs and why; run.json, the findings, the model card and evaluate's summary record it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg import __version__
from ptxseg.inference.int8 import FAITHFUL_DICE, Int8Refused, ladder, mask_agreement
from ptxseg.inference.loaded import LoadedModel
from ptxseg.inference.onnx import read_metadata, synthetic_calibration_images, write_onnx
from ptxseg.inference.predictor import BuildInputs, Predictor
from ptxseg.inference.runtimes import RUNTIMES, SUPPORTED
from ptxseg.inference.spec import AUTO, PredictorSpec
from ptxseg.model.operating_point import OperatingPointWarning
from ptxseg.util.jsonio import write_json
from ptxseg.util.system import CpuInfo, cpu_info, package_versions, rss_now_mb, usable_cores

PATHS = (
    ("torch", "fp32"),
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
    ("torch", "bf16"),
    ("openvino", "bf16"),
    ("onnxruntime", "int8"),
    ("openvino", "int8"),
)
"""Every CPU path, in the order they are measured (references first)."""
CHECK_IMAGES = 8
INT8_CHECK_IMAGES = 32
"""Images an explicit int8 is checked on: 8 calibrate, all 32 check and calibrate the last
remedy (more images)."""
AUTO_INT8_RECIPES = tuple(r for r in ladder() if r.method == "minmax")
"""The int8 recipes auto's short check tries: the min-max steps of the ladder (histogram
calibration takes minutes); `--precision int8` walks the whole ladder."""
MEMORY_FACTOR = 2.0
MEMORY_SLACK_MB = 256.0
"""A path needs "much more memory" when it adds more than MEMORY_FACTOR times what fp32 adds,
plus MEMORY_SLACK_MB (the noise of measuring resident memory in one process)."""
VERSIONED = ("torch", "onnxruntime", "openvino", "onnx")
MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "torch": "torch"}


def path_name(runtime: str, precision: str) -> str:
    return f"{runtime} {precision}"


# ---------------------------------------------------------------- the images a check runs on


@dataclass
class CheckImages:
    """Images to measure on: (H, W) float images in [0, 1] or uint8 model inputs, where they
    came from, and whether they are real radiographs (synthetic ones time speed only: their
    masks say nothing about a reduced precision)."""

    images: list[np.ndarray]
    source: str
    real: bool = True


def work_folder_images(work: str | Path, size: int, n: int, split: str = "val"):
    """Up to `n` cached model inputs of a prepared split, half of them (where there are) images
    with a mask, so the check compares outlines as well as empty images. None when absent."""
    cache = Path(work) / "cache" / str(size)
    images, masks = cache / f"{split}-images.npy", cache / f"{split}-masks.npy"
    if not images.is_file():
        return None
    arr = np.load(images, mmap_mode="r")
    order = list(range(len(arr)))
    if masks.is_file():
        has_mask = np.load(masks, mmap_mode="r").reshape(len(arr), -1).max(1) > 0
        positive = [i for i in order if has_mask[i]][: max(1, n // 2)]
        order = positive + [i for i in order if i not in set(positive)]
    picked = sorted(order[:n])
    if not picked:
        return None
    return CheckImages([np.asarray(arr[i]) for i in picked], f"the {split} split of {work}")


def model_work_folder(config: dict[str, Any] | None) -> str | None:
    """The work folder a model was trained from (its config), when it still exists."""
    work = ((config or {}).get("data") or {}).get("work")
    return work if work and Path(work).is_dir() else None


def default_check_images(
    config: dict[str, Any] | None,
    size: int,
    files: Sequence[Path] = (),
    n: int = CHECK_IMAGES,
    work: str | Path | None = None,
) -> CheckImages:
    """Where a check takes its images: the validation split of `work` (or of the work folder
    the model was trained from), else the first readable `files`, else synthetic images."""
    for folder in (work, model_work_folder(config)):
        if folder:
            found = work_folder_images(folder, size, n)
            if found is not None:
                return found
    if files:
        from ptxseg.data.dicom import read_image

        images = []
        for path in files:
            if len(images) >= n:
                break
            try:
                images.append(read_image(path)[0])
            except Exception:  # noqa: BLE001 - an unreadable input is reported by the run
                continue
        if images:
            return CheckImages(images, "the inputs")
    return CheckImages(
        synthetic_calibration_images(n, size), f"{n} synthetic images (speed only)", real=False
    )


# ---------------------------------------------------------------- what is measured and chosen


@dataclass
class Measurement:
    """One path on this CPU: images/s (TTA included), Dice of its masks vs fp32's (None when
    not measurable), resident memory it added in MB, or the error that stopped it."""

    runtime: str
    precision: str
    images_per_s: float | None = None
    dice_vs_fp32: float | None = None
    memory_mb: float | None = None
    error: str = ""
    reference: bool = False

    @property
    def name(self) -> str:
        return path_name(self.runtime, self.precision)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "", False)} | {
            "path": self.name
        }


@dataclass
class Choice:
    """The path that runs and why: `chosen_by` is asked, auto, auto (cached) or gpu."""

    runtime: str
    precision: str
    chosen_by: str
    line: str
    measurements: list[Measurement] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    check: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "precision": self.precision,
            "chosen_by": self.chosen_by,
            "line": self.line,
            "measurements": [m.to_dict() for m in self.measurements],
            "skipped": self.skipped,
            "check": self.check,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Choice:
        measurements = [
            Measurement(
                **{k: v for k, v in m.items() if k in Measurement.__dataclass_fields__},
            )
            for m in data.get("measurements", [])
        ]
        return cls(
            data["runtime"],
            data["precision"],
            data["chosen_by"],
            data["line"],
            measurements,
            dict(data.get("skipped", {})),
            dict(data.get("check", {})),
        )


def installed(runtime: str) -> bool:
    """Whether the runtime's package can be imported here."""
    return importlib.util.find_spec(MODULES[runtime]) is not None


def candidates(
    runtime: str = AUTO,
    precision: str = AUTO,
    cpu: CpuInfo | None = None,
    model_kind: str = "torch",
    int8_on_the_fly: bool = True,
    is_installed: Callable[[str], bool] = installed,
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The paths to measure for what was asked, and why each other path is left out.

    `model_kind`: torch (a checkpoint, model folder or ensemble), onnx (an fp32 .onnx file) or
    onnx-int8 (an int8 .onnx file: only its own precision). `int8_on_the_fly` is False for
    `serve`, `listen` and `dicomweb`, which take int8 only as a checked file.
    """
    for value, valid, option in ((runtime, RUNTIMES, "runtime"), (precision, None, "precision")):
        known = valid or ("fp32", "bf16", "int8")
        if value != AUTO and value not in known:
            raise ValueError(f"--{option} {value!r}: expected auto or one of {', '.join(known)}")
    cpu = cpu or cpu_info()
    chosen: list[tuple[str, str]] = []
    skipped: dict[str, str] = {}
    for rt, prec in PATHS:
        name = path_name(rt, prec)
        if (runtime != AUTO and rt != runtime) or (precision != AUTO and prec != precision):
            continue
        if prec not in SUPPORTED[rt]:
            continue
        reason = _left_out(rt, prec, cpu, model_kind, int8_on_the_fly, is_installed)
        if reason:
            skipped[name] = reason
        else:
            chosen.append((rt, prec))
    return chosen, skipped


def _left_out(rt, prec, cpu: CpuInfo, model_kind, int8_on_the_fly, is_installed) -> str:
    if not is_installed(rt):
        return f"{rt} is not installed"
    if rt == "torch" and model_kind != "torch":
        return "an .onnx file runs on onnxruntime or openvino"
    if model_kind == "onnx-int8" and prec != "int8":
        return "the file is int8"
    if prec == "bf16" and not cpu.native_bf16:
        return "no AVX-512 BF16 or AMX"
    if prec == "int8" and model_kind != "onnx-int8":
        if not cpu.vnni:
            # measured: 7-bit int8 kept fp32's masks for none of EfficientNet-B0, ResNet50 and
            # Xception on an AVX2 EPYC (docs/cpu-runtimes.md); asking for it still checks it
            return "no VNNI: 7-bit int8 only; --precision int8 checks it"
        if not int8_on_the_fly:
            return "int8 only as a file made by `ptxseg export --int8` here"
    return ""


def reference_path(paths: Sequence[tuple[str, str]], model_kind: str) -> tuple[str, str] | None:
    """The fp32 path whose masks the others are compared with (torch for a PyTorch model)."""
    if model_kind == "onnx-int8":
        return None
    for wanted in (("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32")):
        if wanted in paths:
            return wanted
    if model_kind == "torch":
        return ("torch", "fp32")
    return ("onnxruntime", "fp32") if installed("onnxruntime") else ("openvino", "fp32")


def decide(
    measurements: Sequence[Measurement],
    conclusive: bool = True,
    allowed: Sequence[tuple[str, str]] | None = None,
) -> tuple[Measurement | None, dict[str, str]]:
    """The fastest faithful path among `allowed` (all measured paths when None), and why each
    other one was not chosen.

    Faithful: its masks agree with fp32's at FAITHFUL_DICE (an fp32 path also when the images had
    no mask to compare: the export's parity check holds it to 1e-4 in probability), and it adds
    no more than MEMORY_FACTOR times the fp32 reference's memory (plus MEMORY_SLACK_MB).
    `conclusive` False (synthetic images) admits fp32 paths only. An int8 file, which has no
    fp32 reference here, is judged by its stored check.
    """
    reasons: dict[str, str] = {}
    ref = next((m for m in measurements if m.reference and not m.error), None)
    budget = None
    if ref is not None and ref.memory_mb is not None:
        budget = MEMORY_FACTOR * max(ref.memory_mb, 0.0) + MEMORY_SLACK_MB
    eligible = []
    for m in measurements:
        if allowed is not None and (m.runtime, m.precision) not in allowed:
            continue  # measured as the reference only
        if m.error:
            reasons[m.name] = m.error
        elif not m.images_per_s:
            reasons[m.name] = "not timed"
        elif ref is None and m.precision == "int8":
            eligible.append(m)  # an int8 file: loading it warned if its stored check fell short
        elif m.dice_vs_fp32 is not None and m.dice_vs_fp32 < FAITHFUL_DICE:
            reasons[m.name] = f"masks at Dice {m.dice_vs_fp32:.3f} vs fp32, below {FAITHFUL_DICE}"
        elif m.precision != "fp32" and ref is not None and not conclusive:
            reasons[m.name] = "synthetic images: reduced precision is not checked on them"
        elif m.precision != "fp32" and ref is not None and m.dice_vs_fp32 is None:
            reasons[m.name] = "its masks could not be compared with fp32's"
        elif budget is not None and (m.memory_mb or 0.0) > budget:
            reasons[m.name] = (
                f"needs much more memory ({m.memory_mb:.0f} MB vs {ref.memory_mb:.0f} MB for "
                f"{ref.name})"
            )
        else:
            eligible.append(m)
    best = max(eligible, key=lambda m: m.images_per_s, default=None)
    return best, reasons


def describe_measurement(m: Measurement) -> str:
    """'onnxruntime fp32: 41.2 images/s, masks at Dice 1.000 vs fp32, +35 MB' (or its error)."""
    if m.error:
        return f"{m.name}: {m.error}"
    parts = [f"{m.images_per_s:.1f} images/s" if m.images_per_s else "not timed"]
    if m.reference:
        parts.append("the fp32 reference")
    elif m.dice_vs_fp32 is not None:
        parts.append(f"masks at Dice {m.dice_vs_fp32:.3f} vs fp32")
    if m.memory_mb is not None:
        parts.append(f"+{m.memory_mb:.0f} MB")
    return f"{m.name}: " + ", ".join(parts)


def describe_choice(
    best: Measurement,
    measurements: Sequence[Measurement],
    skipped: dict[str, str],
    check: dict[str, Any],
) -> str:
    """One line: which path runs, how fast against the fp32 reference, how close its masks,
    on what, and which paths were not tried and why."""
    ref = next((m for m in measurements if m.reference and m.images_per_s), None)
    if ref is not None and ref is not best:
        speed = f"{best.images_per_s / ref.images_per_s:.2f}x {ref.name}"
    else:
        speed = f"{best.images_per_s:.1f} images/s"
    if best.precision == "fp32":
        masks = "fp32 masks"
    elif ref is None:
        stored = "unknown" if best.dice_vs_fp32 is None else f"{best.dice_vs_fp32:.3f}"
        masks = f"an int8 file (masks at Dice {stored} vs fp32 when it was made)"
    elif best.dice_vs_fp32 is None:
        masks = "masks not compared"
    else:
        masks = f"masks at Dice {best.dice_vs_fp32:.3f} vs fp32"
    tried = len([m for m in measurements if not m.error])
    line = (
        f"{best.name}: {speed}, {masks} ({check.get('images', 0)} images of "
        f"{check.get('source', '?')}, TTA {check.get('tta', 'none')}, batch "
        f"{check.get('batch_size', '?')}); the fastest faithful of {tried} paths measured on "
        "this CPU"
    )
    by_reason: dict[str, list[str]] = {}
    for name, reason in skipped.items():
        by_reason.setdefault(reason, []).append(name)
    if by_reason:
        line += "; not tried: " + "; ".join(
            f"{', '.join(names)} ({reason})" for reason, names in by_reason.items()
        )
    return line


# ---------------------------------------------------------------- measuring

# ---------------------------------------------------------------- measuring


@dataclass(frozen=True)
class ChoiceHooks:
    """How the choice checks and reports, beside the spec.

    `images(size, config)` gives the `CheckImages` to check on (default:
    `default_check_images`); they calibrate and check int8 too. `int8_on_the_fly` False (serve,
    listen, dicomweb) leaves int8 to files made by `ptxseg export --int8`; `int8_recipes` limits
    an explicit int8's remedy ladder. `cpu` and `measure` (for `measure_paths`) are what tests
    fake; `use_cache` False measures again; `progress` sees each measurement."""

    images: Callable[[int, dict], CheckImages] | None = None
    int8_on_the_fly: bool = True
    int8_recipes: Sequence[Any] | None = None
    cpu: CpuInfo | None = None
    measure: Callable[..., tuple[list[Measurement], dict[str, Predictor]]] | None = None
    use_cache: bool = True
    progress: Callable[[Measurement], None] | None = None


def _path_spec(spec: PredictorSpec, runtime: str, precision: str) -> PredictorSpec:
    """The spec of one path (compilation applies to torch only)."""
    return spec.replace(
        runtime=runtime, precision=precision, compile=spec.compile and runtime == "torch"
    )


def _measure_one(loaded, m: Measurement, spec: PredictorSpec, check: CheckImages, export):
    """One path's Predictor over the check images: (predictor, probabilities); times `m`."""
    build = BuildInputs(
        calibration=check.images if m.precision == "int8" else None,
        calibration_source=check.source,
        int8_recipes=AUTO_INT8_RECIPES if m.precision == "int8" else None,
        onnx_export=export if m.runtime != "torch" else None,
    )
    before = rss_now_mb()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OperatingPointWarning)
        predictor = Predictor.from_spec(loaded, _path_spec(spec, m.runtime, m.precision), build)
    inputs = np.stack([predictor.model_input(_as_float(im)) for im in check.images])
    predictor.probabilities(inputs[: spec.batch_size])  # warm-up
    start = time.perf_counter()
    probs = predictor.probabilities(inputs)
    m.images_per_s = round(len(inputs) / (time.perf_counter() - start), 3)
    m.memory_mb = round(max(0.0, rss_now_mb() - before), 1)
    return predictor, probs


def _failed(m: Measurement, err: Exception) -> None:
    """What stopped a path, in its measurement."""
    if isinstance(err, Int8Refused):
        best = err.check.best
        m.dice_vs_fp32 = round(best.agreement.dice, 4) if best else None
        m.error = "int8 refused: no recipe keeps fp32's masks" + (
            f" (best {best.recipe.name})" if best else ""
        )
        return
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    m.error = f"{type(err).__name__}: {text[:200]}"


def measure_paths(
    loaded: LoadedModel,
    paths: Sequence[tuple[str, str]],
    reference: tuple[str, str] | None,
    check: CheckImages,
    *,
    spec: PredictorSpec,
    progress: Callable[[Measurement], None] | None = None,
) -> tuple[list[Measurement], dict[str, Predictor]]:
    """Run each path (the reference first) over the check images through the Predictor, after a
    warm-up batch: images/s of the pass (TTA included), Dice of its masks vs the reference's, and
    the resident memory it added (every predictor stays alive until the end, so each one's
    memory is its own). Returns the measurements and the predictors that ran, by path name.

    One fp32 ONNX export of the loaded model is shared by the ONNX paths (an .onnx file is its
    own); `spec` gives TTA, batch size, operating point and the runtimes' options.
    """
    order = ([reference] if reference else []) + [p for p in paths if p != reference]
    results: list[Measurement] = []
    built: dict[str, Predictor] = {}
    ref_probs = None
    with tempfile.TemporaryDirectory(prefix="ptxseg-choice-") as tmp:
        export = _export_once(loaded, Path(tmp))
        for rt, prec in order:
            m = Measurement(rt, prec, reference=(rt, prec) == reference)
            try:
                predictor, probs = _measure_one(loaded, m, spec, check, export)
                built[m.name] = predictor
                if m.reference:
                    ref_probs = probs
                elif ref_probs is not None and check.real:
                    op = predictor.operating_point
                    m.dice_vs_fp32 = mask_agreement(ref_probs, probs, op).dice
                elif reference is None and prec == "int8":  # an int8 file: its own check
                    stored = read_metadata(predictor.onnx_path).get("int8_check") or {}
                    m.dice_vs_fp32 = stored.get("dice_vs_fp32")
                if m.dice_vs_fp32 is not None:
                    m.dice_vs_fp32 = round(float(m.dice_vs_fp32), 4)
            except Exception as err:  # noqa: BLE001 - one failing path must not end the choice
                _failed(m, err)
            results.append(m)
            if progress:
                progress(m)
    return results, built


def _export_once(loaded: LoadedModel, folder: Path) -> Path | None:
    """One fp32 ONNX export of a loaded model for every ONNX path (an .onnx file is its own);
    None when it fails (each path then reports its own error)."""
    if loaded.network is None:
        return None
    try:
        write_onnx(loaded.network, folder / "model.onnx")
    except Exception:  # noqa: BLE001 - reported by the paths that need it
        return None
    return folder / "model.onnx"


def _as_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image


# ---------------------------------------------------------------- the cache


def runtime_cache_dir() -> Path:
    """ptxseg's cache folder: $PTXSEG_CACHE_DIR, else $XDG_CACHE_HOME/ptxseg, else
    ~/.cache/ptxseg."""
    if os.environ.get("PTXSEG_CACHE_DIR"):
        return Path(os.environ["PTXSEG_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ptxseg"


def cache_key(digest: str, cpu: CpuInfo, **extra: Any) -> tuple[str, dict[str, Any]]:
    """The cache file's name and what it was made from: the model, the CPU (model, flags,
    usable cores), the versions of the runtimes and of ptxseg, and `extra` (TTA, batch, what
    was asked)."""
    material = {
        "model": digest,
        "cpu": cpu.model,
        "flags": sorted(cpu.flags),
        "cores": usable_cores(),
        "versions": package_versions(VERSIONED),
        "ptxseg": __version__,
        **extra,
    }
    text = json.dumps(material, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32], material


def read_cached(key: str, folder: Path | None = None) -> Choice | None:
    path = (folder or runtime_cache_dir()) / "runtime-choice" / f"{key}.json"
    try:
        return Choice.from_dict(json.loads(path.read_text())["choice"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_cached(key: str, material: dict, choice: Choice, folder: Path | None = None) -> None:
    path = (folder or runtime_cache_dir()) / "runtime-choice" / f"{key}.json"
    try:
        write_json(path, {"key": material, "choice": choice.to_dict()})
    except OSError as err:  # a read-only home must not stop a prediction
        warnings.warn(f"could not cache the runtime choice in {path}: {err}", stacklevel=2)


# ---------------------------------------------------------------- the front door


def model_kind(model: Any) -> str:
    """torch (a checkpoint, folder, ensemble or module), onnx (fp32 file) or onnx-int8."""
    if isinstance(model, LoadedModel):
        return model.kind
    if isinstance(model, str | Path) and Path(model).suffix.lower() == ".onnx":
        return "onnx-int8" if read_metadata(model).get("precision") == "int8" else "onnx"
    return "torch"


class _CheckImagesOnce:
    """The hooks' check images, asked for once (they may read files)."""

    def __init__(self, spec: PredictorSpec, hooks: ChoiceHooks):
        self.spec, self.hooks, self.found = spec, hooks, None

    def __call__(self, loaded: LoadedModel) -> CheckImages:
        if self.found is None:
            n = INT8_CHECK_IMAGES if self.spec.precision == "int8" else CHECK_IMAGES
            default = lambda s, c: default_check_images(c, s, n=n)  # noqa: E731
            self.found = (self.hooks.images or default)(loaded.input_size, loaded.config)
        return self.found


def build_predictor(spec: PredictorSpec, hooks: ChoiceHooks | None = None) -> Predictor:
    """The Predictor of `spec.model` for the runtime and precision asked; `auto` for either lets
    this CPU's measurements choose (see the module docstring; on a GPU, auto is torch fp32).

    The model is loaded once (`LoadedModel`, also when `spec.model` already
    is one). The Predictor's `path_choice` is the `Choice` as a dict; an int8 refusal names this
    CPU's faithful alternatives, measured on the same images.
    """
    hooks = hooks or ChoiceHooks()
    if not str(spec.device).startswith("cpu"):
        return _on_gpu(spec)
    cpu = hooks.cpu or cpu_info()
    kind = model_kind(spec.model)
    if spec.runtime != AUTO and spec.precision != AUTO:
        if spec.precision == "int8" and kind != "onnx-int8" and not hooks.int8_on_the_fly:
            raise ValueError(
                f"precision int8 from {spec.model}: `serve`, `listen` and `dicomweb` take int8 "
                "only as a file made by `ptxseg export --int8`, which checks its masks against "
                "fp32 on real images (they have none to check with at start-up)"
            )
        return _as_asked(spec, hooks, cpu, kind)
    if spec.compile:
        if spec.runtime not in (AUTO, "torch"):
            raise ValueError(f"--compile applies to the torch runtime, not {spec.runtime!r}")
        spec = spec.replace(runtime="torch")
    paths, skipped = candidates(spec.runtime, spec.precision, cpu, kind, hooks.int8_on_the_fly)
    if not paths:
        raise ValueError(
            f"no {path_name(spec.runtime, spec.precision).replace(AUTO, 'any')} path can run on "
            f"this CPU ({cpu.model}; {cpu.isa()}): "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    return _auto(spec, hooks, cpu, kind, (paths, skipped))


def _on_gpu(spec: PredictorSpec) -> Predictor:
    """On a GPU: torch fp32 for auto, else as asked."""
    rt = "torch" if spec.runtime == AUTO else spec.runtime
    prec = "fp32" if spec.precision == AUTO else spec.precision
    loaded = LoadedModel.load(spec.model, spec.device)
    predictor = Predictor.from_spec(loaded, spec.replace(runtime=rt, precision=prec))
    by = "auto on a GPU" if AUTO in (spec.runtime, spec.precision) else "as asked"
    line = f"{path_name(rt, prec)} on {spec.device} ({by})"
    predictor.path_choice = Choice(rt, prec, "gpu" if "auto" in by else "asked", line).to_dict()
    return predictor


def _auto(spec, hooks: ChoiceHooks, cpu: CpuInfo, kind: str, candidates_found) -> Predictor:
    """The fastest faithful path among the candidates: cached, else measured (and cached)."""
    paths, skipped = candidates_found
    loaded = LoadedModel.load(spec.model, "cpu")
    check_images = _CheckImagesOnce(spec, hooks)
    explicit = spec.resolved_operating_point(
        loaded.operating_point_named(spec.operating_point_name)
    )
    options = {k: getattr(spec, k) for k in ("compile", "compile_mode", "channels_last", "threads")}
    key, material = cache_key(
        loaded.digest,
        cpu,
        tta=spec.tta,
        batch_size=spec.batch_size,
        asked=[spec.runtime, spec.precision],
        paths=paths,
        operating_point=repr(explicit),
        operating_point_name=spec.operating_point_name,
        options=sorted((k, repr(v)) for k, v in options.items()),
    )
    cached = read_cached(key) if hooks.use_cache else None
    if cached is not None and (cached.check.get("real") or not check_images(loaded).real):
        cached.chosen_by = "auto (cached)"
        cached.line = cached.line.removesuffix(" [cached]") + " [cached]"
        check = check_images(loaded) if cached.precision == "int8" else None
        predictor = _build(loaded, _path_spec(spec, cached.runtime, cached.precision), check)
        predictor.path_choice = cached.to_dict()
        return predictor
    check = check_images(loaded)
    reference = reference_path(paths, kind)
    measurements, built = (hooks.measure or measure_paths)(
        loaded, paths, reference, check, spec=spec, progress=hooks.progress
    )
    best, reasons = decide(measurements, check.real, allowed=paths)
    if best is None:
        raise ValueError(
            f"no path keeps fp32's masks on this CPU ({cpu.model}; {cpu.isa()}): "
            + "; ".join(f"{k}: {v}" for k, v in {**reasons, **skipped}.items())
        )
    predictor = built.pop(best.name, None)
    built.clear()  # the other paths' predictors go now
    if predictor is None:  # a faked measurement (tests) builds nothing
        predictor = _build(loaded, _path_spec(spec, best.runtime, best.precision), check)
    info = {
        "images": len(check.images),
        "source": check.source,
        "real": check.real,
        "tta": predictor.tta,
        "batch_size": spec.batch_size,
        "cpu": f"{cpu.model}; {cpu.isa()}",
    }
    line = describe_choice(best, measurements, skipped, info)
    choice = Choice(
        best.runtime, best.precision, "auto", line, measurements, {**skipped, **reasons}, info
    )
    if hooks.use_cache:
        write_cached(key, material, choice)
    predictor.path_choice = choice.to_dict()
    return predictor


def _build(loaded: LoadedModel, spec: PredictorSpec, check: CheckImages | None) -> Predictor:
    """One path's Predictor (int8 from an fp32 model is calibrated and checked on `check`)."""
    int8 = check is not None and spec.precision == "int8"
    build = BuildInputs(
        calibration=check.images if int8 else None,
        calibration_source=check.source if check is not None else "",
        int8_recipes=AUTO_INT8_RECIPES if spec.precision == "int8" else None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OperatingPointWarning)
        return Predictor.from_spec(loaded, spec, build)


def _as_asked(spec: PredictorSpec, hooks: ChoiceHooks, cpu: CpuInfo, kind: str) -> Predictor:
    """The path the user named; int8 from an fp32 model is checked on the images, and a refusal
    names this CPU's faithful alternatives, measured on the same images."""
    from ptxseg.inference.runtimes import check_runtime

    check_runtime(spec.runtime, spec.precision)
    loaded = LoadedModel.load(spec.model, "cpu")
    check = None
    if spec.precision == "int8" and kind != "onnx-int8":
        check = _CheckImagesOnce(spec, hooks)(loaded)
        if check is not None and not check.real:
            raise ValueError(
                "int8 from an fp32 model is checked against fp32's masks on real images, and "
                "none were found: give the inputs, or a work folder (its validation split)"
            )
    build = BuildInputs(
        calibration=check.images if check is not None else None,
        calibration_source=check.source if check is not None else "",
        int8_recipes=hooks.int8_recipes,
    )
    try:
        predictor = Predictor.from_spec(loaded, spec, build)
    except Int8Refused as refused:
        alternatives = faithful_alternatives(loaded, check, spec, cpu)
        raise refused.with_alternatives(alternatives) from None
    line = f"{path_name(spec.runtime, spec.precision)} as asked"
    kept = predictor.int8_check.kept if predictor.int8_check is not None else None
    if kept is not None and check is not None:
        line += (
            f" (int8 masks at Dice {kept.agreement.dice:.3f} vs fp32 on "
            f"{kept.agreement.images} images of {check.source}; {kept.recipe.name})"
        )
    info = {"images": len(check.images), "source": check.source} if check else {}
    choice = Choice(spec.runtime, spec.precision, "asked", line, check=info)
    predictor.path_choice = choice.to_dict()
    return predictor


def faithful_alternatives(
    loaded: LoadedModel, check: CheckImages | None, spec: PredictorSpec, cpu: CpuInfo
) -> str:
    """'openvino fp32 keeps 1.000 at 1.71x torch fp32; ...': this CPU's fp32 and bf16 paths
    whose masks agree with fp32 on `check`, fastest first ('' when none could be measured)."""
    paths, _ = candidates(AUTO, AUTO, cpu, loaded.kind, int8_on_the_fly=False)
    paths = [p for p in paths if p[1] != "int8"]
    if check is None or not paths:
        return ""
    plain = spec.replace(compile=False)
    measurements, _ = measure_paths(
        loaded, paths, reference_path(paths, loaded.kind), check, spec=plain
    )
    ref = next((m for m in measurements if m.reference and m.images_per_s), None)
    good = sorted(
        (m for m in measurements if not m.error and m.images_per_s),
        key=lambda m: -m.images_per_s,
    )
    parts = []
    for m in good:
        if m.reference:
            continue  # the yardstick itself
        dice = m.dice_vs_fp32
        speed = f" at {m.images_per_s / ref.images_per_s:.2f}x {ref.name}" if ref else ""
        if dice is not None and dice >= FAITHFUL_DICE:
            parts.append(f"{m.name} keeps {dice:.3f}{speed}")
    return "; ".join(parts)
