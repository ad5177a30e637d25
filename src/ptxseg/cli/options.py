"""Options that several commands share, defined once so that they mean the same everywhere."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from ptxseg.inference.spec import PredictorSpec

TTA = typer.Option(
    None,
    help="Test-time augmentation: none or hflip (default: the TTA the stored operating point "
    "was searched with, else none).",
)
THRESHOLD = typer.Option(
    None,
    help="Plain threshold: top = bottom = this value and no area gate (unless --min-area is "
    "given too); overrides the stored operating point.",
)
TOP = typer.Option(None, help="Override: probability that at least --min-area pixels must exceed.")
BOTTOM = typer.Option(None, help="Override: probability that binarises a kept mask.")
MIN_AREA = typer.Option(
    None, help="Override: pixels (at the model's size) above --top needed to keep a mask."
)
OPERATING_POINT = typer.Option(
    None,
    "--operating-point",
    help="A named operating point stored with the model (e.g. triage, rule-in; searched by "
    "`ptxseg evaluate --search --operating-points ...`); default: the main one.",
)
CHECKPOINT_HELP = (
    "The model: a .ckpt from `ptxseg train`, an inference-model folder (RUN/model) or an .onnx "
    "file from `ptxseg export`."
)


CHECKPOINTS_HELP = (
    "The model: a .ckpt from `ptxseg train`, an inference-model folder (RUN/model), an .onnx "
    "file from `ptxseg export`, or an ensemble: an ensemble.json (or the `ptxseg cv` folder "
    "holding one), or this option repeated to average several models' probabilities."
)


def overrides(threshold, top, bottom, min_area) -> dict:
    """The operating-point overrides given on the command line."""
    return {"threshold": threshold, "top": top, "bottom": bottom, "min_area": min_area}


def positive_number(param: typer.CallbackParam, value: float | None) -> float | None:
    """A typer callback: a positive, finite number (nan and inf are refused, naming the option)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value}: expected a positive number, e.g. 60", param=param)
    return value


def split_list(value: str) -> list[str]:
    """A comma-separated option's items, stripped, empty ones left out."""
    return [item.strip() for item in value.split(",") if item.strip()]


MAX_MEGAPIXELS_HELP = "Refuse images whose header claims more pixels (decompression bombs)."


RUNTIME = typer.Option(
    "auto",
    envvar="PTXSEG_RUNTIME",
    help="auto (on a CPU: the fastest runtime here whose masks agree with fp32, measured once "
    "and cached; torch on a GPU), torch, onnxruntime or openvino.",
)
PRECISION = typer.Option(
    "auto",
    envvar="PTXSEG_PRECISION",
    help="auto (with --runtime: the fastest precision whose masks agree with fp32), fp32, bf16 "
    "(torch, openvino; CPUs with AVX-512 BF16 or AMX) or int8 (onnxruntime, openvino; checked "
    "against fp32's masks on real images, refused below Dice 0.99).",
)


# ---------------------------------------------------------------- shared option objects
# One typer.Option each, used as the default of every command that takes it (an `Annotated`
# alias would read the same, but `guarded` keeps the signature's annotations as text).

CHECKPOINTS = typer.Option(..., "--checkpoint", "-c", help=CHECKPOINTS_HELP)
CHECKPOINT = typer.Option(..., "--checkpoint", "-c", help=CHECKPOINT_HELP)
DEVICE = typer.Option("cpu", help="cpu or cuda (torch runtime).")
MAX_MEGAPIXELS = typer.Option(60.0, help=MAX_MEGAPIXELS_HELP, callback=positive_number)


def predictor_spec(
    checkpoint: Path | list[Path],
    runtime: str = "auto",
    precision: str = "auto",
    device: str = "cpu",
    tta: str | None = None,
    batch_size: int = 4,
    operating_point: str | None = None,
    **more,
) -> PredictorSpec:
    """The `PredictorSpec` of the model options (`predict`, `export`, `serve`, `listen`,
    `dicomweb` and `evaluate` build it here, once): one `--checkpoint` as a path, several as the
    list whose probabilities are averaged; `more` holds `overrides` (from `overrides()`) and the
    runtime options compile, compile_mode, channels_last and threads."""
    from ptxseg.inference.spec import PredictorSpec, one_or_many

    overrides = more.pop("overrides", None)
    return PredictorSpec(
        model=one_or_many(checkpoint),
        runtime=runtime,
        precision=precision,
        device=device,
        tta=tta,
        batch_size=batch_size,
        operating_point_name=operating_point,
        overrides=dict(overrides or {}),
        **more,
    )
