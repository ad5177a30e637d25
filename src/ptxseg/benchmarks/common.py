"""The one benchmark harness: warm-up and timing, an explicit baseline, error rows, and tables
whose header names the machine and the package versions.

Every `ptxseg benchmark*` command and the load test measure through `timed`, compare with a
baseline they name (`add_ratios`), turn a failing configuration into an `error` cell
(`error_text`) and write `<name>.md` + `<name>.csv` through `write_table`, under
`environment_lines()`: CPU model and instruction sets, GPU, and the versions of torch and the
runtimes as installed (the lock's versions after `make install`). Ratios are what to compare:
the machines are shared and noisy, so configurations run side by side in one process or run.
"""

from __future__ import annotations

import csv
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptxseg.util import atomic
from ptxseg.util.system import cpu_info, gpu_description, package_versions, usable_cores

PACKAGES = (
    "torch",
    "torchvision",
    "segmentation-models-pytorch",
    "timm",
    "lightning",
    "onnxruntime",
    "openvino",
    "opencv-python-headless",
    "numpy",
    "pydicom",
)
"""The packages whose versions decide the numbers; every table header lists them."""


# ---------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Seconds per call of the timed repetitions (after warm-up), and the items per call."""

    seconds: tuple[float, ...]
    items: int = 1

    @property
    def p50(self) -> float:
        return statistics.median(self.seconds)

    @property
    def p95(self) -> float:
        return percentile(self.seconds, 95)

    @property
    def rate(self) -> float:
        """Items per second at the median call."""
        return self.items / self.p50

    @property
    def best_rate(self) -> float:
        """Items per second of the fastest call (the least disturbed by other load)."""
        return self.items / min(self.seconds)

    @property
    def mean_rate(self) -> float:
        """Items per second over all timed calls together."""
        return self.items * len(self.seconds) / sum(self.seconds)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def timed(
    fn: Callable[[], Any],
    items: int = 1,
    warmup: int = 1,
    repeats: int = 3,
    min_time: float = 0.0,
    sync: Callable[[], None] | None = None,
) -> Timing:
    """Time `fn` (which handles `items` items per call) after `warmup` untimed calls.

    It runs at least `repeats` times and at least `min_time` seconds; `sync` (e.g. a CUDA
    synchronise) runs before each clock reading, so asynchronous work is counted where it ran.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    seconds: list[float] = []
    began = time.perf_counter()
    while len(seconds) < max(1, repeats) or time.perf_counter() - began < min_time:
        start = time.perf_counter()
        fn()
        sync()
        seconds.append(time.perf_counter() - start)
    return Timing(tuple(seconds), items)


def device_sync(device: Any) -> Callable[[], None]:
    """A synchronise for `device` (CUDA waits for its queue; the CPU needs nothing)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


# ---------------------------------------------------------------- rows


def error_text(error: BaseException, limit: int = 300) -> str:
    """The `error` cell of a row whose configuration failed: type and first line, bounded."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return " ".join(f"{type(error).__name__}: {first}".split())[:limit]


def add_ratios(
    rows: Sequence[dict[str, Any]],
    value: str,
    baseline: Callable[[dict[str, Any]], bool],
    column: str = "speedup",
    group: Callable[[dict[str, Any]], Any] = lambda row: None,
) -> None:
    """Set `row[column] = row[value] / baseline[value]` for every row, where the baseline is the
    row of the same `group` for which `baseline(row)` is true. Rows without a usable baseline
    keep the cell empty: a ratio is never taken against a row that failed."""
    bases = {
        group(r): r[value]
        for r in rows
        if baseline(r) and isinstance(r.get(value), int | float) and r[value] > 0
    }
    for row in rows:
        base = bases.get(group(row))
        if base and isinstance(row.get(value), int | float):
            row[column] = round(row[value] / base, 2)


# ---------------------------------------------------------------- tables


def environment_lines() -> list[str]:
    """Where the numbers come from: CPU, its instruction sets, GPU, threads and versions."""
    import torch

    cpu = cpu_info()
    versions = package_versions(PACKAGES)
    return [
        f"- CPU: {cpu.model}; {cpu.cores} logical cores ({usable_cores()} usable, "
        f"{torch.get_num_threads()} torch threads); instruction sets: {cpu.isa()}",
        f"- GPU: {gpu_description()}",
        "- versions: " + ", ".join(f"{name} {v}" for name, v in versions.items() if v != "-"),
    ]


def _fmt(value: Any) -> str:
    """Numbers without trailing zeros (a CSV round trip turns 256 into 256.0)."""
    if isinstance(value, float):
        return f"{value:g}" if value == value else "nan"
    return "" if value is None else str(value)


def rows_to_markdown(rows: Sequence[Mapping[str, Any]], columns: Mapping[str, str]) -> str:
    """A Markdown table of the rows under the column headers; empty columns are left out."""
    keys = [k for k in columns if any(_fmt(r.get(k, "")) != "" for r in rows)]
    lines = [
        "| " + " | ".join(columns[k] for k in keys) + " |",
        "|" + "|".join("---" for _ in keys) + "|",
    ]
    for row in rows:
        cells = [_fmt(row.get(k, "")).replace("|", "\\|")[:160] for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(
    out_dir: str | Path,
    name: str,
    title: str,
    columns: Mapping[str, str],
    rows: Sequence[Mapping[str, Any]],
    baseline: str = "",
    notes: str = "",
    header: Sequence[str] = (),
) -> dict[str, Path]:
    """`<name>.md` (title, environment, baseline, `header` lines, table, notes) and
    `<name>.csv`, atomically."""
    out = Path(out_dir)
    text = f"# {title}\n\n" + "\n".join(environment_lines()) + "\n"
    if baseline:
        text += f"- baseline: {baseline}\n"
    text += "".join(f"- {line}\n" for line in header)
    text += "\n" + rows_to_markdown(rows, columns)
    if notes:
        text += "\n" + notes.strip() + "\n"
    return {
        "md": atomic.write_text(out / f"{name}.md", text),
        "csv": atomic.write_csv(out / f"{name}.csv", list(columns), rows),
    }


def read_table_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a table CSV with numbers parsed back (empty cells stay '')."""
    rows = []
    with open(path, newline="") as handle:
        for raw in csv.DictReader(handle):
            row: dict[str, Any] = {}
            for key, value in raw.items():
                try:
                    row[key] = float(value) if value not in ("", None) else ""
                except ValueError:
                    row[key] = value
            rows.append(row)
    return rows
