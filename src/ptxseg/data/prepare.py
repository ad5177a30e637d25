"""`ptxseg prepare`: DICOMs + annotation CSV -> manifest, saved split and uint8 array cache.

Steps: find the DICOMs, read their headers, join them with the annotations, make (or reuse) the
seeded split (and, with `--folds K`, the cross-validation folds of `ptxseg.data.folds`), then
decode and resize every image and mask once, in parallel, into memory-mapped arrays. Every output
is written under a temporary name and renamed, and a rerun with the same inputs finds the cache
up to date and writes nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from rich.progress import Progress

from ptxseg import atomic
from ptxseg.data.dataset import ANNOTATIONS, MANIFEST, SPLITS, SPLITS_FILE, cache_dir, cache_paths
from ptxseg.data.dicom import DicomHeaderWarning, ImageReadError, parse_age, read_dicom
from ptxseg.data.folds import load_or_make_folds
from ptxseg.data.preprocess import mask_to_model_size, to_model_input
from ptxseg.data.rle import EMPTY, detect_encoding, read_annotations, rles_to_mask

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


def find_dicoms(images: Path) -> list[Path]:
    if not images.is_dir():
        raise FileNotFoundError(f"images folder not found: {images}")
    return sorted(p for p in images.rglob("*") if p.suffix.lower() in (".dcm", ".dicom"))


def _header(path: Path) -> pydicom.Dataset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            return None


def join_images(
    files: Sequence[Path], annotations: dict[str, list[str]], progress: Progress | None = None
) -> tuple[list[Record], dict[str, list]]:
    """Match files to annotations (ImageId = file stem, else the header's UIDs)."""
    records: list[Record] = []
    problems: dict[str, list] = {"images_without_annotations": [], "unreadable": []}
    matched: set[str] = set()
    task = progress.add_task("reading headers", total=len(files)) if progress else None
    for path in files:
        ds = _header(path)
        if progress is not None:
            progress.advance(task)
        if ds is None or "Rows" not in ds:
            problems["unreadable"].append(str(path))
            continue
        image_id = path.stem
        if image_id not in annotations:
            uids = (
                str(ds.get("SOPInstanceUID", "")),
                str(ds.file_meta.get("MediaStorageSOPInstanceUID", "")),
            )
            image_id = next((u for u in uids if u in annotations), image_id)
        if image_id not in annotations:
            problems["images_without_annotations"].append(str(path))
            continue
        if image_id in matched:
            problems.setdefault("duplicate_images", []).append(str(path))
            continue
        matched.add(image_id)
        spacing = ds.get("PixelSpacing")
        records.append(
            Record(
                image_id=image_id,
                path=path,
                rles=annotations[image_id],
                height=int(ds.Rows),
                width=int(ds.Columns),
                pixel_spacing=float(spacing[0]) if spacing else None,
                view_position=str(ds.get("ViewPosition", "") or ""),
                patient_sex=str(ds.get("PatientSex", "") or ""),
                patient_age=_age(ds),
                patient_id=str(ds.get("PatientID", "") or ""),
            )
        )
    problems["annotations_without_images"] = sorted(set(annotations) - matched)
    return records, problems


def _age(ds: pydicom.Dataset) -> str:
    age = parse_age(str(ds.get("PatientAge", "") or ""))
    return "" if age is None else str(age)


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


def load_or_make_split(
    work: Path, records: Sequence[Record], seed: int, val: float, test: float
) -> dict:
    path = work / SPLITS_FILE
    ids = {r.image_id for r in records}
    if path.is_file():
        saved = json.loads(path.read_text())
        saved_ids = {i for s in SPLITS for i in saved[s]}
        same_args = (saved["seed"], saved["val_fraction"], saved["test_fraction"]) == (
            seed,
            val,
            test,
        )
        if saved_ids == ids and same_args:
            return saved
        raise ValueError(
            f"{path} holds a split of {len(saved_ids)} images (seed {saved['seed']}, val "
            f"{saved['val_fraction']}, test {saved['test_fraction']}) that differs from this run's "
            f"{len(ids)} images (seed {seed}, val {val}, test {test}): use a new --out folder, or "
            f"delete {path} to split again (results on the old split are then not comparable)"
        )
    split = {"seed": seed, "val_fraction": val, "test_fraction": test}
    split.update(make_split(records, seed, val, test))
    atomic.write_if_changed(path, json.dumps(split, indent=1) + "\n")
    return split


# ---------------------------------------------------------------- the cache


def _load_one(
    args: tuple[str, list[str], int, int, int, str],
) -> tuple[np.ndarray, np.ndarray, int]:
    """Decode one DICOM and its mask, resized to size x size (runs in a worker process)."""
    path, rles, height, width, size, encoding = args
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DicomHeaderWarning)
        warnings.simplefilter("ignore", UserWarning)
        image, _ = read_dicom(path)
    if image.shape != (height, width):
        raise ImageReadError(f"{path}: pixel data is {image.shape}, header says {height}x{width}")
    mask = rles_to_mask(rles, height, width, encoding)
    return to_model_input(image, size), mask_to_model_size(mask, size), int(mask.sum())


def fingerprint(records: Sequence[Record], encoding: str, size: int) -> str:
    digest = hashlib.sha256(f"{encoding}|{size}".encode())
    for r in records:
        stat = r.path.stat()
        digest.update(f"{r.image_id}|{r.split}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
        digest.update("|".join(r.rles).encode())
    return digest.hexdigest()


def build_cache(
    work: Path,
    records: Sequence[Record],
    size: int,
    encoding: str,
    workers: int,
    progress: Progress | None = None,
) -> bool:
    """Write the uint8 arrays of every split; returns False when they were already up to date."""
    folder = cache_dir(work, size)
    info_path = folder / "info.json"
    key = fingerprint(records, encoding, size)
    areas_path = folder / "mask-areas.json"
    if info_path.is_file() and json.loads(info_path.read_text()).get("fingerprint") == key:
        areas = json.loads(areas_path.read_text())
        for r in records:
            r.mask_area = areas[r.image_id]
        return False
    folder.mkdir(parents=True, exist_ok=True)
    areas: dict[str, int] = {}
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        for split in SPLITS:
            rows = [r for r in records if r.split == split]
            _write_split(work, size, split, rows, encoding, pool, progress, areas)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    for r in records:
        r.mask_area = areas[r.image_id]
    atomic.write_if_changed(areas_path, json.dumps(areas))
    atomic.write_if_changed(
        info_path, json.dumps({"fingerprint": key, "size": size, "encoding": encoding})
    )
    return True


def _write_split(work, size, split, rows, encoding, pool, progress, areas) -> None:
    paths = cache_paths(work, size, split)
    tmp = {k: p.with_name(f".{p.name}.tmp") for k, p in paths.items()}
    n = len(rows)
    images = np.lib.format.open_memmap(tmp["images"], "w+", np.uint8, (n, size, size))
    masks = np.lib.format.open_memmap(tmp["masks"], "w+", np.uint8, (n, size, size))
    jobs = [(str(r.path), r.rles, r.height, r.width, size, encoding) for r in rows]
    # Bounded memory: submit in chunks, so at most a few chunks of decoded images wait at once.
    chunk = 64
    results = (
        (pool.map(_load_one, jobs[i : i + chunk]) if pool else map(_load_one, jobs[i : i + chunk]))
        for i in range(0, n, chunk)
    )
    task = progress.add_task(f"caching {split} at {size}px", total=n) if progress else None
    index = 0
    for batch in results:
        for image, mask, area in batch:
            images[index], masks[index] = image, mask
            areas[rows[index].image_id] = area
            index += 1
            if progress is not None:
                progress.advance(task)
    images.flush()
    masks.flush()
    del images, masks
    tmp["ids"].write_text(json.dumps([r.image_id for r in rows]))
    for key in ("images", "masks", "ids"):
        os.replace(tmp[key], paths[key])


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
    folds: int = 0,
) -> PrepareResult:
    """Run every step of `ptxseg prepare`; see the module docstring.

    `folds` > 1 adds that many cross-validation folds of the train and val images to the split
    (`ptxseg.data.folds`); 0 keeps the folds that are saved, if any.
    """
    if size <= 0 or size % 32:
        raise ValueError(f"--size {size}: expected a positive multiple of 32 (256, 512, 1024)")
    images, out = Path(images), Path(out)
    table = read_annotations(annotations)
    if rle_encoding == "auto":
        rle_encoding = detect_encoding(r for rles in table.values() for r in rles)
    elif rle_encoding not in ("relative", "absolute"):
        raise ValueError(f"--rle-encoding {rle_encoding!r}: expected auto, relative or absolute")
    files = find_dicoms(images)
    if not files:
        raise FileNotFoundError(f"no .dcm files found under {images}")
    records, problems = join_images(files, table, progress)
    if not records:
        raise ValueError(
            f"none of the {len(files)} DICOMs under {images} matches an ImageId of {annotations} "
            f"({len(table)} images): check that they belong together (ImageId = file name stem "
            "or the header's SOPInstanceUID)"
        )
    out.mkdir(parents=True, exist_ok=True)
    split = load_or_make_split(out, records, seed, val, test)
    groups = {r.image_id: r.patient_id or f"image:{r.image_id}" for r in records}
    positive = {r.image_id: bool(r.rles) for r in records}
    split = load_or_make_folds(out, split, groups, positive, folds)
    where = {i: s for s in SPLITS for i in split[s]}
    fold_of = {i: k for k, ids in enumerate(split.get("folds") or []) for i in ids}
    for r in records:
        r.split = where[r.image_id]
        r.fold = fold_of.get(r.image_id)
    written = build_cache(out, records, size, rle_encoding, max(1, workers), progress)
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
