"""`ptxseg prepare`: DICOMs + annotation CSV -> a work folder (manifest, split, uint8 cache).

Steps: find the DICOMs and join them with the annotations (`ptxseg.data.discovery`), make (or
reuse) the seeded split (`ptxseg.data.split_plan`; with `folds`, the cross-validation folds of
`ptxseg.data.folds`), decode and resize every image and mask once, in parallel, into
memory-mapped arrays (`ptxseg.data.cache_builder`), then write the manifest, the prepared
images' annotations and the list of problems. Every output is written under a temporary name and
renamed, and a rerun with the same inputs finds the work folder up to date and writes nothing.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import Progress

from ptxseg.data.cache_builder import CacheSpec, build_cache, remove_stale_temporaries
from ptxseg.data.dataset import ANNOTATIONS, MANIFEST, SPLITS, SPLITS_FILE
from ptxseg.data.device_images import choose_decoder
from ptxseg.data.dicom import DEFAULT_MAX_PIXELS
from ptxseg.data.discovery import Record, check_masks, find_dicoms, join_images, note_skipped
from ptxseg.data.folds import load_or_make_folds
from ptxseg.data.rle import EMPTY, detect_encoding, read_annotations
from ptxseg.data.split_plan import drop_from_split, plan_split
from ptxseg.util import atomic

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
class PrepareOptions:
    """The choices of `ptxseg prepare` besides its three paths (see the command's help)."""

    size: int = 256
    seed: int = 0
    val: float = 0.1
    test: float = 0.1
    workers: int = 1
    rle_encoding: str = "auto"
    decode: str = "cpu"  # auto, device or cpu (`ptxseg.data.device_images.choose_decoder`)
    decode_device: str = "cuda"  # the torch device of `decode` auto or device
    max_pixels: int = DEFAULT_MAX_PIXELS
    folds: int = 0  # > 1: that many cross-validation folds; 0: keep the saved ones


@dataclass
class PrepareResult:
    work: Path
    counts: dict[str, dict[str, int]]
    encoding: str
    problems: dict[str, list]
    cache_written: bool
    folds: list[dict[str, int]] = field(default_factory=list)  # images and positives per fold


@dataclass
class _Joined:
    """The images that can be prepared, what was wrong with the others, the RLE encoding."""

    records: list[Record]
    problems: dict[str, list]
    encoding: str


def prepare_work_folder(
    images: str | Path,
    annotations: str | Path,
    out: str | Path,
    options: PrepareOptions | None = None,
    progress: Progress | None = None,
) -> PrepareResult:
    """Run every step of `ptxseg prepare` into the work folder `out`; see the module docstring.

    `options.folds` > 1 adds that many cross-validation folds of the train and val images to the
    split (`ptxseg.data.folds`); 0 keeps the folds that are saved, if any.
    """
    options = options or PrepareOptions()
    decoder = choose_decoder(options.decode, options.decode_device)
    images, out = Path(images), Path(out)
    _check(options, out)
    joined = _join(images, Path(annotations), out, options, progress)
    split = plan_split(out, joined.records, options.seed, options.val, options.test)
    records = _assign_split(joined, split)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out, options.size)
    spec = CacheSpec(options.size, joined.encoding, max(1, options.workers), decoder)
    written, failed = build_cache(out, records, spec, progress)
    for r in records:
        if r.image_id in failed:
            note_skipped(joined.problems, r.path, failed[r.image_id])
    records = [r for r in records if r.image_id not in failed]
    split = drop_from_split(split, failed)
    groups = {r.image_id: r.patient_id or f"image:{r.image_id}" for r in records}
    positive = {r.image_id: bool(r.rles) for r in records}
    split = load_or_make_folds(out, split, groups, positive, options.folds)
    fold_of = {i: k for k, ids in enumerate(split.get("folds") or []) for i in ids}
    for r in records:
        r.fold = fold_of.get(r.image_id)
    _write_tables(out, split, records, joined)
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
    return PrepareResult(out, counts, joined.encoding, joined.problems, written, fold_counts)


def _check(options: PrepareOptions, out: Path) -> None:
    if options.size <= 0 or options.size % 32:
        raise ValueError(
            f"--size {options.size}: expected a positive multiple of 32 (256, 512, 1024)"
        )
    if options.max_pixels <= 0:
        raise ValueError(f"--max-megapixels must be positive, got {options.max_pixels / 1e6:g}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(
            f"--out {out} is a file: expected a work folder (new, or written by an earlier "
            "prepare); choose another path"
        )


def _join(images: Path, annotations: Path, out: Path, options: PrepareOptions, progress) -> _Joined:
    """The annotated images whose headers and masks can be read, and the problems found."""
    table = read_annotations(annotations)
    encoding = options.rle_encoding
    if encoding == "auto":
        encoding = detect_encoding(r for rles in table.values() for r in rles)
    elif encoding not in ("relative", "absolute"):
        raise ValueError(f"--rle-encoding {encoding!r}: expected auto, relative or absolute")
    files = find_dicoms(images, skip=[out])
    if not files:
        raise FileNotFoundError(f"no .dcm files found under {images}")
    candidates, problems = join_images(files, table, progress, options.max_pixels)
    candidates = check_masks(candidates, table, encoding, problems)
    if not candidates:
        raise ValueError(
            f"none of the {len(files)} DICOMs under {images} matches an ImageId of {annotations} "
            f"({len(table)} images) and can be read: check that they belong together (ImageId = "
            "file name stem or the header's SOPInstanceUID)"
            + "".join(f"; {p['file']}: {p['reason']}" for p in problems["skipped"][:3])
        )
    return _Joined(candidates, problems, encoding)


def _assign_split(joined: _Joined, split: dict) -> list[Record]:
    """The records in the split, each with its split; those an earlier run skipped are noted."""
    where = {i: s for s in SPLITS for i in split[s]}
    for r in joined.records:
        if r.image_id in where:
            r.split = where[r.image_id]
        else:  # skipped by an earlier run: its saved split says why
            note_skipped(joined.problems, r.path, split["skipped"][r.image_id])
    return [r for r in joined.records if r.image_id in where]


def _write_tables(out: Path, split: dict, records: list[Record], joined: _Joined) -> None:
    """splits.json, manifest.csv, annotations.csv and unmatched.json, each only if changed."""
    joined.problems["skipped"].sort(key=lambda p: p["file"])
    atomic.write_if_changed(out / SPLITS_FILE, json.dumps(split, indent=1) + "\n")
    atomic.write_if_changed(out / MANIFEST, manifest_text(records, joined.encoding))
    atomic.write_if_changed(out / ANNOTATIONS, annotations_text(records))
    atomic.write_if_changed(out / "unmatched.json", json.dumps(joined.problems, indent=1) + "\n")
