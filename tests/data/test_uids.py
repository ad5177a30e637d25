"""UID repair on copies: valid, deterministic from the file, pixels untouched, same as the SEG's."""

import warnings

import numpy as np
import pydicom
import pytest
from dicom_files import chest_like, write_dicom

from ptxseg.cli import main
from ptxseg.data.uids import derived_uid, is_valid_uid, repair_file, repaired_sop_uid
from ptxseg.inference.seg import build_segmentation


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def test_stage2_copy_gets_valid_deterministic_uids_and_the_same_pixels(siim_real, tmp_path):
    src = siim_real / "vishakhnair16-stage2-test" / "ID_0011fe81e.dcm"
    before = src.read_bytes()
    notes = repair_file(src, tmp_path / "a" / "copy.dcm")
    again = repair_file(src, tmp_path / "b" / "copy.dcm")
    assert src.read_bytes() == before  # the source is never touched
    assert notes == again and len(notes) == 4  # the three UIDs, and PatientAge "64" left out
    original, fixed = _read(src), _read(tmp_path / "a" / "copy.dcm")
    assert (tmp_path / "a" / "copy.dcm").read_bytes() == (tmp_path / "b" / "copy.dcm").read_bytes()
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        assert is_valid_uid(fixed.get(keyword)), keyword
    assert fixed.SOPInstanceUID == original.file_meta.MediaStorageSOPInstanceUID
    assert fixed.file_meta.MediaStorageSOPInstanceUID == fixed.SOPInstanceUID
    assert fixed.StudyInstanceUID == derived_uid("StudyInstanceUID", fixed.SOPInstanceUID)
    assert fixed.PixelData == original.PixelData and fixed.PixelSpacing == original.PixelSpacing
    # A SEG made from the original file references the instance that the copy is.
    seg, _ = build_segmentation(src, np.ones((1024, 1024), bool))
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == fixed.SOPInstanceUID
    assert ref.SeriesInstanceUID == fixed.SeriesInstanceUID
    assert seg.StudyInstanceUID == fixed.StudyInstanceUID


def test_valid_files_are_copied_unchanged(tmp_path):
    src = write_dicom(tmp_path / "ok.dcm", chest_like(32))
    assert repair_file(src, tmp_path / "out.dcm") == []
    a, b = _read(src), _read(tmp_path / "out.dcm")
    assert (a.SOPInstanceUID, a.StudyInstanceUID) == (b.SOPInstanceUID, b.StudyInstanceUID)


def test_sop_uid_without_a_stored_copy_is_derived_from_the_invalid_value(tmp_path):
    src = write_dicom(tmp_path / "bad.dcm", chest_like(32))
    ds = _read(src)
    ds.SOPInstanceUID = "ID_abc"
    ds.file_meta.MediaStorageSOPInstanceUID = "ID_abc"
    uid, how = repaired_sop_uid(ds)
    assert uid == derived_uid("SOPInstanceUID", "ID_abc") and "derived" in how
    assert repaired_sop_uid(_read(src)) == (_read(src).SOPInstanceUID, None)


def test_repair_uids_command_copies_a_folder(siim_real, tmp_path, capsys):
    src = siim_real / "vishakhnair16-stage2-test"
    with pytest.raises(SystemExit) as done:
        main(["repair-uids", str(src), "--out", str(tmp_path / "fixed")])
    assert done.value.code in (0, None)
    copies = sorted(p.name for p in (tmp_path / "fixed").glob("*.dcm"))
    assert copies == sorted(p.name for p in src.glob("*.dcm")) and len(copies) == 10
    assert "10 had UIDs repaired" in capsys.readouterr().out
