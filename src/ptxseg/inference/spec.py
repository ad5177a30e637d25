"""What to predict with, in one value: the `PredictorSpec` that every command builds once.

`predict`, `export`, `evaluate`, `serve`, `listen` and `dicomweb` name a model and how to run
it with the same options (`--checkpoint`, `--runtime`, `--precision`, `--device`, `--tta`,
`--batch-size`, `--operating-point` and its overrides). `ptxseg.cli.options.predictor_spec`
turns them into one frozen spec; the runtime choice (`ptxseg.inference.choice`), the Predictor,
the run record and the PACS analyser read it, so a setting is threaded once, not six times.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ptxseg.model.operating_point import DEFAULT, OperatingPoint

AUTO = "auto"
OVERRIDE_KEYS = ("threshold", "top", "bottom", "min_area")
TORCH_OPTIONS = ("channels_last", "compile", "compile_mode")
ONNX_OPTIONS = ("threads",)


@dataclass(frozen=True)
class PredictorSpec:
    """A model and how to run it.

    `model`: a path, a tuple of paths (an ensemble averaged on the fly), or a loaded module.
    `runtime`/`precision` may be `auto` (`ptxseg.inference.choice`). `operating_point` is an
    explicit point (OperatingPoint or dict) that replaces the stored one; `overrides` (threshold,
    top, bottom, min_area) change the stored point named `operating_point_name` (the main one
    when None). `tta` None takes the TTA the point was searched with.
    """

    model: Any = None
    runtime: str = AUTO
    precision: str = AUTO
    device: str = "cpu"
    tta: str | None = None
    batch_size: int = 4
    operating_point_name: str | None = None
    operating_point: Any = None
    overrides: dict[str, Any] = field(default_factory=dict)
    compile: bool = False
    compile_mode: str = "default"
    channels_last: bool = True
    threads: int | None = None

    def replace(self, **changes: Any) -> PredictorSpec:
        """A copy with `changes` (a resolved runtime and precision, another device...)."""
        return dataclasses.replace(self, **changes)

    @property
    def overridden(self) -> bool:
        """True when an operating-point override was given on the command line."""
        return any(self.overrides.get(k) is not None for k in OVERRIDE_KEYS)

    def resolved_operating_point(self, stored: OperatingPoint | None) -> Any:
        """The explicit point to use: `operating_point`, else the stored point (or the default)
        with the overrides; None when neither is given (the Predictor takes the stored one)."""
        if self.operating_point is not None:
            return self.operating_point
        if not self.overridden:
            return None
        return (stored or DEFAULT).with_overrides(**self.overrides)

    def runtime_options(self, runtime: str | None = None) -> dict[str, Any]:
        """The options of one runtime (torch: channels_last and compilation; ONNX: threads)."""
        wanted = TORCH_OPTIONS if (runtime or self.runtime) == "torch" else ONNX_OPTIONS
        return {key: getattr(self, key) for key in wanted}

    def asked(self) -> dict[str, Any]:
        """The raw option values, as run.json and made-by.json record them."""
        return {
            "runtime": self.runtime,
            "precision": self.precision,
            "device": self.device,
            "tta": self.tta,
            **{k: self.overrides.get(k) for k in OVERRIDE_KEYS},
        }


def one_or_many(models: Any) -> Any:
    """One model as itself, several (a list or tuple) as the list whose probabilities are
    averaged."""
    if isinstance(models, list | tuple):
        return models[0] if len(models) == 1 else list(models)
    return models
