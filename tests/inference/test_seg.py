"""DICOM SEG: references to the source image, pixel data, the invalid headers of real SIIM files,
names in other scripts, and what OHIF needs to load it."""

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_files import chest_like, write_dicom

from ptxseg.inference.seg import (
    DEFAULT_ORIENTATION,
    InvalidSourceHeaderWarning,
    build_segmentation,
    derived_uid,
    is_valid_uid,
    read_segmentation_mask,
    write_segmentation,
)


def _mask():
    mask = np.zeros((1024, 1024), bool)
    mask[200:400, 100:300] = True
    return mask


def test_seg_references_a_valid_source_and_round_trips(siim_real, tmp_path):
    src = next((siim_real / "torchxrayvision").glob("1.2.276*.dcm"))
    findings = {}
    with pytest.warns(InvalidSourceHeaderWarning) as caught:
        path = write_segmentation(src, _mask(), tmp_path / "a.dcm", findings)
    # valid UIDs: only the bare age "62" (no unit) is not copied
    assert [str(w.message).split(": ", 1)[1] for w in caught] == findings["seg_notes"]
    assert len(findings["seg_notes"]) == 1 and "PatientAge '62'" in findings["seg_notes"][0]
    assert findings["header_warnings"] == findings["seg_notes"]
    source = pydicom.dcmread(src)
    seg = hd.seg.segread(path)
    ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.Modality == "SEG"
    np.testing.assert_array_equal(read_segmentation_mask(path), _mask())
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), _mask())
    assert "PatientAge" not in seg and seg.PatientSex == source.PatientSex


def test_stage2_files_with_invalid_uids_get_valid_ones_and_a_warning(siim_real, tmp_path):
    src = siim_real / "vishakhnair16-stage2-test" / "ID_0011fe81e.dcm"
    findings = {}
    with pytest.warns(InvalidSourceHeaderWarning, match="ID_0011fe81e"):
        path = write_segmentation(src, _mask(), tmp_path / "b.dcm", findings)
    stored = pydicom.dcmread(src).file_meta.MediaStorageSOPInstanceUID
    seg = hd.seg.segread(path)
    assert findings["seg_referenced_sop_instance_uid"] == stored
    assert seg.get_source_image_uids()[0][2] == stored
    assert is_valid_uid(seg.StudyInstanceUID) and is_valid_uid(seg.SeriesInstanceUID)
    assert len(findings["seg_notes"]) == 4  # SOP, Study and Series UIDs, and PatientAge "64"
    np.testing.assert_array_equal(read_segmentation_mask(path), _mask())
    again = hd.seg.segread(write_segmentation(src, _mask(), tmp_path / "c.dcm"))
    assert again.StudyInstanceUID == seg.StudyInstanceUID  # derived UIDs are deterministic


def test_derived_uids_are_valid_and_stable():
    assert derived_uid("a", "b") == derived_uid("a", "b") != derived_uid("a", "c")
    assert is_valid_uid(derived_uid("x")) and not is_valid_uid("ID_0011fe81e")


def test_mask_size_must_match_the_source(siim_real, tmp_path):
    src = siim_real / "vishakhnair16-stage2-test" / "ID_0011fe81e.dcm"
    with pytest.raises(ValueError, match="original resolution"):
        write_segmentation(src, np.ones((64, 64), bool), tmp_path / "d.dcm")
    assert not (tmp_path / "d.dcm").exists()


def test_patient_orientation_and_a_plane_orientation_for_viewers(tmp_path):
    """General Image's Patient Orientation (type 2C) is the source's; the frames get the plane
    orientation that OHIF needs (the source's default), without a Frame of Reference."""
    src = write_dicom(tmp_path / "cr.dcm", chest_like(64), PatientOrientation=["L", "F"])
    seg, notes = build_segmentation(src, np.ones((64, 64), bool))
    assert notes == [] and list(seg.PatientOrientation) == ["L", "F"]
    plane = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    assert [float(v) for v in plane.ImageOrientationPatient] == DEFAULT_ORIENTATION
    assert "FrameOfReferenceUID" not in seg and "PlanePositionSequence" not in seg
    bare = write_dicom(tmp_path / "bare.dcm", chest_like(64))
    assert build_segmentation(bare, np.ones((64, 64), bool))[0].PatientOrientation == ""


@pytest.mark.parametrize(
    ("charset", "name"),
    [
        ("ISO_IR 192", "山田^太郎"),
        ("ISO_IR 192", "Παπαδόπουλος^Νίκος"),
        ("ISO_IR 144", "Иванов^Иван"),
        ("ISO_IR 100", "Müller^Jürgen"),
    ],
)
def test_names_in_other_scripts_travel_intact_in_utf8(tmp_path, charset, name):
    src = write_dicom(
        tmp_path / "cr.dcm", chest_like(64), SpecificCharacterSet=charset, PatientName=name
    )
    assert pydicom.dcmread(src).PatientName == name
    seg, _ = build_segmentation(src, np.ones((64, 64), bool))
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    again = pydicom.dcmread(path)
    assert again.SpecificCharacterSet == "ISO_IR 192" and again.PatientName == name
    assert name.encode("utf-8") in path.read_bytes()
