"""What a `predict` run did, in numbers: `RunResult` and its record, `run.json`.

The counts (predicted, skipped, errors), the end-to-end images/s (and after the first result),
the seconds from the process's start to the first result, where images were decoded, and where
the main loop waited; `run.json` adds the start-up timings, the path that ran and the decision
rule (`operating_point_record`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptxseg.util import schemas
from ptxseg.util.jsonio import write_json


@dataclass
class RunResult:
    out_dir: Path
    predicted: int = 0
    skipped: int = 0
    errors: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # predict_files from call to return
    first_result_s: float | None = None  # since the process started (else since the call)
    decoder: str = "cpu"  # where images were decoded and resized: cpu or device (nvJPEG)
    steady_seconds: float = 0.0  # from the first result to the end: start-up and compile left out
    replaced: int = 0  # finished earlier, but the input file changed since: predicted again
    loop_s: dict[str, float] = field(default_factory=dict)  # where the main loop spent its time

    @property
    def total(self) -> int:
        return self.predicted + self.skipped + self.errors

    @property
    def images_per_s(self) -> float | None:
        return self.predicted / self.seconds if self.seconds > 0 and self.predicted else None

    @property
    def steady_images_per_s(self) -> float | None:
        """Images/s once results flow: the images after the first over the time after it."""
        if self.predicted < 2 or self.steady_seconds <= 0:
            return None
        return (self.predicted - 1) / self.steady_seconds


def write_run_record(result: RunResult, path: Path, extra: dict[str, Any]) -> Path:
    """`run.json`: counts, end-to-end images/s, seconds to the first result, and `extra`."""
    record = {
        "schema_version": schemas.PREDICT_RUN,
        "predicted": result.predicted,
        "skipped": result.skipped,
        "errors": result.errors,
        "seconds": round(result.seconds, 3),
        "images_per_s": round(result.images_per_s, 2) if result.images_per_s else None,
        "images_per_s_after_first_result": round(result.steady_images_per_s, 2)
        if result.steady_images_per_s
        else None,
        "first_result_after_start_s": result.first_result_s,
        "decoder": result.decoder,
        # seconds this process spent waiting for reads, launching batches, waiting for the
        # device, handing results to the writers and waiting for them: the largest is the bound
        "main_loop_s": result.loop_s,
        **extra,
    }
    return write_json(path, record)


def operating_point_record(predictor) -> dict:
    """What run.json says about the decision rule: the point's name, values and calibrator."""
    calibrator = predictor.calibrator
    return {
        "operating_point_name": predictor.operating_point_name,
        "operating_point": predictor.operating_point.to_dict(),
        "calibrator": None if calibrator is None else calibrator.describe(),
    }


def outcome_line(result: RunResult) -> str:
    """'predicted 12, skipped (already done) 0, errors 0; 3 with pneumothorax. 4.1 s, ...'."""
    positives = sum(1 for r in result.rows if str(r.get("pneumothorax")) == "True")
    rate = f"{result.images_per_s:.1f} images/s end to end" if result.images_per_s else "-"
    if result.steady_images_per_s:
        rate += f" ({result.steady_images_per_s:.1f} after the first result)"
    first = result.first_result_s
    return (
        f"predicted {result.predicted}, skipped (already done) {result.skipped}, "
        f"errors {result.errors}; {positives} with pneumothorax. {result.seconds:.1f} s, {rate}"
        + (f", first result {first:.1f} s after start" if first is not None else "")
        + f" (decoded on the {'GPU' if result.decoder == 'device' else 'CPU'}). "
        f"Results in {result.out_dir}"
    )
