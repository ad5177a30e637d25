"""The main loop of `predict`: streaming, resumable, at scale.

Three stages run at the same time, each on its own resources:

1. reader processes (`workers.read_input`) parse the files: the CPU decodes and resizes each image
   into its 8-bit model input, or, when the model runs on a GPU, hands on the JPEG Baseline frame
   of a DICOM for nvJPEG to decode (`ptxseg.data.device_images`);
2. this process batches the inputs and runs the model: on a GPU the batch is decoded, predicted
   and made into full-size masks on the device (`ptxseg.inference.device_batch`), and the next
   batch starts while the previous one's masks come back; on the CPU the Predictor runs as
   everywhere else and the writers make the masks;
3. writer processes (`workers.write_outputs`) compute the findings and write the files asked for
   (`OUTPUTS`; masks and findings always).

What is done and what to read is `ptxseg.inference.inputs`'s (a rerun skips finished images). A
file that cannot be read or predicted becomes an `error` row in summary.csv and the run goes on;
a file that cannot be written (a full disk, a read-only folder) ends the run with an `OSError`.
The run's counts and timings are `ptxseg.inference.run_record`'s; the command's front door
(start-up, sharding, the folder record, run.json) is `ptxseg.inference.pipeline.run`.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg.inference.device_batch import Batch, launch_on_device, use_device_decoder
from ptxseg.inference.inputs import (
    DEFAULT_OUTPUTS,
    FOLDERS,
    InputPlan,
    image_id_for,
    parse_outputs,
    plan_inputs,
    resume_batches,
    table_name,
)
from ptxseg.inference.outputs import summary_row, write_submission, write_summary
from ptxseg.inference.run_record import RunResult
from ptxseg.inference.workers import (
    PRELOAD,
    ReadResult,
    WriteResult,
    WriteTask,
    read_inputs,
    warm_up,
    write_many,
)
from ptxseg.util.processes import die_with_parent
from ptxseg.util.system import process_age_s, process_context, usable_cores

FILES_PER_TASK = 8
"""Files a reader or writer process handles per task when the device decodes: a message between
processes costs the main process about as much as a small file's whole work there, so they go in
groups (see `files_per_task`). On the CPU path each message carries a decoded image or a
probability map, whose bytes outweigh the message, and files go one by one."""
LOOP_STEPS = ("reads", "launch", "device", "hand_out", "writers")
"""Where the main loop waits (`RunResult.loop_s`): for the readers, launching a batch (the model
on the CPU; on a GPU the kernels, and any wait for the device inside), for a batch's results to
come back from the device, handing results to the writers, and for the writers."""


def default_workers() -> int:
    """Worker processes for reading and writing: one per usable core."""
    return usable_cores()


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


# ---------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class LoopOptions:
    """How `predict_files` runs: `outputs` names what to write besides masks and findings
    (`seg`, `sr` and `explain` add theirs: a DICOM SEG per positive DICOM input, a DICOM SR (TID
    1500) per DICOM input); `workers` reader and writer threads are started unless a started
    `pool` is given (a `Workers` of processes, as `ptxseg predict` passes); `decode` is auto,
    cpu or device (`device_batch.use_device_decoder`); `skip_existing` False predicts finished
    images again; the shard names the tables; a file whose header claims more than
    `max_pixels` (default: the readers' limit) is an error row, refused before it is decoded;
    `per_task` files go to a worker per task (default: `files_per_task` when the device
    decodes, else 1)."""

    outputs: Sequence[str] = DEFAULT_OUTPUTS
    seg: bool = False
    sr: bool = False
    explain: bool = False
    workers: int = 2
    pool: Workers | None = None
    decode: str = "auto"
    skip_existing: bool = True
    shard_index: int = 0
    shard_count: int = 1
    progress: bool = True
    max_pixels: int | None = None
    per_task: int | None = None

    def chosen_outputs(self) -> tuple[str, ...]:
        extra = ["seg"] * self.seg + ["sr"] * self.sr + ["explain"] * self.explain
        return parse_outputs(list(self.outputs) + extra)


class _Collected:
    """The rows and submission entries of a run as they come, and when the first was done."""

    def __init__(self, result: RunResult, plan: InputPlan):
        self.result, self.rows, self.submission = result, plan.rows, plan.submission
        # when the earliest findings were written, by the writer's clock (CLOCK_MONOTONIC, one
        # for every process), not when this process collected them
        self.first_done = float("inf")

    def fail(self, path: Path, error: str) -> None:
        self.rows[path] = summary_row(image_id_for(path), str(path), error=error)
        self.result.errors += 1

    def written(self, path: Path, res: WriteResult) -> None:
        if res.os_error is not None:  # the output cannot be written: no point going on
            raise OSError(*res.os_error)
        if res.error is not None:
            self.fail(path, res.error)
            return
        self.rows[path] = summary_row(res.image_id, str(path), res.findings)
        self.submission[path] = (res.image_id, res.rle)
        self.result.predicted += 1
        done_at = res.done_at if res.done_at is not None else time.monotonic()
        self.first_done = min(self.first_done, done_at)


def predict_files(
    predictor,
    files: Sequence[Path],
    out_dir: str | Path,
    options: LoopOptions | None = None,
    **settings: Any,
) -> RunResult:
    """Predict `files` into `out_dir` (masks/, findings/, overlays/, seg/, sr/, explain/, CSVs).

    `options` (or `settings`, its fields as keywords) say what to write and how (`LoopOptions`).
    """
    start = time.perf_counter()
    from ptxseg.data.dicom import DEFAULT_MAX_PIXELS

    options = options or LoopOptions(**settings)
    chosen = options.chosen_outputs()
    out = Path(out_dir)
    for name in chosen:
        (out / FOLDERS[name]).mkdir(parents=True, exist_ok=True)
    on_device = use_device_decoder(predictor, options.decode)
    result = RunResult(out, decoder="device" if on_device else "cpu")
    plan = plan_inputs(files, out, options.skip_existing)
    result.skipped, result.errors, result.replaced = plan.skipped, plan.errors, plan.replaced
    collected = _Collected(result, plan)
    start_monotonic = time.monotonic()
    pool = options.pool or Workers(options.workers, on_device, processes=False)
    max_pixels = options.max_pixels or DEFAULT_MAX_PIXELS
    run = _Run(predictor, out, chosen, on_device, pool, max_pixels)
    run.per_task = options.per_task or run.per_task
    reads = resume_batches(plan.order, plan.todo, predictor.batch_size)
    try:
        with _progress(options.progress, len(plan.todo)) as advance:
            companions = set(reads) - set(plan.todo)
            run.go(reads, companions, collected.fail, collected.written, advance)
    finally:
        if options.pool is None:
            pool.close()
    _write_tables(result, collected, files, options)
    result.seconds = time.perf_counter() - start
    if collected.first_done != float("inf"):
        since_first = time.monotonic() - collected.first_done
        age = process_age_s()
        first = age - since_first if age is not None else collected.first_done - start_monotonic
        result.first_result_s = round(first, 3)
        result.steady_seconds = since_first
    result.loop_s = {name: round(seconds, 3) for name, seconds in run.spent.items()}
    return result


def _write_tables(result: RunResult, collected: _Collected, files, options: LoopOptions) -> None:
    """summary.csv (every input, in order) and submission.csv (every mask) of the shard."""
    out, index, count = result.out_dir, options.shard_index, options.shard_count
    result.rows = [collected.rows[p] for p in files if p in collected.rows]
    write_summary(out / table_name("summary", index, count), result.rows)
    submission = collected.submission
    write_submission(
        out / table_name("submission", index, count),
        [submission[p] for p in files if p in submission],
    )


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
        self._fail, self._written, self._advance = fail, written, advance
        self._failed: set[Path] = set()
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
        pending: Batch | None = None
        for chunk in _batches(reads, batch_size):
            items = self._read_chunk(chunk)
            if not items:
                continue
            try:
                launched = self.timed("launch", self.launch, items, self._fail_once)
            except Exception as err:  # noqa: BLE001 - the batch's files get the error
                for path, _ in items:
                    self._fail_once(path, f"{type(err).__name__}: {err}")
                launched = None
            if launched is not None and not self.on_device:
                # the model ran on the CPU already: nothing to overlap, the writers start now
                self.finish(launched, writes)
                launched = None
            if pending is not None:  # the device works on this batch while we finish the last
                self.finish(pending, writes)
            pending = launched
            self._collect(writes, limit)
        if pending is not None:
            self.finish(pending, writes)
        self._collect(writes, 0)

    def _fail_once(self, path: Path, error: str) -> None:
        """A file that failed before its write (not a companion's failure): one row."""
        if path not in self._failed and path not in self.companions:
            self._failed.add(path)
            self._fail(path, error)
            self._advance()

    def _read_chunk(self, chunk) -> list[tuple[Path, ReadResult]]:
        """The readers' results of a batch's files, in order; failures become rows."""
        items = []
        for path, future, position in chunk:
            try:
                read = self.timed("reads", future.result)[position]
            except Exception as err:  # noqa: BLE001 - a dead worker: those files' rows
                read = ReadResult(str(path), error=f"{type(err).__name__}: {err}")
            if read.error is not None:
                self._fail_once(path, read.error)
            else:
                items.append((path, read))
        return items

    def _collect(self, writes: deque, keep: int) -> None:
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
                    self._fail(path, f"{type(result).__name__}: {result}")
                else:
                    self._written(path, result)
                self._advance()

    # ------------------------------------------------------------------ model

    def launch(self, items, fail) -> Batch | None:
        """Start the model on a batch: on the device asynchronously, on the CPU at once."""
        if self.on_device:
            explain = "explain" in self.outputs
            return launch_on_device(self.predictor, items, fail, self.max_pixels, explain)
        inputs = np.stack([read.model_input for _, read in items])
        batch = Batch(items, [tuple(read.shape) for _, read in items], inputs_host=inputs)
        batch.probs = self.predictor.probabilities(inputs)
        return batch

    # ------------------------------------------------------------------ writing

    def finish(self, batch: Batch, writes: deque) -> None:
        """Hand each image of a launched batch to a writer."""
        if batch.ready is not None:
            self.timed("device", batch.ready.synchronize)
        self.timed("hand_out", self._hand_out, batch, writes)

    def _hand_out(self, batch: Batch, writes: deque) -> None:
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
        from ptxseg.util.progress import progress_bar

        self._bar = progress_bar()
        self._bar.__enter__()
        task = self._bar.add_task("predict", total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc):
        if self.enabled:
            self._bar.__exit__(*exc)
        return False
