"""Predict a list of files (or folders) into an output folder, streaming and resumable.

Files are decoded by a thread pool while the model runs on the previous batch, and at most a few
batches are held in memory. Each image's findings JSON is written last, so it marks the image as
done: a rerun skips those images. A file that cannot be read or predicted becomes an `error` row in
summary.csv and the run goes on. `ptxseg.shards` splits the sorted input list for parallel jobs.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg import atomic
from ptxseg.inference.outputs import (
    read_mask,
    summary_row,
    write_json,
    write_mask,
    write_overlay,
    write_submission,
    write_summary,
)

INPUT_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg")


def collect_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly plus image files found recursively in folders, sorted, no repeats."""
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.update(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES
            )
        elif path.exists():
            found.add(path)
        else:
            raise FileNotFoundError(f"input {path} does not exist: expected a file or a folder")
    return sorted(found, key=lambda p: str(p))


def image_id_for(path: Path) -> str:
    """The ImageId of a file: its name without the extension (SIIM's convention)."""
    return path.stem


@dataclass
class RunResult:
    out_dir: Path
    predicted: int = 0
    skipped: int = 0
    errors: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.predicted + self.skipped + self.errors


def _load(path: Path, max_pixels: int):
    from ptxseg.data.dicom import read_image

    return read_image(path, max_pixels=max_pixels)


def _table_name(stem: str, index: int, count: int) -> str:
    return f"{stem}.csv" if count == 1 else f"{stem}.shard-{index}-of-{count}.csv"


def predict_files(
    predictor,
    files: Sequence[Path],
    out_dir: str | Path,
    *,
    seg: bool = False,
    sr: bool = False,
    explain: bool = False,
    workers: int = 2,
    skip_existing: bool = True,
    shard_index: int = 0,
    shard_count: int = 1,
    progress: bool = True,
    max_pixels: int | None = None,
) -> RunResult:
    """Predict `files` into `out_dir` (masks/, overlays/, findings/, seg/, sr/, explain/, CSVs).

    `seg` writes a DICOM SEG per positive DICOM input, `sr` a DICOM SR (TID 1500) per DICOM input.
    A file whose header claims more than `max_pixels` (default: the readers' limit) is an error
    row, refused before it is decoded.
    """
    from ptxseg.data.dicom import DEFAULT_MAX_PIXELS
    from ptxseg.data.rle import rle_encode

    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    out = Path(out_dir)
    for sub in ("masks", "overlays", "findings"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    result = RunResult(out)
    rows: dict[Path, dict[str, Any]] = {}
    submission: dict[Path, tuple[str, str]] = {}
    todo: list[Path] = []
    seen: dict[str, Path] = {}
    for path in files:
        image_id = image_id_for(path)
        if image_id in seen:
            rows[path] = summary_row(
                image_id,
                str(path),
                error=f"duplicate ImageId {image_id!r} (also {seen[image_id]})"
                "; rename one of the files",
            )
            result.errors += 1
            continue
        seen[image_id] = path
        done = _finished(out, image_id)
        if skip_existing and done is not None:
            rows[path] = summary_row(image_id, str(path), done)
            submission[path] = (image_id, rle_encode(read_mask(out / "masks" / f"{image_id}.png")))
            result.skipped += 1
        else:
            todo.append(path)

    def finish(path: Path, image: np.ndarray, meta: dict[str, Any], pred) -> None:
        image_id = image_id_for(path)
        write_mask(out / "masks" / f"{image_id}.png", pred.mask)
        write_overlay(out / "overlays" / f"{image_id}.png", image, pred.mask, pred.findings)
        findings = dict(pred.findings, image_id=image_id, input_file=str(path))
        if meta.get("HeaderWarnings"):
            findings["header_warnings"] = meta["HeaderWarnings"]
        segmentation = None
        if seg and pred.mask.any() and meta.get("source") == "dicom":
            from ptxseg.inference.seg import build_segmentation, save_segmentation

            segmentation, notes = build_segmentation(path, pred.mask)
            target = out / "seg" / f"{image_id}.dcm"
            findings["seg_file"] = str(save_segmentation(segmentation, notes, target, findings))
        if sr and meta.get("source") == "dicom":
            from ptxseg.inference.sr import write_report

            target = out / "sr" / f"{image_id}.dcm"
            findings["sr_file"] = str(write_report(path, findings, target, segmentation))
        if explain:
            from ptxseg.inference.explain import heatmap_overlay
            from ptxseg.inference.outputs import encode_png

            cam = predictor.explain(image)
            png = encode_png(heatmap_overlay(image, cam))
            atomic.write_bytes(out / "explain" / f"{image_id}.png", png)
        write_json(out / "findings" / f"{image_id}.json", findings)  # last: marks it done
        rows[path] = summary_row(image_id, str(path), findings)
        submission[path] = (image_id, rle_encode(pred.mask))

    def fail(path: Path, err: BaseException) -> None:
        rows[path] = summary_row(
            image_id_for(path), str(path), error=f"{type(err).__name__}: {err}"
        )
        result.errors += 1

    lock = threading.Lock()

    def write_job(path: Path, image: np.ndarray, meta: dict[str, Any], pred) -> None:
        try:
            finish(path, image, meta, pred)
            with lock:
                result.predicted += 1
        except Exception as err:
            with lock:
                fail(path, err)

    batch_size = predictor.batch_size
    writes: deque[Future] = deque()
    with (
        _progress(progress, len(todo)) as advance,
        ThreadPoolExecutor(max(1, workers)) as pool,
        ThreadPoolExecutor(max(1, workers)) as writer,
    ):
        prefetched = _prefetch(pool, todo, 2 * batch_size + workers, max_pixels)
        for batch in _batches(prefetched, batch_size):
            loaded = []
            for path, future in batch:
                try:
                    loaded.append((path, *future.result()))
                except Exception as err:
                    with lock:
                        fail(path, err)
                    advance()
            try:
                preds = predictor.predict_batch(
                    [im for _, im, _ in loaded], [m for *_, m in loaded]
                )
            except Exception as err:
                with lock:
                    for path, *_ in loaded:
                        fail(path, err)
                        advance()
                continue
            for (path, image, meta), pred in zip(loaded, preds, strict=True):
                writes.append(writer.submit(write_job, path, image, meta, pred))
            while len(writes) > 2 * batch_size:  # bounded: images wait in memory until written
                writes.popleft().result()
                advance()
        while writes:
            writes.popleft().result()
            advance()
    result.rows = [rows[p] for p in files if p in rows]
    write_summary(out / _table_name("summary", shard_index, shard_count), result.rows)
    write_submission(
        out / _table_name("submission", shard_index, shard_count),
        [submission[p] for p in files if p in submission],
    )
    return result


def _finished(out: Path, image_id: str) -> dict[str, Any] | None:
    """The stored findings when the image is complete (findings JSON and mask PNG present)."""
    findings, mask = out / "findings" / f"{image_id}.json", out / "masks" / f"{image_id}.png"
    if not (findings.is_file() and mask.is_file()):
        return None
    try:
        return json.loads(findings.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _prefetch(
    pool: ThreadPoolExecutor, paths: Sequence[Path], depth: int, max_pixels: int
) -> Iterator:
    """Yield (path, future) in order, keeping at most `depth` decodes in flight."""
    pending: deque[tuple[Path, Future]] = deque()
    for path in paths:
        pending.append((path, pool.submit(_load, path, max_pixels)))
        if len(pending) >= depth:
            yield pending.popleft()
    while pending:
        yield pending.popleft()


def _batches(items: Iterator, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _progress:
    """A rich progress bar (or nothing) whose context value advances it by one image."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
        )
        self._bar.__enter__()
        task = self._bar.add_task("predict", total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc):
        if self.enabled:
            self._bar.__exit__(*exc)
        return False
