"""Finding the DICOMs of `ptxseg prepare` and joining them with the annotation CSV.

An image is used when it has both a readable DICOM header and annotation rows; everything else
(an unreadable file, a decompression bomb, an ImageId labelled both -1 and with a region, an RLE
that does not fit its image) is listed with its reason in the problems that become
`unmatched.json`, before any pixel is decoded.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from rich.progress import Progress

from ptxseg.data.dicom import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    check_pixel_count,
    read_header,
)
from ptxseg.data.rle import Annotations, check_rle
from ptxseg.util import path_guard


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


def note_skipped(problems: dict[str, list], path: Path | str, reason: str) -> None:
    """List a file that is left out, with its reason, under `problems["skipped"]`."""
    problems.setdefault("skipped", []).append({"file": str(path), "reason": reason})


def _checked_header(path: Path, max_pixels: int) -> tuple[pydicom.Dataset | None, dict | None, str]:
    """The header, its values, or the reason the file cannot be used."""
    ds, reason = _header(path)
    try:
        meta = read_header(ds, str(path)) if ds is not None else None
        if meta is not None:
            check_pixel_count(str(path), meta["Rows"], meta["Columns"], max_pixels, "the header")
    except ImageReadError as err:
        meta, reason = None, str(err).removeprefix(f"{path}: ")
    return ds, meta, reason


def _image_id(path: Path, ds: pydicom.Dataset, meta: dict, annotations, conflicts) -> str:
    """ImageId = the file stem, else the header's SOPInstanceUID or its file meta's copy."""
    image_id = path.stem
    if image_id not in annotations and image_id not in conflicts:
        uids = (
            meta["SOPInstanceUID"] or "",
            str(ds.file_meta.get("MediaStorageSOPInstanceUID", "")),
        )
        image_id = next((u for u in uids if u in annotations or u in conflicts), image_id)
    return image_id


def _record(image_id: str, path: Path, rles: list[str], meta: dict) -> Record:
    spacing = meta["PixelSpacing"]
    return Record(
        image_id=image_id,
        path=path,
        rles=rles,
        height=meta["Rows"],
        width=meta["Columns"],
        pixel_spacing=spacing[0] if spacing else None,
        view_position=meta["ViewPosition"] or "",
        patient_sex=meta["PatientSex"] or "",
        patient_age="" if meta["PatientAge"] is None else str(meta["PatientAge"]),
        patient_id=meta["PatientID"] or "",
    )


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
        ds, meta, reason = _checked_header(path, max_pixels)
        if progress is not None:
            progress.advance(task)
        if meta is None:
            note_skipped(problems, path, reason)
            continue
        image_id = _image_id(path, ds, meta, annotations, conflicts)
        if image_id in conflicts:  # its label contradicts itself: neither positive nor negative
            note_skipped(problems, path, annotations.conflict_reason(image_id))
            continue
        if image_id not in annotations:
            problems["images_without_annotations"].append(str(path))
            continue
        if image_id in matched:
            problems.setdefault("duplicate_images", []).append(str(path))
            continue
        matched.add(image_id)
        records.append(_record(image_id, path, annotations[image_id], meta))
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
            note_skipped(problems, r.path, reason)
        else:
            kept.append(r)
    return kept
