"""What a `predict` run reads and what it can skip: the inputs found in files and folders,
the outputs asked for, and, in a folder of earlier results, which images are finished.

Each image's findings JSON is written last, so it marks the image as done: a rerun skips those
images whose input is still the file they were predicted from (its size, mtime and content digest
are in the findings; `same_input`), and predicts a replaced file again. A rerun after an
interruption reads the finished companions of a batch again (`resume_batches`), so the files
left get what an uninterrupted run gives them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptxseg.inference.outputs import read_mask, summary_row
from ptxseg.inference.workers import ALWAYS, OUTPUTS
from ptxseg.util import path_guard

INPUT_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg")
DEFAULT_OUTPUTS = ("mask", "findings", "overlay")
FOLDERS = {
    "mask": "masks",
    "findings": "findings",
    "overlay": "overlays",
    "seg": "seg",
    "sr": "sr",
    "explain": "explain",
}


def parse_outputs(text: str | Sequence[str]) -> tuple[str, ...]:
    """'mask,findings,overlay' -> the outputs in `OUTPUTS` order; mask and findings always."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    unknown = [n for n in names if n and n not in OUTPUTS]
    if unknown:
        raise ValueError(
            f"unknown output(s) {', '.join(unknown)}: choose from {', '.join(OUTPUTS)} "
            "(mask and findings are always written)"
        )
    chosen = set(names) | set(ALWAYS)
    return tuple(n for n in OUTPUTS if n in chosen)


def collect_inputs(paths: Iterable[str | Path], skip: Iterable[str | Path] = ()) -> list[Path]:
    """Files named directly plus image files found recursively in folders, sorted, no repeats.

    The walk does not enter the folders in `skip` (the run's own output folder) nor any folder
    of earlier results (`ptxseg.util.path_guard.walk`): masks and overlays are not chest X-rays."""
    found: set[Path] = set()
    skip = list(skip)
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.update(path_guard.walk(path, INPUT_SUFFIXES, skip))
        elif path.exists():
            found.add(path)
        else:
            raise FileNotFoundError(f"input {path} does not exist: expected a file or a folder")
    return sorted(found, key=lambda p: str(p))


def image_id_for(path: Path) -> str:
    """The ImageId of a file: its name without the extension (SIIM's convention)."""
    return path.stem


def table_name(stem: str, index: int, count: int, suffix: str = "csv") -> str:
    return f"{stem}.{suffix}" if count == 1 else f"{stem}.shard-{index}-of-{count}.{suffix}"


@dataclass
class InputPlan:
    """The inputs of a run sorted out: `order` every file to predict or already predicted
    (batches are cut there), `todo` the files to predict, and for the others their summary
    `rows` and `submission` entries; `errors` duplicate ImageIds, `replaced` files changed since
    they were predicted."""

    order: list[Path] = field(default_factory=list)
    todo: list[Path] = field(default_factory=list)
    rows: dict[Path, dict[str, Any]] = field(default_factory=dict)
    submission: dict[Path, tuple[str, str]] = field(default_factory=dict)
    skipped: int = 0
    errors: int = 0
    replaced: int = 0


def plan_inputs(files: Sequence[Path], out: Path, skip_existing: bool = True) -> InputPlan:
    """Which of `files` to predict into `out`: a repeated ImageId is an error row; an image
    finished earlier from the same input is skipped (`skip_existing`), its row read back."""
    from ptxseg.data.rle import rle_encode

    plan = InputPlan()
    seen: dict[str, Path] = {}
    present = _present(out) if skip_existing else set()
    for path in files:
        image_id = image_id_for(path)
        if image_id in seen:
            plan.rows[path] = summary_row(
                image_id,
                str(path),
                error=f"duplicate ImageId {image_id!r} (also {seen[image_id]})"
                "; rename one of the files",
            )
            plan.errors += 1
            continue
        seen[image_id] = path
        plan.order.append(path)
        done = _finished(out, image_id) if image_id in present else None
        if done is not None and not same_input(path, done.get("input")):
            done = None  # the file was replaced since it was predicted
            plan.replaced += 1
        if done is not None:
            plan.rows[path] = summary_row(image_id, str(path), done)
            mask = read_mask(out / "masks" / f"{image_id}.png")
            plan.submission[path] = (image_id, rle_encode(mask))
            plan.skipped += 1
        else:
            plan.todo.append(path)
    return plan


def resume_batches(order: Sequence[Path], todo: Sequence[Path], size: int) -> list[Path]:
    """The files to read: each batch of `order` (cut every `size` files, as a run from the start
    cuts it) that holds a file of `todo`, whole. A model's numbers depend a little on the other
    images of its batch (the kernels change with the batch), so a rerun after an interruption
    predicts its finished companions again, without writing them, to give the files left what
    an uninterrupted run gives them, to the last digit."""
    wanted = set(todo)
    kept: list[Path] = []
    for start in range(0, len(order), max(1, size)):
        batch = order[start : start + max(1, size)]
        if any(path in wanted for path in batch):
            kept.extend(batch)
    return kept


def _present(out: Path) -> set[str]:
    """ImageIds with both a findings JSON and a mask PNG in `out`: two folder listings instead of
    two file checks per input, which count at archive scale."""

    def stems(folder: Path, suffix: str) -> set[str]:
        try:
            with os.scandir(folder) as entries:
                return {e.name[: -len(suffix)] for e in entries if e.name.endswith(suffix)}
        except FileNotFoundError:
            return set()

    return stems(out / "findings", ".json") & stems(out / "masks", ".png")


def same_input(path: Path, recorded: dict[str, Any] | None) -> bool:
    """Whether `path` is still the file whose size, mtime and digest a findings JSON recorded.

    Equal size and mtime are taken as the same file (no read: a resume stays two listings and
    one stat per file); another size is another file; the same size with another mtime is
    decided by the content digest (a copy, or a touched file, is still the same image)."""
    if not isinstance(recorded, dict):
        return False
    try:
        stat = path.stat()
    except OSError:
        return False
    if stat.st_size != recorded.get("size"):
        return False
    if stat.st_mtime_ns == recorded.get("mtime_ns"):
        return True
    from ptxseg.inference.workers import input_record

    try:
        return input_record(str(path))["sha256"] == recorded.get("sha256")
    except OSError:
        return False


def _finished(out: Path, image_id: str) -> dict[str, Any] | None:
    """The stored findings when the image is complete (findings JSON and mask PNG present)."""
    findings, mask = out / "findings" / f"{image_id}.json", out / "masks" / f"{image_id}.png"
    if not (findings.is_file() and mask.is_file()):
        return None
    try:
        return json.loads(findings.read_text())
    except (OSError, json.JSONDecodeError):
        return None
