"""DICOM UIDs: validity, deterministic derivation, and the repair of SIIM's invalid headers.

Some real SIIM files carry identifiers that are not valid DICOM UIDs (SOPInstanceUID `ID_...`) or
are empty (Study/Series Instance UID). Objects that reference them (SEG, SR) need valid UIDs, and a
PACS refuses to store the files themselves (Orthanc: "missing StudyInstanceUID, SeriesInstanceUID
or SOPInstanceUID"). `repair_source` replaces such values on a header in memory, `repair_file` on a
copy of a file; both give the same UIDs every time for the same file, so a SEG or SR made from the
original file references the same instance as its repaired copy in a PACS:

- SOPInstanceUID: the file meta MediaStorageSOPInstanceUID when that one is valid (the SIIM files
  keep the original UID there), else a UID derived from the invalid value;
- StudyInstanceUID, SeriesInstanceUID: a UID derived from the (repaired) SOPInstanceUID.

The other invalid values of such headers (a PatientAge of "63", a PixelSpacing of 19 characters)
are repaired where the repair is certain and otherwise sent empty or left out, by the rules of
`ptxseg.data.values`; `repair_source` applies both, so a copy and the objects derived from it pass
a DICOM validator (dciodvfy).
"""

from __future__ import annotations

import io
import re
import uuid
import warnings
from pathlib import Path
from typing import Any

from ptxseg.data.values import repair_values
from ptxseg.util import atomic

UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_valid_uid(value: Any) -> bool:
    text = str(value or "")
    return 0 < len(text) <= 64 and UID_PATTERN.fullmatch(text) is not None


def derived_uid(*sources: str) -> str:
    """A valid UID (2.25.<UUID v5 as integer>) that is the same every time for the same sources."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, chr(0).join(map(str, sources))).int}"


def repaired_sop_uid(ds) -> tuple[str, str | None]:
    """(the SOP Instance UID a repaired header has, how it was found or None when unchanged)."""
    sop = str(ds.get("SOPInstanceUID", "") or "")
    if is_valid_uid(sop):
        return sop, None
    meta = getattr(ds, "file_meta", None)
    stored = str((meta or {}).get("MediaStorageSOPInstanceUID", "") or "")
    if is_valid_uid(stored):
        return stored, "the file meta MediaStorageSOPInstanceUID"
    return derived_uid("SOPInstanceUID", sop), "a UID derived from it"


def repair_source(ds) -> list[str]:
    """Make the header valid in place (its UIDs, then its other values); a note per change."""
    return repair_header_uids(ds) + repair_values(ds)


def repair_header_uids(ds) -> list[str]:
    """Make the header's SOP, Study and Series Instance UIDs valid in place; a note per change."""
    notes = []
    sop = str(ds.get("SOPInstanceUID", "") or "")
    new, how = repaired_sop_uid(ds)
    if how is not None:
        notes.append(f"SOPInstanceUID {sop!r} is not a valid UID; referenced as {new} ({how})")
        ds.SOPInstanceUID = new
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        value = str(ds.get(keyword, "") or "")
        if not is_valid_uid(value):
            new = derived_uid(keyword, ds.SOPInstanceUID)
            shown = repr(value) if value else "empty"
            notes.append(f"{keyword} {shown} is not a valid UID; derived {new} from the image UID")
            setattr(ds, keyword, new)
    return notes


def repaired_copy(source: str | Path):
    """(the dataset of `source` with a valid header, the notes of the repair); the file is only
    read. The file meta names the (repaired) SOP Instance UID."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the very values repaired here
        ds = pydicom.dcmread(str(source))
        notes = repair_source(ds)
    if "file_meta" in ds:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds, notes


def repair_file(source: str | Path, target: str | Path) -> list[str]:
    """Write a copy of `source` with a valid header to `target` (atomically); the repair's notes.

    The pixel data and every valid attribute are copied unchanged. A file whose header is already
    valid is copied as it is (empty notes). The source is never modified.
    """
    ds, notes = repaired_copy(source)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buf)
    atomic.write_bytes(target, buf.getvalue())
    return notes


def header_repairs(source: str | Path | bytes) -> list[str]:
    """The notes that `repair_source` makes for a DICOM file or its bytes; nothing is written."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        return repair_source(pydicom.dcmread(raw, stop_before_pixels=True))


def repair_targets(inputs: list[Path], out: Path) -> list[tuple[Path, Path]]:
    """(DICOM, name of its copy under `out`) for `ptxseg repair-uids`: folders are searched
    (not `out`); ValueError for an input that does not exist."""
    from ptxseg.util import path_guard

    files: list[tuple[Path, Path]] = []
    for raw in inputs:
        if raw.is_dir():
            files += [(p, p.relative_to(raw)) for p in path_guard.walk(raw, (".dcm",), skip=[out])]
        elif raw.is_file():
            files.append((raw, Path(raw.name)))
        else:
            raise ValueError(f"{raw} does not exist: expected a DICOM file or a folder")
    return files


def repair_copies(files: list[tuple[Path, Path]], out: Path) -> tuple[int, list[tuple[str, str]]]:
    """Write the repaired copy of each (DICOM, name under `out`); (how many had UIDs repaired,
    (file, reason) of those that could not be read). An OSError writing under `out` is raised."""
    from ptxseg.util import path_guard

    repaired, failed = 0, []
    for source, relative in files:
        try:
            notes = repair_file(source, out / relative)
        except OSError as err:
            if err.filename and path_guard.is_inside(
                path_guard.real(err.filename), path_guard.real(out)
            ):
                raise  # the output cannot be written
            failed.append((str(source), f"{type(err).__name__}: {err}"))
            continue
        except Exception as err:  # noqa: BLE001 - report and go on
            failed.append((str(source), f"{type(err).__name__}: {err}"))
            continue
        repaired += bool(notes)
    return repaired, failed
