"""`ptxseg prepare`: DICOMs + annotation CSV -> manifest, saved split and uint8 array cache.

Steps: find the DICOMs, read their headers, join them with the annotations, make (or reuse) the
seeded split (and, with `--folds K`, the cross-validation folds of `ptxseg.data.folds`), then
decode and resize every image and mask once, in parallel, into memory-mapped arrays. Every output
is written under a temporary name and renamed, and a rerun with the same inputs finds the cache
up to date and writes nothing.

Decoding runs in a pool of worker processes. With a CUDA device (`device="cuda"`, or "auto" when
there is one) the workers only parse the files and hand the JPEG Baseline frames to nvJPEG, and
the resize runs on the GPU (`ptxseg.data.device_images`: the same bytes as the CPU for 1024 px
images cached at 512 or 256; nvJPEG itself may differ from libjpeg-turbo by a gray level in a
few pixels). The cache's `info.json` records which decoder wrote it. The CPU pool is the
default: on one H200 with 16 cores it cached 1024 px DICOMs at 512 px at 219 images/s against
103 for nvJPEG (`benchmarks/results/gpu-prepare.md`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from rich.progress import Progress

from ptxseg.data.dataset import ANNOTATIONS, MANIFEST, SPLITS, SPLITS_FILE, cache_dir, cache_paths
from ptxseg.data.dicom import (
    DEFAULT_MAX_PIXELS,
    DicomHeaderWarning,
    ImageReadError,
    check_pixel_count,
    read_dicom,
    read_dicom_frame,
    read_header,
)
from ptxseg.data.folds import load_or_make_folds
from ptxseg.data.preprocess import mask_to_model_size, to_model_input
from ptxseg.data.rle import (
    EMPTY,
    Annotations,
    check_rle,
    detect_encoding,
    read_annotations,
    rles_to_mask,
)
from ptxseg.util import atomic, path_guard
from ptxseg.util.processes import die_with_parent
from ptxseg.util.system import process_context

MANIFEST_COLUMNS = (
    "image_id",
    "path",
    "split",
    "has_pneumothorax",
    "n_regions",
    "mask_area",
    "height",
    "width",
    "pixel_spacing",
    "view_position",
    "patient_sex",
    "patient_age",
    "patient_id",
    "rle_encoding",
    "fold",
)


@dataclass
class Record:
    """One image that has both a DICOM file and annotations."""

    image_id: str
    path: Path
    rles: list[str]
    height: int
    width: int
    pixel_spacing: float | None
    view_position: str
    patient_sex: str
    patient_age: str
    patient_id: str
    split: str = ""
    mask_area: int = -1
    fold: int | None = None  # with `prepare --folds K`: the fold of a train or val image


# ---------------------------------------------------------------- atomic writes


# ---------------------------------------------------------------- finding and joining


def find_dicoms(images: Path, skip: Sequence[Path] = ()) -> list[Path]:
    """The DICOM files under `images`; the folders in `skip` (the work folder, when it lies
    inside) and folders of results are not searched (`ptxseg.util.path_guard.walk`)."""
    if not images.is_dir():
        raise FileNotFoundError(f"images folder not found: {images}")
    return path_guard.walk(images, (".dcm", ".dicom"), skip)


def _header(path: Path) -> tuple[pydicom.Dataset | None, str]:
    """The header without the pixel data, or None and the reason it cannot be read."""
    with warnings.catch_warnings():  # main thread only; the reasons go to unmatched.json
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, stop_before_pixels=True), ""
        except Exception as err:  # the parser raises many types on damaged files
            if path.is_file() and path.stat().st_size == 0:
                return None, "empty file (0 bytes)"
            return None, f"not a readable DICOM file ({type(err).__name__})"


def _skip(problems: dict[str, list], path: Path | str, reason: str) -> None:
    problems.setdefault("skipped", []).append({"file": str(path), "reason": reason})


def join_images(
    files: Sequence[Path],
    annotations: dict[str, list[str]],
    progress: Progress | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[list[Record], dict[str, list]]:
    """Match files to annotations (ImageId = file stem, else the header's UIDs).

    A file whose header cannot be read, or claims more than `max_pixels`, or whose ImageId is
    listed both as -1 and with a region, is listed in `problems["skipped"]` with its reason (the
    CSV's conflicting rows, with their lines, in `problems["conflicting_annotations"]`); invalid
    header values of the files that are used (a PixelSpacing that is not a number, an invalid
    UID) in `problems["header_warnings"]`.
    """
    records: list[Record] = []
    problems: dict[str, list] = {"images_without_annotations": [], "skipped": []}
    conflicts = getattr(annotations, "conflicts", {})
    if conflicts:
        problems["conflicting_annotations"] = annotations.conflict_rows()
    matched: set[str] = set()
    task = progress.add_task("reading headers", total=len(files)) if progress else None
    for path in files:
        ds, reason = _header(path)
        if progress is not None:
            progress.advance(task)
        try:
            meta = read_header(ds, str(path)) if ds is not None else None
            if meta is not None:
                check_pixel_count(
                    str(path), meta["Rows"], meta["Columns"], max_pixels, "the header"
                )
        except ImageReadError as err:
            meta, reason = None, str(err).removeprefix(f"{path}: ")
        if meta is None:
            _skip(problems, path, reason)
            continue
        image_id = path.stem
        if image_id not in annotations and image_id not in conflicts:
            uids = (
                meta["SOPInstanceUID"] or "",
                str(ds.file_meta.get("MediaStorageSOPInstanceUID", "")),
            )
            image_id = next((u for u in uids if u in annotations or u in conflicts), image_id)
        if image_id in conflicts:  # its label contradicts itself: neither positive nor negative
            _skip(problems, path, annotations.conflict_reason(image_id))
            continue
        if image_id not in annotations:
            problems["images_without_annotations"].append(str(path))
            continue
        if image_id in matched:
            problems.setdefault("duplicate_images", []).append(str(path))
            continue
        matched.add(image_id)
        spacing = meta["PixelSpacing"]
        records.append(
            Record(
                image_id=image_id,
                path=path,
                rles=annotations[image_id],
                height=meta["Rows"],
                width=meta["Columns"],
                pixel_spacing=spacing[0] if spacing else None,
                view_position=meta["ViewPosition"] or "",
                patient_sex=meta["PatientSex"] or "",
                patient_age="" if meta["PatientAge"] is None else str(meta["PatientAge"]),
                patient_id=meta["PatientID"] or "",
            )
        )
        if meta["HeaderWarnings"]:  # read anyway: SIIM's stage-2 files all have a few
            problems.setdefault("header_warnings", {})[str(path)] = meta["HeaderWarnings"]
    problems["annotations_without_images"] = sorted(set(annotations) - matched)
    return records, problems


def check_masks(
    records: Sequence[Record], annotations: Annotations, encoding: str, problems: dict
) -> list[Record]:
    """The records whose RLE strings fit their image; the others are skipped, naming the CSV
    line and ImageId, before any image is decoded."""
    kept = []
    for r in records:
        reason = ""
        for index, rle in enumerate(r.rles):
            try:
                check_rle(rle, r.height, r.width, encoding)
            except ValueError as err:
                reason = f"{annotations.where(r.image_id, index)}: {err}"
                break
        if reason:
            _skip(problems, r.path, reason)
        else:
            kept.append(r)
    return kept


# ---------------------------------------------------------------- the split


def make_split(records: Sequence[Record], seed: int, val: float, test: float) -> dict[str, list]:
    """Stratified by positive/negative, grouped by PatientID where one is present, seeded."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"--val {val} and --test {test} must be fractions that sum below 1")
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(r.patient_id or f"image:{r.image_id}", []).append(r)
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for positive in (True, False):
        keys = sorted(k for k, g in groups.items() if any(r.rles for r in g) == positive)
        keys = [keys[i] for i in rng.permutation(len(keys))]
        n_images = sum(len(groups[k]) for k in keys)
        quota = {"test": round(n_images * test), "val": round(n_images * val)}
        counts = {"test": 0, "val": 0}
        for key in keys:
            split = next((s for s in ("test", "val") if counts[s] < quota[s]), "train")
            if split != "train":
                counts[split] += len(groups[key])
            out[split].extend(r.image_id for r in groups[key])
    return {s: sorted(ids) for s, ids in out.items()}


def plan_split(work: Path, records: Sequence[Record], seed: int, val: float, test: float) -> dict:
    """The saved split when it matches this run, else a new one; nothing is written here.

    A saved split lists under "skipped" the images a previous run could not read; they stay out
    of it, so a rerun gives the same split. Delete splits.json to split again from scratch.
    """
    path = work / SPLITS_FILE
    ids = {r.image_id for r in records}
    if path.is_file():
        saved = json.loads(path.read_text())
        saved_ids = {i for s in SPLITS for i in saved[s]}
        skipped = set(saved.get("skipped", {}))
        same_args = (saved["seed"], saved["val_fraction"], saved["test_fraction"]) == (
            seed,
            val,
            test,
        )
        if saved_ids <= ids and ids - saved_ids <= skipped and same_args:
            return saved
        raise ValueError(
            f"{path} holds a split of {len(saved_ids)} images (seed {saved['seed']}, val "
            f"{saved['val_fraction']}, test {saved['test_fraction']}) that differs from this run's "
            f"{len(ids)} images (seed {seed}, val {val}, test {test}): use a new --out folder, or "
            f"delete {path} to split again (results on the old split are then not comparable)"
        )
    split = {"seed": seed, "val_fraction": val, "test_fraction": test}
    split.update(make_split(records, seed, val, test))
    return split


def drop_from_split(split: dict, failed: dict[str, str]) -> dict:
    """The split without the images that could not be read; they are listed under "skipped"."""
    if not failed:
        return split
    out = dict(split)
    for s in SPLITS:
        out[s] = [i for i in split[s] if i not in failed]
    out["skipped"] = dict(sorted({**split.get("skipped", {}), **failed}.items()))
    return out


# ---------------------------------------------------------------- the cache


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
    for folder in (work, cache_dir(work, size)):
        if folder.is_dir():
            for path in folder.glob(".*.tmp"):
                path.unlink(missing_ok=True)


def build_cache(
    work: Path,
    records: Sequence[Record],
    size: int,
    encoding: str,
    workers: int,
    progress: Progress | None = None,
    device: str = "cpu",
) -> tuple[bool, dict[str, str]]:
    """Write the uint8 arrays of every split (`device` "cuda": nvJPEG and the GPU resize).

    Returns (written, failed): written is False when the arrays were already up to date; failed
    maps the ImageIds that could not be decoded to the reason; they are left out of the arrays.
    Every array is decoded under a temporary name first and renamed only when all splits are
    done, and when no image at all could be read nothing is renamed (ValueError).
    """
    folder = cache_dir(work, size)
    info_path = folder / "info.json"
    areas_path = folder / "mask-areas.json"
    if info_path.is_file() and json.loads(info_path.read_text()).get("fingerprint") == fingerprint(
        records, encoding, size
    ):
        areas = json.loads(areas_path.read_text())
        for r in records:
            r.mask_area = areas[r.image_id]
        return False, {}
    folder.mkdir(parents=True, exist_ok=True)
    areas: dict[str, int] = {}
    failed: dict[str, str] = {}
    temporaries: list[Path] = []
    # Workers that must not inherit this process's CUDA state start from a fork server (the
    # caller's script then needs a __main__ guard); on the CPU the platform's default does.
    context = process_context(("ptxseg.data.prepare",)) if device != "cpu" else None
    pool = (
        ProcessPoolExecutor(
            workers, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
        )
        if workers > 1
        else None
    )
    try:
        renames = []
        for split in SPLITS:
            rows = [r for r in records if r.split == split]
            renames += _write_split(
                work,
                size,
                split,
                rows,
                encoding,
                pool,
                progress,
                areas,
                failed,
                temporaries,
                device,
            )
        if len(failed) == len(records):
            raise ValueError(
                f"none of the {len(records)} images could be read, e.g. "
                f"{'; '.join(list(failed.values())[:3])}"
            )
        for tmp, final in renames:
            atomic.replace(tmp, final)  # fsynced: the info.json written after trusts them
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        for path in temporaries:
            path.unlink(missing_ok=True)
    kept = [r for r in records if r.image_id not in failed]
    for r in kept:
        r.mask_area = areas[r.image_id]
    atomic.write_if_changed(areas_path, json.dumps(areas))
    info = {
        "fingerprint": fingerprint(kept, encoding, size),
        "size": size,
        "encoding": encoding,
        "decoder": "nvjpeg" if device != "cpu" else "opencv",
    }
    atomic.write_if_changed(info_path, json.dumps(info))
    return True, failed


def _write_split(
    work, size, split, rows, encoding, pool, progress, areas, failed, temporaries, device="cpu"
) -> list[tuple[Path, Path]]:
    """Decode `rows` into temporary arrays of the split; returns (temporary, final) names.

    Unreadable files are left out and listed in `failed`; every temporary file is added to
    `temporaries`, which the caller removes whatever happens."""
    paths = cache_paths(work, size, split)
    tmp = {k: _temporary(p) for k, p in paths.items()}
    compact = {k: _temporary(tmp[k]) for k in ("images", "masks")}
    temporaries += [*tmp.values(), *compact.values()]
    kept = _decode_into(tmp, rows, size, encoding, pool, progress, areas, failed, split, device)
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
    return [(tmp[k], paths[k]) for k in ("images", "masks", "ids")]


def _decode_into(
    tmp, rows, size, encoding, pool, progress, areas, failed, split, device
) -> list[Record]:
    n = len(rows)
    images = np.lib.format.open_memmap(tmp["images"], "w+", np.uint8, (n, size, size))
    masks = np.lib.format.open_memmap(tmp["masks"], "w+", np.uint8, (n, size, size))
    keep_frame = device != "cpu"
    jobs = [(str(r.path), r.rles, r.height, r.width, size, encoding, keep_frame) for r in rows]
    task = progress.add_task(f"caching {split} at {size}px", total=n) if progress else None
    kept: list[Record] = []
    rows_in_order = iter(rows)
    for loaded in _chunks_loaded(jobs, pool):
        if keep_frame:
            decode_loaded(loaded, size, device)
        for result in loaded:
            record = next(rows_in_order)
            if isinstance(result, str):
                failed[record.image_id] = result
            else:
                index = len(kept)
                images[index], masks[index] = result.image, result.mask
                areas[record.image_id] = result.area
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


def resolve_decode_device(device: str) -> str:
    """'cpu' or a CUDA device for decoding; `auto` takes CUDA when nvJPEG can run there."""
    from ptxseg.data.device_images import jpeg_device_available

    if device == "auto":
        return "cuda" if jpeg_device_available("cuda") else "cpu"
    if device == "cpu":
        return device
    if not jpeg_device_available(device):
        raise ValueError(
            f"--device {device}: decoding on the GPU needs a CUDA device (none is available); "
            "use --device cpu or auto"
        )
    return device


def decode_loaded(loaded: list[Loaded | str], size: int, device: str) -> None:
    """Fill in the images of the loaded items that carry frames: nvJPEG, then the GPU resize.

    A frame nvJPEG refuses is read by the CPU reader; one that cannot be read at all becomes its
    reason (a str) in `loaded`, as in the workers."""
    from ptxseg.data.device_images import decode_frames, to_model_inputs

    framed = [(i, one) for i, one in enumerate(loaded) if isinstance(one, Loaded) and one.frame]
    if not framed:
        return
    decoded = decode_frames([one.frame for _, one in framed], device)
    good = []
    for (i, one), image in zip(framed, decoded, strict=True):
        if isinstance(image, Exception) or tuple(image.shape) != one.shape:
            try:  # nvJPEG refused it: the CPU reader decodes it (or says why it cannot)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DicomHeaderWarning)
                    one.image, one.frame = to_model_input(read_dicom(one.path)[0], size), None
            except ValueError as err:
                loaded[i] = _reason_of(err, one.path)
        else:
            good.append((one, image))
    if good:
        inverts = [one.invert for one, _ in good]
        small = to_model_inputs([image for _, image in good], size, inverts).cpu().numpy()
        for (one, _), image in zip(good, small, strict=True):
            one.image, one.frame = image, None


# ---------------------------------------------------------------- manifest


def manifest_text(records: Sequence[Record], encoding: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for r in sorted(records, key=lambda r: r.image_id):
        writer.writerow(
            [
                r.image_id,
                str(r.path),
                r.split,
                int(bool(r.rles)),
                len(r.rles),
                r.mask_area,
                r.height,
                r.width,
                "" if r.pixel_spacing is None else r.pixel_spacing,
                r.view_position,
                r.patient_sex,
                r.patient_age,
                r.patient_id,
                encoding,
                "" if r.fold is None else r.fold,
            ]
        )
    return out.getvalue()


def annotations_text(records: Sequence[Record]) -> str:
    """The original RLE rows of the prepared images (stage-2 format), for full-size scoring."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("ImageId", "EncodedPixels"))
    for r in sorted(records, key=lambda r: r.image_id):
        for rle in r.rles or [EMPTY]:
            writer.writerow((r.image_id, rle))
    return out.getvalue()


@dataclass
class PrepareResult:
    work: Path
    counts: dict[str, dict[str, int]]
    encoding: str
    problems: dict[str, list]
    cache_written: bool
    folds: list[dict[str, int]] = field(default_factory=list)  # images and positives per fold


def prepare(
    images: str | Path,
    annotations: str | Path,
    out: str | Path,
    size: int = 256,
    seed: int = 0,
    val: float = 0.1,
    test: float = 0.1,
    workers: int = 1,
    rle_encoding: str = "auto",
    progress: Progress | None = None,
    device: str = "cpu",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    folds: int = 0,
) -> PrepareResult:
    """Run every step of `ptxseg prepare`; see the module docstring.

    `device`: cpu, cuda, or auto (cuda when a GPU with nvJPEG is there). `folds` > 1 adds that
    many cross-validation folds of the train and val images to the split (`ptxseg.data.folds`);
    0 keeps the folds that are saved, if any.
    """
    device = resolve_decode_device(device)
    if size <= 0 or size % 32:
        raise ValueError(f"--size {size}: expected a positive multiple of 32 (256, 512, 1024)")
    if max_pixels <= 0:
        raise ValueError(f"--max-megapixels must be positive, got {max_pixels / 1e6:g}")
    images, out = Path(images), Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(
            f"--out {out} is a file: expected a work folder (new, or written by an earlier "
            "prepare); choose another path"
        )
    table = read_annotations(annotations)
    if rle_encoding == "auto":
        rle_encoding = detect_encoding(r for rles in table.values() for r in rles)
    elif rle_encoding not in ("relative", "absolute"):
        raise ValueError(f"--rle-encoding {rle_encoding!r}: expected auto, relative or absolute")
    files = find_dicoms(images, skip=[out])
    if not files:
        raise FileNotFoundError(f"no .dcm files found under {images}")
    candidates, problems = join_images(files, table, progress, max_pixels)
    candidates = check_masks(candidates, table, rle_encoding, problems)
    if not candidates:
        raise ValueError(
            f"none of the {len(files)} DICOMs under {images} matches an ImageId of {annotations} "
            f"({len(table)} images) and can be read: check that they belong together (ImageId = "
            "file name stem or the header's SOPInstanceUID)"
            + "".join(f"; {p['file']}: {p['reason']}" for p in problems["skipped"][:3])
        )
    split = plan_split(out, candidates, seed, val, test)
    where = {i: s for s in SPLITS for i in split[s]}
    records = [r for r in candidates if r.image_id in where]
    for r in candidates:
        if r.image_id in where:
            r.split = where[r.image_id]
        else:  # skipped by an earlier run: its saved split says why
            _skip(problems, r.path, split["skipped"][r.image_id])
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out, size)
    written, failed = build_cache(
        out, records, size, rle_encoding, max(1, workers), progress, device
    )
    for r in records:
        if r.image_id in failed:
            _skip(problems, r.path, failed[r.image_id])
    records = [r for r in records if r.image_id not in failed]
    split = drop_from_split(split, failed)
    groups = {r.image_id: r.patient_id or f"image:{r.image_id}" for r in records}
    positive = {r.image_id: bool(r.rles) for r in records}
    split = load_or_make_folds(out, split, groups, positive, folds)
    fold_of = {i: k for k, ids in enumerate(split.get("folds") or []) for i in ids}
    for r in records:
        r.fold = fold_of.get(r.image_id)
    problems["skipped"].sort(key=lambda p: p["file"])
    atomic.write_if_changed(out / SPLITS_FILE, json.dumps(split, indent=1) + "\n")
    atomic.write_if_changed(out / MANIFEST, manifest_text(records, rle_encoding))
    atomic.write_if_changed(out / ANNOTATIONS, annotations_text(records))
    atomic.write_if_changed(out / "unmatched.json", json.dumps(problems, indent=1) + "\n")
    counts = {
        s: {
            "images": sum(r.split == s for r in records),
            "positive": sum(r.split == s and bool(r.rles) for r in records),
        }
        for s in SPLITS
    }
    fold_counts = [
        {"images": len(ids), "positive": sum(positive[i] for i in ids)}
        for ids in split.get("folds") or []
    ]
    return PrepareResult(out, counts, rle_encoding, problems, written, fold_counts)
