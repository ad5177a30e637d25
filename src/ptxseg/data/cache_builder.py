"""The uint8 array cache of `ptxseg prepare`: every image and mask decoded and resized once.

Each split becomes memory-mapped arrays (`ptxseg.data.dataset.cache_paths`) written in parallel
under temporary names and renamed only when every split is done; `info.json` records the inputs'
fingerprint, so a rerun with the same inputs finds the cache up to date and writes nothing.

Decoding runs in a pool of worker processes. With a decoding device (`--decode device`, or auto
when there is a CUDA GPU with nvJPEG; `ptxseg.data.device_images.choose_decoder`) the workers
only parse the files and hand the JPEG Baseline frames to the device, where they are decoded and
shrunk in batches (`decode_to_inputs`: the same bytes as the CPU for 1024 px images cached at 512
or 256; nvJPEG itself may differ from libjpeg-turbo by a gray level in a few pixels). The cache's
`info.json` records which decoder wrote it. The CPU pool is the default: on one H200 with 16
cores it cached 1024 px DICOMs at 512 px at 219 images/s against 103 for nvJPEG
(`benchmarks/results/gpu-prepare.md`).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.progress import Progress

from ptxseg.data.dataset import SPLITS, array_cache_dir, cache_paths
from ptxseg.data.dicom import DicomHeaderWarning, ImageReadError, read_dicom, read_dicom_frame
from ptxseg.data.discovery import Record
from ptxseg.data.preprocess import mask_to_model_size, to_model_input
from ptxseg.data.rle import rles_to_mask
from ptxseg.util import atomic
from ptxseg.util.processes import die_with_parent
from ptxseg.util.system import process_context


@dataclass
class CacheSpec:
    """How the cache is made: its side, the RLE encoding, the worker processes, the decoder."""

    size: int
    encoding: str
    workers: int = 1
    decoder: str | None = None  # the torch device that decodes frames; None: the workers do


@dataclass
class Loaded:
    """One image for the cache: its model input, or its JPEG frame for the device to decode."""

    path: str
    image: np.ndarray | None  # uint8 (size, size)
    frame: bytes | None
    invert: bool
    mask: np.ndarray  # uint8 0/1 (size, size)
    shape: tuple[int, int]  # the original (height, width)
    area: int  # mask pixels at the original size


def load_for_cache(args: tuple[str, list[str], int, int, int, str, bool]) -> Loaded | str:
    """Decode one DICOM and its mask at size x size, or the reason it cannot be (in a worker).

    With `keep_frame`, a JPEG Baseline file at least `size` pixels on each side comes back as its
    compressed frame for the device's decoder instead.
    """
    path, rles, height, width, size, encoding, keep_frame = args
    try:
        with warnings.catch_warnings():  # one thread per worker process
            warnings.simplefilter("ignore", DicomHeaderWarning)
            warnings.simplefilter("ignore", UserWarning)
            image, frame, meta = read_dicom_frame(path)
            if frame is not None and not (keep_frame and min(height, width) >= size):
                image, frame = _decode_here(path, frame, meta), None
        shape = (int(meta["Rows"]), int(meta["Columns"])) if frame is not None else image.shape
        if shape != (height, width):
            raise ImageReadError(
                f"{path}: the pixel data is {shape[0]}x{shape[1]} but the header "
                f"said {height}x{width}"
            )
        mask = rles_to_mask(rles, height, width, encoding)
    except ValueError as err:  # ImageReadError included: the file is skipped with its reason
        return _reason_of(err, path)
    small = None if image is None else to_model_input(image, size)
    invert = bool(meta.get("Invert", False))
    return Loaded(
        path, small, frame, invert, mask_to_model_size(mask, size), (height, width), int(mask.sum())
    )


def _reason_of(err: BaseException, path: str) -> str:
    return str(err).removeprefix(f"{path}: ").removeprefix(f"{path} ")


def _decode_here(path: str, frame: bytes, meta: dict) -> np.ndarray:
    """The float image of a frame decoded on the CPU, exactly as `read_dicom` would read it."""
    import cv2

    from ptxseg.data.dicom import pixels_of_frame

    decoded = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_GRAYSCALE)
    if decoded is None or decoded.shape != (meta["Rows"], meta["Columns"]):
        return read_dicom(path)[0]  # the reader's own fallback (pydicom's decoders)
    return pixels_of_frame(decoded, bool(meta.get("Invert")))


def fingerprint(records: Sequence[Record], encoding: str, size: int) -> str:
    digest = hashlib.sha256(f"{encoding}|{size}".encode())
    for r in records:
        stat = r.path.stat()
        digest.update(f"{r.image_id}|{r.split}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
        digest.update("|".join(r.rles).encode())
    return digest.hexdigest()


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def remove_stale_temporaries(work: Path, size: int) -> None:
    """Temporary files of an interrupted run (kill -9 leaves them); a rerun rewrites them."""
    for folder in (work, array_cache_dir(work, size)):
        if folder.is_dir():
            for path in folder.glob(".*.tmp"):
                path.unlink(missing_ok=True)


def _on_cuda(decoder: str | None) -> bool:
    return decoder is not None and decoder.startswith("cuda")


@dataclass
class _Build:
    """One build of the cache: where it goes, how it is made, who decodes."""

    work: Path
    spec: CacheSpec
    pool: ProcessPoolExecutor | None
    progress: Progress | None


@dataclass
class _SplitArrays:
    """A split decoded into temporary arrays: the renames that publish it, and what was read."""

    renames: list[tuple[Path, Path]]
    areas: dict[str, int] = field(default_factory=dict)  # mask pixels at the original size
    failed: dict[str, str] = field(default_factory=dict)  # ImageId -> why it cannot be read


def build_cache(
    work: Path, records: Sequence[Record], spec: CacheSpec, progress: Progress | None = None
) -> tuple[bool, dict[str, str]]:
    """Write the uint8 arrays of every split (with `spec.decoder`: frames decoded there).

    Returns (written, failed): written is False when the arrays were already up to date; failed
    maps the ImageIds that could not be decoded to the reason; they are left out of the arrays.
    Every array is decoded under a temporary name first and renamed only when all splits are
    done, and when no image at all could be read nothing is renamed (ValueError).
    """
    folder = array_cache_dir(work, spec.size)
    areas_path = folder / "mask-areas.json"
    if _up_to_date(folder / "info.json", records, spec):
        areas = json.loads(areas_path.read_text())
        for r in records:
            r.mask_area = areas[r.image_id]
        return False, {}
    folder.mkdir(parents=True, exist_ok=True)
    areas, failed = _write_splits(_Build(work, spec, None, progress), records)
    kept = [r for r in records if r.image_id not in failed]
    for r in kept:
        r.mask_area = areas[r.image_id]
    atomic.write_if_changed(areas_path, json.dumps(areas))
    info = {
        "fingerprint": fingerprint(kept, spec.encoding, spec.size),
        "size": spec.size,
        "encoding": spec.encoding,
        "decoder": "nvjpeg" if _on_cuda(spec.decoder) else "opencv",
    }
    atomic.write_if_changed(folder / "info.json", json.dumps(info))
    return True, failed


def _up_to_date(info_path: Path, records: Sequence[Record], spec: CacheSpec) -> bool:
    if not info_path.is_file():
        return False
    saved = json.loads(info_path.read_text()).get("fingerprint")
    return saved == fingerprint(records, spec.encoding, spec.size)


def _write_splits(build: _Build, records: Sequence[Record]) -> tuple[dict, dict]:
    """Decode every split, then rename its arrays into place; (areas, failed) of the images."""
    # Workers that must not inherit this process's CUDA state start from a fork server (the
    # caller's script then needs a __main__ guard); on the CPU the platform's default does.
    context = (
        process_context(("ptxseg.data.cache_builder",)) if _on_cuda(build.spec.decoder) else None
    )
    if build.spec.workers > 1:
        build.pool = ProcessPoolExecutor(
            build.spec.workers,
            mp_context=context,
            initializer=die_with_parent,
            initargs=(os.getpid(),),
        )
    areas: dict[str, int] = {}
    failed: dict[str, str] = {}
    try:
        renames = []
        for split in SPLITS:
            arrays = _write_split(build, split, [r for r in records if r.split == split])
            renames += arrays.renames
            areas.update(arrays.areas)
            failed.update(arrays.failed)
        if len(failed) == len(records):
            raise ValueError(
                f"none of the {len(records)} images could be read, e.g. "
                f"{'; '.join(list(failed.values())[:3])}"
            )
        for tmp, final in renames:
            atomic.replace(tmp, final)  # fsynced: the info.json written after trusts them
    finally:
        if build.pool is not None:
            build.pool.shutdown(cancel_futures=True)
        for split in SPLITS:
            for path in _temporaries(build, split):
                path.unlink(missing_ok=True)
    return areas, failed


def _temporary_names(build: _Build, split: str) -> tuple[dict[str, Path], dict[str, Path]]:
    """The temporary arrays of a split, and the second names of the compacted ones."""
    tmp = {k: _temporary(p) for k, p in cache_paths(build.work, build.spec.size, split).items()}
    return tmp, {k: _temporary(tmp[k]) for k in ("images", "masks")}


def _temporaries(build: _Build, split: str) -> list[Path]:
    tmp, compact = _temporary_names(build, split)
    return [*tmp.values(), *compact.values()]


def _write_split(build: _Build, split: str, rows: Sequence[Record]) -> _SplitArrays:
    """Decode `rows` into temporary arrays of the split; unreadable files are left out.

    The caller removes the temporary names (`_temporaries`) whatever happens."""
    size = build.spec.size
    paths = cache_paths(build.work, size, split)
    tmp, compact = _temporary_names(build, split)
    arrays = _SplitArrays([(tmp[k], paths[k]) for k in ("images", "masks", "ids")])
    kept = _decode_into(build, split, rows, tmp, arrays)
    if len(kept) < len(rows):  # rare: copy the rows that were read into arrays of their size
        for key in ("images", "masks"):
            full = np.load(tmp[key], mmap_mode="r")
            shape = (len(kept), size, size)
            out = np.lib.format.open_memmap(compact[key], "w+", np.uint8, shape)
            out[:] = full[: len(kept)]
            out.flush()
            del full, out
            os.replace(compact[key], tmp[key])
    tmp["ids"].write_text(json.dumps([r.image_id for r in kept]))
    return arrays


def _decode_into(
    build: _Build, split: str, rows: Sequence[Record], tmp: dict[str, Path], arrays: _SplitArrays
) -> list[Record]:
    """Fill the split's temporary arrays in the order of `rows`; the records that were read.

    The mask areas and the reasons of the files that cannot be read go into `arrays`."""
    n, size, progress = len(rows), build.spec.size, build.progress
    images = np.lib.format.open_memmap(tmp["images"], "w+", np.uint8, (n, size, size))
    masks = np.lib.format.open_memmap(tmp["masks"], "w+", np.uint8, (n, size, size))
    keep_frame = build.spec.decoder is not None
    jobs = [
        (str(r.path), r.rles, r.height, r.width, size, build.spec.encoding, keep_frame)
        for r in rows
    ]
    task = progress.add_task(f"caching {split} at {size}px", total=n) if progress else None
    kept: list[Record] = []
    rows_in_order = iter(rows)
    for loaded in _chunks_loaded(jobs, build.pool):
        if keep_frame:
            decode_loaded(loaded, size, build.spec.decoder)
        for result in loaded:
            record = next(rows_in_order)
            if isinstance(result, str):
                arrays.failed[record.image_id] = result
            else:
                index = len(kept)
                images[index], masks[index] = result.image, result.mask
                arrays.areas[record.image_id] = result.area
                kept.append(record)
            if progress is not None:
                progress.advance(task)
    images.flush()
    masks.flush()
    return kept


CHUNK = 64
"""Images submitted to the workers at a time; two chunks are in flight, so the workers go on
with the next while this process writes (or decodes on the GPU) the last, and memory stays
bounded."""


def _chunks_loaded(jobs: list[tuple], pool: ProcessPoolExecutor | None) -> Iterator[list]:
    """`load_for_cache` of every job, a list per chunk of `CHUNK` jobs, in order."""
    if pool is None:
        for i in range(0, len(jobs), CHUNK):
            yield [load_for_cache(job) for job in jobs[i : i + CHUNK]]
        return
    in_flight: deque[list[Future]] = deque()
    for i in range(0, len(jobs), CHUNK):
        in_flight.append([pool.submit(load_for_cache, job) for job in jobs[i : i + CHUNK]])
        if len(in_flight) == 2:
            yield [future.result() for future in in_flight.popleft()]
    while in_flight:
        yield [future.result() for future in in_flight.popleft()]


def decode_loaded(loaded: list[Loaded | str], size: int, device: str) -> None:
    """Fill in the images of the loaded items that carry frames, decoded and shrunk on `device`.

    A frame the device refuses is read by the CPU reader; one that cannot be read at all becomes
    its reason (a str) in `loaded`, as in the workers."""
    from ptxseg.data.device_images import decode_to_inputs

    framed = [(i, one) for i, one in enumerate(loaded) if isinstance(one, Loaded) and one.frame]
    if not framed:
        return
    got = decode_to_inputs(
        [one.frame for _, one in framed],
        [one.shape for _, one in framed],
        [one.invert for _, one in framed],
        size,
        device,
    )
    for k in got.refused:  # the CPU reader decodes it (or says why it cannot)
        i, one = framed[k]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DicomHeaderWarning)
                one.image, one.frame = to_model_input(read_dicom(one.path)[0], size), None
        except ValueError as err:
            loaded[i] = _reason_of(err, one.path)
    if got.inputs is not None:
        small = got.inputs.cpu().numpy()
        for row, k in enumerate(got.decoded):
            one = framed[k][1]
            one.image, one.frame = small[row], None
