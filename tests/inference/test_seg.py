"""DICOM SEG: references to the source image, pixel data, the invalid UIDs of real SIIM files."""

import warnings

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ptxseg.inference.seg import (
    InvalidSourceUIDWarning,
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
    with warnings.catch_warnings():
        warnings.simplefilter("error", InvalidSourceUIDWarning)
        path = write_segmentation(src, _mask(), tmp_path / "a.dcm", findings)
    source = pydicom.dcmread(src)
    seg = hd.seg.segread(path)
    ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.Modality == "SEG"
    np.testing.assert_array_equal(read_segmentation_mask(path), _mask())
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), _mask())
    assert "seg_notes" not in findings


def test_stage2_files_with_invalid_uids_get_valid_ones_and_a_warning(siim_real, tmp_path):
    src = siim_real / "vishakhnair16-stage2-test" / "ID_0011fe81e.dcm"
    findings = {}
    with pytest.warns(InvalidSourceUIDWarning, match="ID_0011fe81e"):
        path = write_segmentation(src, _mask(), tmp_path / "b.dcm", findings)
    stored = pydicom.dcmread(src).file_meta.MediaStorageSOPInstanceUID
    seg = hd.seg.segread(path)
    assert findings["seg_referenced_sop_instance_uid"] == stored
    assert seg.get_source_image_uids()[0][2] == stored
    assert is_valid_uid(seg.StudyInstanceUID) and is_valid_uid(seg.SeriesInstanceUID)
    assert len(findings["seg_notes"]) == 3
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
