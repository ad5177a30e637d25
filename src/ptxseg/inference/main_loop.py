"""Predict a list of files (or folders) into an output folder: streaming, resumable, at scale.

Three stages run at the same time, each on its own resources:

1. reader processes (`workers.read_input`) parse the files: the CPU decodes and resizes each image
   into its 8-bit model input, or, when the model runs on a GPU, hands on the JPEG Baseline frame
   of a DICOM for nvJPEG to decode (`ptxseg.data.device_images`);
2. this process batches the inputs, decodes and resizes frames on the device, runs the model and
   makes the full-size masks there (`Predictor.probabilities_on_device`,
   `full_size_masks_on_device`), and starts the next batch while the previous one's masks come
   back; on the CPU the Predictor runs as everywhere else and the writers make the masks;
3. writer processes (`workers.write_outputs`) compute the findings and write the files asked for
   (`OUTPUTS`; masks and findings always).

Each image's findings JSON is written last, so it marks the image as done: a rerun skips those
images whose input is still the file they were predicted from (its size, mtime and content digest
are in the findings; `same_input`), and predicts a replaced file again. A file that cannot be
read or predicted becomes an `error` row in summary.csv and the run goes on; a file that cannot
be written (a full disk, a read-only folder) ends the run with an `OSError`. What made the folder
(model, operating point, options) is `ptxseg.inference.record`'s. `ptxseg.util.shards` splits the
sorted input list for parallel jobs. The run's counts and timings (images/s end to end, seconds
to the first result) go to `run.json`.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg.inference.outputs import read_mask, summary_row, write_submission, write_summary
from ptxseg.inference.workers import (
    ALWAYS,
    OUTPUTS,
    PRELOAD,
    ReadResult,
    WriteResult,
    WriteTask,
    read_input,
    read_inputs,
    warm_up,
    write_many,
)
from ptxseg.util import atomic, path_guard
from ptxseg.util.processes import die_with_parent
from ptxseg.util.system import process_age_s, process_context, usable_cores

INPUT_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg")
DECODERS = ("auto", "cpu", "device")
DEFAULT_OUTPUTS = ("mask", "findings", "overlay")
FILES_PER_TASK = 8
"""Files a reader or writer process handles per task when the device decodes: a message between
processes costs the main process about as much as a small file's whole work there, so they go in
groups (see `files_per_task`). On the CPU path each message carries a decoded image or a
probability map, whose bytes outweigh the message, and files go one by one."""
LOOP_STEPS = ("reads", "launch", "device", "hand_out", "writers")
"""Where the main loop waits (`RunResult.loop_s`): for the readers, launching a batch (the model
on the CPU; on a GPU the kernels, and any wait for the device inside), for a batch's results to
come back from the device, handing results to the writers, and for the writers."""
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


def default_workers() -> int:
    """Worker processes for reading and writing: one per usable core."""
    return usable_cores()


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


# ---------------------------------------------------------------------------- worker pools


class Workers:
    """The reader and writer pools of a run; start them early (before the model loads) to hide
    their start-up.

    `processes=True` (what `ptxseg predict` uses) runs `count` worker processes in all, split by
    `device_decode` (readers then only parse headers, so writers get more); they start from a
    fork server, so a script that uses them needs the usual `if __name__ == "__main__":` guard.
    Otherwise `count` reader threads and `count` writer threads run in this process (OpenCV and
    numpy release the interpreter lock; DICOM parsing and findings do not); 0 means one each.
    """

    def __init__(self, count: int, device_decode: bool = False, processes: bool = True) -> None:
        self.count = max(0, int(count))
        self.processes = processes and self.count > 0
        if not self.processes:
            threads = max(1, self.count)
            self.readers: Executor = ThreadPoolExecutor(threads)
            self.writers: Executor = ThreadPoolExecutor(threads)
            self.read_slots = self.write_slots = threads
            return
        share = 4 if device_decode else 2
        self.read_slots = max(1, self.count // share)
        self.write_slots = max(1, self.count - self.read_slots)
        context = process_context(PRELOAD)
        # the workers end with this process, even after kill -9 (`ptxseg.util.processes`)
        pool_options = dict(
            mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
        )
        self.readers = ProcessPoolExecutor(self.read_slots, **pool_options)
        self.writers = ProcessPoolExecutor(self.write_slots, **pool_options)
        for pool, slots in ((self.readers, self.read_slots), (self.writers, self.write_slots)):
            for _ in range(slots):  # start every process now, in the background
                pool.submit(warm_up)

    def close(self) -> None:
        self.readers.shutdown(cancel_futures=True)
        self.writers.shutdown(cancel_futures=True)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def use_device_decoder(predictor, decode: str) -> bool:
    """Whether images are decoded and resized in batches on the model's device.

    `device` insists (nvJPEG on CUDA; on the CPU the same batched path with libjpeg-turbo, which
    gives the CPU path's bytes); `auto` takes it only for the torch runtime on a CUDA device with
    nvJPEG; `cpu` never. The device path needs the torch runtime.
    """
    from ptxseg.data.device_images import jpeg_device_available

    if decode not in DECODERS:
        raise ValueError(f"--decode {decode!r}: expected one of {', '.join(DECODERS)}")
    if decode == "device" and predictor.runtime != "torch":
        raise ValueError(
            f"--decode device needs the torch runtime (this run uses {predictor.runtime}): "
            "use --decode cpu or auto"
        )
    if decode == "auto":
        return predictor.runtime == "torch" and jpeg_device_available(predictor.device)
    return decode == "device"


# ---------------------------------------------------------------------------- the run


def table_name(stem: str, index: int, count: int, suffix: str = "csv") -> str:
    return f"{stem}.{suffix}" if count == 1 else f"{stem}.shard-{index}-of-{count}.{suffix}"


def predict_files(
    predictor,
    files: Sequence[Path],
    out_dir: str | Path,
    *,
    outputs: Sequence[str] = DEFAULT_OUTPUTS,
    seg: bool = False,
    sr: bool = False,
    explain: bool = False,
    workers: int = 2,
    pool: Workers | None = None,
    decode: str = "auto",
    skip_existing: bool = True,
    shard_index: int = 0,
    shard_count: int = 1,
    progress: bool = True,
    max_pixels: int | None = None,
    per_task: int | None = None,
) -> RunResult:
    """Predict `files` into `out_dir` (masks/, findings/, overlays/, seg/, sr/, explain/, CSVs).

    `outputs` names what to write besides masks and findings (`seg`, `sr` and `explain` add
    theirs: a DICOM SEG per positive DICOM input, a DICOM SR (TID 1500) per DICOM input);
    `workers` reader and writer threads are started unless a started `pool` is given (a
    `Workers` of processes, as `ptxseg predict` passes); `decode` is auto, cpu or device (see
    `use_device_decoder`). A file whose header claims more than `max_pixels` (default: the
    readers' limit) is an error row, refused before it is decoded. `per_task` files go to a
    worker per task (default: `files_per_task` when the device decodes, else 1).
    """
    start = time.perf_counter()
    from ptxseg.data.dicom import DEFAULT_MAX_PIXELS
    from ptxseg.data.rle import rle_encode

    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    chosen = parse_outputs(list(outputs) + ["seg"] * seg + ["sr"] * sr + ["explain"] * explain)
    out = Path(out_dir)
    for name in chosen:
        (out / FOLDERS[name]).mkdir(parents=True, exist_ok=True)
    on_device = use_device_decoder(predictor, decode)
    result = RunResult(out, decoder="device" if on_device else "cpu")
    rows: dict[Path, dict[str, Any]] = {}
    submission: dict[Path, tuple[str, str]] = {}
    todo: list[Path] = []
    order: list[Path] = []  # every file to predict or already predicted: batches are cut here
    seen: dict[str, Path] = {}
    present = _present(out) if skip_existing else set()
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
        order.append(path)
        done = _finished(out, image_id) if image_id in present else None
        if done is not None and not same_input(path, done.get("input")):
            done = None  # the file was replaced since it was predicted
            result.replaced += 1
        if done is not None:
            rows[path] = summary_row(image_id, str(path), done)
            submission[path] = (image_id, rle_encode(read_mask(out / "masks" / f"{image_id}.png")))
            result.skipped += 1
        else:
            todo.append(path)

    def fail(path: Path, error: str) -> None:
        rows[path] = summary_row(image_id_for(path), str(path), error=error)
        result.errors += 1

    def written(path: Path, res: WriteResult) -> None:
        if res.os_error is not None:  # the output cannot be written: no point going on
            raise OSError(*res.os_error)
        if res.error is not None:
            fail(path, res.error)
            return
        rows[path] = summary_row(res.image_id, str(path), res.findings)
        submission[path] = (res.image_id, res.rle)
        result.predicted += 1
        done_at = res.done_at if res.done_at is not None else time.monotonic()
        first_done[0] = min(first_done[0], done_at)

    # when the earliest findings were written, by the writer's clock (CLOCK_MONOTONIC, one for
    # every process), not when this process collected them
    first_done = [float("inf")]
    start_monotonic = time.monotonic()
    own_pool = pool is None
    pool = pool or Workers(workers, on_device, processes=False)
    run = _Run(predictor, out, chosen, on_device, pool, max_pixels)
    if per_task:
        run.per_task = per_task
    reads = resume_batches(order, todo, predictor.batch_size)
    try:
        with _progress(progress, len(todo)) as advance:
            run.go(reads, set(reads) - set(todo), fail, written, advance)
    finally:
        if own_pool:
            pool.close()
    result.rows = [rows[p] for p in files if p in rows]
    write_summary(out / table_name("summary", shard_index, shard_count), result.rows)
    write_submission(
        out / table_name("submission", shard_index, shard_count),
        [submission[p] for p in files if p in submission],
    )
    end = time.perf_counter()
    result.seconds = end - start
    if first_done[0] != float("inf"):
        since_first = time.monotonic() - first_done[0]
        age = process_age_s()
        result.first_result_s = round(
            age - since_first if age is not None else first_done[0] - start_monotonic, 3
        )
        result.steady_seconds = since_first
    result.loop_s = {name: round(seconds, 3) for name, seconds in run.spent.items()}
    return result


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


def write_run_record(result: RunResult, path: Path, extra: dict[str, Any]) -> Path:
    """`run.json`: counts, end-to-end images/s, seconds to the first result, and `extra`."""
    record = {
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
    return atomic.write_text(path, json.dumps(record, indent=2) + "\n")


@dataclass
class _Batch:
    """A batch on its way: the files, and what the model made of them (or will, on a GPU)."""

    items: list[tuple[Path, ReadResult]]
    shapes: list[tuple[int, int]]
    inputs_host: np.ndarray | None = None  # uint8 (B, S, S), for explanations
    probs: np.ndarray | None = None  # CPU path: model-size probabilities
    packed: Any = None  # device path: pinned host copy of the packed masks
    offsets: list[int] = field(default_factory=list)
    peaks: Any = None
    ready: Any = None  # CUDA event recorded after the copies back


class _Run:
    """The loop of `predict_files`: reads in flight, one batch on the device, writes in flight."""

    def __init__(
        self, predictor, out: Path, outputs, on_device: bool, pool: Workers, max_pixels: int
    ) -> None:
        self.predictor, self.out, self.outputs = predictor, out, outputs
        self.on_device, self.pool, self.max_pixels = on_device, pool, max_pixels
        self.describer = predictor.describer()
        self.companions: set[Path] = set()  # set by go()
        self.spent = dict.fromkeys(LOOP_STEPS, 0.0)
        self.writing = 0  # images handed to the writers and not yet collected
        # files per reader or writer task
        self.per_task = files_per_task(predictor.batch_size) if on_device else 1

    def timed(self, step: str, fn: Callable[..., Any], *args) -> Any:
        """`fn(*args)`, its seconds added to `spent[step]`."""
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.spent[step] += time.perf_counter() - start

    def go(
        self,
        todo: Sequence[Path],
        companions: set[Path],
        fail: Callable[[Path, str], None],
        written: Callable[[Path, WriteResult], None],
        advance: Callable[[], None],
    ) -> None:
        """Predict `todo` in batches cut every `batch_size` files; `companions` (finished
        earlier) go through the model beside the others but are neither written nor counted."""
        size, batch_size = self.predictor.input_size, self.predictor.batch_size
        self.companions = companions
        per_task = self.per_task
        reads = _prefetch(
            lambda paths: self.pool.readers.submit(
                read_inputs, [str(p) for p in paths], size, self.on_device, self.max_pixels
            ),
            todo,
            per_task,
            2 * batch_size + 2 * per_task * self.pool.read_slots,
        )
        writes: deque[tuple[list[Path], Future]] = deque()
        limit = 2 * batch_size + 2 * per_task * self.pool.write_slots
        failed: set[Path] = set()

        def fail_once(path: Path, error: str) -> None:
            if path not in failed and path not in companions:
                failed.add(path)
                fail(path, error)
                advance()

        def collect(keep: int) -> None:
            """Take the writers' results in order: all but `keep` images, and any done."""
            while writes and (self.writing > keep or writes[0][1].done()):
                paths, future = writes.popleft()
                self.writing -= len(paths)
                try:
                    results = self.timed("writers", future.result)
                except Exception as err:  # noqa: BLE001 - a dead worker: those files' rows
                    results = [err] * len(paths)
                for path, result in zip(paths, results, strict=True):
                    if isinstance(result, Exception):
                        fail(path, f"{type(result).__name__}: {result}")
                    else:
                        written(path, result)
                    advance()

        pending: _Batch | None = None
        for chunk in _batches(reads, batch_size):
            items = []
            for path, future, position in chunk:
                try:
                    read = self.timed("reads", future.result)[position]
                except Exception as err:  # noqa: BLE001 - a dead worker: those files' rows
                    read = ReadResult(str(path), error=f"{type(err).__name__}: {err}")
                if read.error is not None:
                    fail_once(path, read.error)
                else:
                    items.append((path, read))
            if not items:
                continue
            try:
                launched = self.timed("launch", self.launch, items, fail_once)
            except Exception as err:  # noqa: BLE001 - the batch's files get the error
                for path, _ in items:
                    fail_once(path, f"{type(err).__name__}: {err}")
                launched = None
            if launched is not None and not self.on_device:
                # the model ran on the CPU already: nothing to overlap, the writers start now
                self.finish(launched, writes)
                launched = None
            if pending is not None:  # the device works on this batch while we finish the last
                self.finish(pending, writes)
            pending = launched
            collect(limit)
        if pending is not None:
            self.finish(pending, writes)
        collect(0)

    # ------------------------------------------------------------------ model

    def launch(self, items, fail) -> _Batch | None:
        """Start the model on a batch: on the device asynchronously, on the CPU at once."""
        if self.on_device:
            return self._launch_device(items, fail)
        inputs = np.stack([read.model_input for _, read in items])
        batch = _Batch(items, [tuple(read.shape) for _, read in items], inputs_host=inputs)
        batch.probs = self.predictor.probabilities(inputs)
        return batch

    def _launch_device(self, items, fail) -> _Batch | None:
        import torch

        from ptxseg.data.device_images import decode_frames, to_model_inputs
        from ptxseg.inference.predictor import full_size_masks_on_device

        predictor, size = self.predictor, self.predictor.input_size
        device = torch.device(predictor.device)
        framed = [i for i, (_, read) in enumerate(items) if read.frame is not None]
        decoded = decode_frames([items[i][1].frame for i in framed], device)
        singles: dict[int, Any] = {}
        frames, inverts, where = [], [], []
        for i, image in zip(framed, decoded, strict=True):
            path, read = items[i]
            if isinstance(image, Exception) or tuple(image.shape) != tuple(read.shape):
                # the CPU's own reader
                again = read_input(str(path), size, keep_frame=False, max_pixels=self.max_pixels)
                if again.error is not None:
                    fail(path, again.error)
                    continue
                items[i] = (path, again)
                continue
            frames.append(image)
            inverts.append(read.invert)
            where.append(i)
        small = to_model_inputs(frames, size, inverts) if frames else None
        kept = [
            i for i, (_, read) in enumerate(items) if i in where or read.model_input is not None
        ]
        if not kept:
            return None
        if kept == where:  # the usual batch: every image decoded here, in order
            inputs = small
        else:
            singles.update({i: small[k : k + 1] for k, i in enumerate(where)})
            host = [i for i in kept if i not in singles]
            if host:
                uploaded = predictor.upload(np.stack([items[i][1].model_input for i in host]))
                singles.update({i: uploaded[k : k + 1] for k, i in enumerate(host)})
            inputs = torch.cat([singles[i] for i in kept])
        items = [items[i] for i in kept]
        shapes = [tuple(read.shape) for _, read in items]
        probs = predictor.probabilities_on_device(inputs)
        masks, peaks = full_size_masks_on_device(probs, shapes, predictor.operating_point)
        packed = pack_bits_many(masks)
        batch = _Batch(items, shapes)
        batch.offsets = np.cumsum([0] + [(h * w + 7) // 8 for h, w in shapes]).tolist()
        batch.packed, batch.peaks, batch.ready = _copy_back(packed, peaks.float())
        if "explain" in self.outputs:
            batch.inputs_host = inputs.cpu().numpy()
        return batch

    # ------------------------------------------------------------------ writing

    def finish(self, batch: _Batch, writes: deque) -> None:
        """Hand each image of a launched batch to a writer."""
        if batch.ready is not None:
            self.timed("device", batch.ready.synchronize)
        self.timed("hand_out", self._hand_out, batch, writes)

    def _hand_out(self, batch: _Batch, writes: deque) -> None:
        packed = batch.packed.numpy() if batch.packed is not None else None
        peaks = batch.peaks.numpy() if batch.peaks is not None else None
        paths: list[Path] = []
        tasks: list[WriteTask] = []
        for i, ((path, read), shape) in enumerate(zip(batch.items, batch.shapes, strict=True)):
            if path in self.companions:
                continue
            task = WriteTask(
                path=str(path),
                image_id=image_id_for(path),
                out_dir=str(self.out),
                outputs=self.outputs,
                meta=read.meta,
                shape=shape,
                describer=self.describer,
                source=read.source,
            )
            if packed is not None:
                bits = packed[batch.offsets[i] : batch.offsets[i + 1]]
                task.peak = float(peaks[i])
                if bits.any():
                    task.mask_bits = bits.copy()
                else:  # most images: nothing to send
                    task.empty = True
            else:
                task.prob_small = batch.probs[i]
            if "explain" in self.outputs:
                task.cam_small = self.predictor.explain_input(batch.inputs_host[i])
            paths.append(path)
            tasks.append(task)
        per_task = self.per_task
        for start in range(0, len(tasks), per_task):
            group = tasks[start : start + per_task]
            writes.append(
                (paths[start : start + per_task], self.pool.writers.submit(write_many, group))
            )
            self.writing += len(group)


def pack_bits(mask):
    """`np.packbits(mask.ravel())` of a bool torch tensor, computed on its device."""
    import torch

    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.pow(2, torch.arange(7, -1, -1, device=flat.device)).to(torch.int32)
    return (flat.view(-1, 8).to(torch.int32) * weights).sum(1).to(torch.uint8)


def pack_bits_many(masks):
    """The `pack_bits` of each mask, one after the other: in one pass when every mask's pixel
    count is a multiple of 8 (any width that is), so a batch costs a few kernels, not a few
    per image."""
    import torch

    if not masks:
        raise ValueError("pack_bits_many needs at least one mask")
    if any(m.numel() % 8 for m in masks):
        return torch.cat([pack_bits(m) for m in masks])
    return pack_bits(torch.cat([m.reshape(-1) for m in masks]))


def _copy_back(*tensors):
    """Asynchronous copies of device tensors into pinned host memory, and an event when done."""
    import torch

    if tensors[0].device.type != "cuda":
        return (*(t.cpu() for t in tensors), None)
    hosts = []
    for t in tensors:
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        hosts.append(host)
    event = torch.cuda.Event()
    event.record()
    return (*hosts, event)


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


def files_per_task(batch_size: int) -> int:
    """Files per reader or writer task: up to `FILES_PER_TASK`, no more than half a batch (so
    that a batch still spreads over two workers at least)."""
    return max(1, min(FILES_PER_TASK, batch_size // 2))


def _prefetch(
    submit: Callable[[list[Path]], Future], paths: Sequence[Path], per_task: int, depth: int
) -> Iterator[tuple[Path, Future, int]]:
    """Yield (path, future, position in the task's results) in order: `per_task` files to a
    task, at most about `depth` files in flight."""
    pending: deque[tuple[Path, Future, int]] = deque()
    for start in range(0, len(paths), per_task):
        group = list(paths[start : start + per_task])
        future = submit(group)
        pending.extend((path, future, k) for k, path in enumerate(group))
        while len(pending) >= depth:
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
