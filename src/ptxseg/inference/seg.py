"""DICOM Segmentation (highdicom, BINARY) of a predicted mask, referencing its source radiograph.

Some real SIIM files carry identifiers that are not valid DICOM UIDs (SOPInstanceUID `ID_...`) or
are empty (Study/Series Instance UID). A SEG object must reference valid UIDs, so such values are
replaced on a copy of the source header: the SOP Instance UID by the file meta
MediaStorageSOPInstanceUID when that one is valid, else by a UID derived deterministically from
the invalid value; empty Study/Series UIDs by UIDs derived from the image's UID. Every replacement
is reported with an `InvalidSourceUIDWarning` and listed in the returned notes.

The Pixel Measures Sequence carries SliceThickness 1 mm: the standard needs it only for volumes,
but highdicom's reader (0.28) refuses a SEG without it. It means nothing for a radiograph.
"""

from __future__ import annotations

import re
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg import atomic

UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
SLICE_THICKNESS_MM = 1.0
SNOMED_PNEUMOTHORAX = ("36118008", "SCT", "Pneumothorax")
SNOMED_ABNORMAL = ("49755003", "SCT", "Morphologically abnormal structure")


class InvalidSourceUIDWarning(UserWarning):
    """A source image UID was invalid or empty and a valid one was used in its place."""


def is_valid_uid(value: Any) -> bool:
    text = str(value or "")
    return 0 < len(text) <= 64 and UID_PATTERN.fullmatch(text) is not None


def derived_uid(*sources: str) -> str:
    """A valid UID (2.25.<UUID v5 as integer>) that is the same every time for the same sources."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, chr(0).join(map(str, sources))).int}"


def repair_source(ds) -> list[str]:
    """Make the source header's UIDs valid in place; return a note per replaced value."""
    notes = []
    sop = str(ds.get("SOPInstanceUID", "") or "")
    if not is_valid_uid(sop):
        stored = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPInstanceUID", "") or "")
        if is_valid_uid(stored):
            new, how = stored, "the file meta MediaStorageSOPInstanceUID"
        else:
            new, how = derived_uid("SOPInstanceUID", sop), "a UID derived from it"
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


def segment_description(version: str):
    import highdicom as hd

    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Pneumothorax",
        segmented_property_category=hd.sr.CodedConcept(*SNOMED_ABNORMAL),
        segmented_property_type=hd.sr.CodedConcept(*SNOMED_PNEUMOTHORAX),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="ptxseg",
            version=version,
            family=hd.sr.CodedConcept("123109", "DCM", "Artificial Intelligence"),
        ),
    )


def build_segmentation(source_path: str | Path, mask: np.ndarray):
    """(highdicom Segmentation, notes) for a bool mask at the source image's size."""
    import highdicom as hd
    import pydicom

    from ptxseg import __version__

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid UIDs are handled below, with our own warning
        ds = pydicom.dcmread(str(source_path))
    if mask.shape != (ds.Rows, ds.Columns):
        raise ValueError(
            f"mask shape {mask.shape} does not match {source_path} ({ds.Rows}x{ds.Columns}): "
            "the SEG mask must be at the original resolution"
        )
    notes = repair_source(ds)
    for note in notes:
        warnings.warn(f"{source_path}: {note}", InvalidSourceUIDWarning, stacklevel=3)
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    measures = None
    if spacing:
        measures = hd.PixelMeasuresSequence(
            pixel_spacing=[float(v) for v in spacing], slice_thickness=SLICE_THICKNESS_MM
        )
    series_uid = derived_uid("ptxseg-seg-series", ds.SOPInstanceUID, __version__)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom re-validates values it already warned about
        seg = hd.seg.Segmentation(
            source_images=[ds],
            pixel_array=mask.astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment_description(__version__)],
            series_instance_uid=series_uid,
            series_number=900,
            sop_instance_uid=derived_uid(series_uid, "instance"),
            instance_number=1,
            manufacturer="ptxseg",
            manufacturer_model_name="ptxseg U-Net",
            software_versions=__version__,
            device_serial_number="0",
            series_description="ptxseg pneumothorax segmentation",
            pixel_measures=measures,
        )
    return seg, notes


def write_segmentation(
    source_path: str | Path, mask: np.ndarray, out: str | Path, findings: dict | None = None
) -> Path:
    """Write a DICOM SEG for `mask` next to the other outputs (atomically); notes into findings."""
    import io

    seg, notes = build_segmentation(source_path, mask)
    buf = io.BytesIO()
    seg.save_as(buf)
    if findings is not None:
        findings["seg_referenced_sop_instance_uid"] = str(
            seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        )
        if notes:
            findings["seg_notes"] = notes
    return atomic.write_bytes(out, buf.getvalue())


def read_segmentation_mask(path: str | Path) -> np.ndarray:
    """The segment-1 mask (bool, H x W) of a single-frame SEG written by `write_segmentation`."""
    import pydicom

    ds = pydicom.dcmread(str(path))
    return np.asarray(ds.pixel_array, bool).reshape(ds.Rows, ds.Columns)
