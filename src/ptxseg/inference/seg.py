"""DICOM Segmentation (highdicom, BINARY) of a predicted mask, referencing its source radiograph.

Some real SIIM files carry identifiers that are not valid DICOM UIDs (SOPInstanceUID `ID_...`) or
are empty (Study/Series Instance UID), and values that break their VR (a PatientAge of "63"). A SEG
must reference valid UIDs and copies the patient and study attributes, so the header is repaired on
a copy by `ptxseg.data.uids.repair_source`: UIDs are replaced (deterministically: the same file
always gets the same UIDs), other values repaired where the repair is certain and otherwise sent
empty or left out (`ptxseg.data.values`). Every change is reported with an
`InvalidSourceHeaderWarning` and listed in the returned notes. The SR writer (`sr.py`) shares this.

Text is written in UTF-8 (Specific Character Set ISO_IR 192) whatever the source's character set:
names decoded from the source's declared set travel intact in any script.

Patient Orientation (General Image module, type 2C for a SEG of a projection image) is the
source's: the SEG's pixels lie on the source's; an invalid or absent value is sent empty.

The Pixel Measures Sequence carries SliceThickness 1 mm: the standard needs it only for volumes,
but highdicom's reader (0.28) refuses a SEG without it. It means nothing for a radiograph.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg.data.uids import derived_uid, is_valid_uid, repair_source
from ptxseg.util import atomic

__all__ = ["derived_uid", "is_valid_uid", "build_segmentation", "write_segmentation"]

CHARACTER_SET = "ISO_IR 192"
DEFAULT_ORIENTATION = [1, 0, 0, 0, 1, 0]  # what OHIF assumes for an image without one

SLICE_THICKNESS_MM = 1.0
SNOMED_PNEUMOTHORAX = ("36118008", "SCT", "Pneumothorax")
SNOMED_ABNORMAL = ("49755003", "SCT", "Morphologically abnormal structure")


class InvalidSourceHeaderWarning(UserWarning):
    """A source header value was invalid: a UID was replaced, another value repaired, sent empty
    or left out in the derived object (the message says which)."""


InvalidSourceUIDWarning = InvalidSourceHeaderWarning  # the name before other values were repaired


# Patient and study attributes that the derived objects copy; DICOM allows them empty (type 2)
# but not absent, and some files leave them out.
COPIED_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def list_with_header_warnings(findings: dict, notes: list[str]) -> None:
    """Add the header repairs of a derived object to the image's `header_warnings` (once each)."""
    if notes:
        warnings_list = findings.setdefault("header_warnings", [])
        warnings_list.extend(note for note in notes if note not in warnings_list)


def read_source(source) -> tuple[Any, str]:
    """(a private copy of the source header, a label for messages) from a path or a Dataset.

    Absent type-2 patient and study attributes are added empty to the copy."""
    import copy

    import pydicom

    if isinstance(source, pydicom.Dataset):
        ds, label = copy.deepcopy(source), f"image {source.get('SOPInstanceUID', '?')}"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # invalid UIDs are handled by the caller, with a warning
            ds, label = pydicom.dcmread(str(source)), str(source)
    for keyword in COPIED_TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds, label


def repair_and_warn(ds, label: str, stacklevel: int = 3) -> list[str]:
    """Repair the header in place (`uids.repair_source`); warn and return a note each."""
    notes = repair_source(ds)
    for note in notes:
        warnings.warn(f"{label}: {note}", InvalidSourceHeaderWarning, stacklevel=stacklevel + 1)
    return notes


def repaired_source(source, stacklevel: int = 3) -> tuple[Any, list[str], str]:
    """(a copy of the source header with valid values, the notes, a label); each change warned."""
    ds, label = read_source(source)
    return ds, repair_and_warn(ds, label, stacklevel + 1), label


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


def add_viewer_plane_orientation(seg, source) -> None:
    """Give the SEG's frames a Plane Orientation (Patient) where highdicom wrote none.

    A radiograph has no patient coordinate system, so highdicom writes no plane orientation; the
    standard allows one without a Frame of Reference. OHIF (3.13) refuses to load a SEG without
    it, and takes an image without ImageOrientationPatient as [1, 0, 0, 0, 1, 0]; the SEG states
    the source's orientation when it has one, else that same default, so that the two agree. With
    no Frame of Reference and no Image Position it places nothing in the patient's space."""
    from pydicom import Dataset

    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PlaneOrientationSequence" in shared:
        return
    orientation = Dataset()
    iop = source.get("ImageOrientationPatient")
    orientation.ImageOrientationPatient = list(iop) if iop else DEFAULT_ORIENTATION
    shared.PlaneOrientationSequence = [orientation]


def build_segmentation(
    source, mask: np.ndarray, series_uid: str | None = None, sop_uid: str | None = None
):
    """(highdicom Segmentation, notes) for a bool mask at the source image's size.

    `source` is a DICOM path or a pydicom Dataset (not modified). The SEG's series and instance
    UIDs are derived from the source image and the ptxseg version unless given.
    """
    import highdicom as hd

    from ptxseg import __version__

    ds, label = read_source(source)
    if mask.shape != (ds.Rows, ds.Columns):
        raise ValueError(
            f"mask shape {mask.shape} does not match {label} ({ds.Rows}x{ds.Columns}): "
            "the SEG mask must be at the original resolution"
        )
    notes = repair_and_warn(ds, label, stacklevel=3)
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    measures = None
    if spacing:
        measures = hd.PixelMeasuresSequence(
            pixel_spacing=[float(v) for v in spacing], slice_thickness=SLICE_THICKNESS_MM
        )
    series_uid = series_uid or derived_uid("ptxseg-seg-series", ds.SOPInstanceUID, __version__)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom re-validates values it already warned about
        seg = hd.seg.Segmentation(
            source_images=[ds],
            pixel_array=mask.astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment_description(__version__)],
            series_instance_uid=series_uid,
            series_number=900,
            sop_instance_uid=sop_uid or derived_uid(series_uid, "instance"),
            instance_number=1,
            manufacturer="ptxseg",
            manufacturer_model_name="ptxseg U-Net",
            software_versions=__version__,
            device_serial_number="0",
            series_description="ptxseg pneumothorax segmentation",
            pixel_measures=measures,
            specific_character_set=CHARACTER_SET,
        )
    seg.PatientOrientation = ds.get("PatientOrientation", "") or ""
    add_viewer_plane_orientation(seg, ds)
    return seg, notes


def save_segmentation(seg, notes: list[str], out: str | Path, findings: dict | None = None) -> Path:
    """Write a built SEG to `out` (atomically); its source reference and notes into findings."""
    buf = io.BytesIO()
    seg.save_as(buf)
    if findings is not None:
        findings["seg_referenced_sop_instance_uid"] = str(
            seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        )
        if notes:
            findings["seg_notes"] = notes
            list_with_header_warnings(findings, notes)
    return atomic.write_bytes(out, buf.getvalue())


def write_segmentation(
    source_path: str | Path, mask: np.ndarray, out: str | Path, findings: dict | None = None
) -> Path:
    """Write a DICOM SEG for `mask` next to the other outputs (atomically); notes into findings."""
    seg, notes = build_segmentation(source_path, mask)
    return save_segmentation(seg, notes, out, findings)


def read_segmentation_mask(path: str | Path) -> np.ndarray:
    """The segment-1 mask (bool, H x W) of a single-frame SEG written by `write_segmentation`."""
    import pydicom

    ds = pydicom.dcmread(str(path))
    return np.asarray(ds.pixel_array, bool).reshape(ds.Rows, ds.Columns)
