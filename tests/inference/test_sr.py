"""DICOM SR (TID 1500): content of positive and negative reports, references, SIIM's UIDs."""

import warnings

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_files import chest_like, write_dicom

from ptxseg import __version__
from ptxseg.data.dicom import read_image
from ptxseg.inference.findings import compute_findings
from ptxseg.inference.seg import InvalidSourceUIDWarning, build_segmentation
from ptxseg.inference.sr import build_report, read_report, report_uids, write_report

OP = {"top": 0.6, "bottom": 0.4, "min_area": 12}


def _findings(path, mask, probability=0.91):
    _, meta = read_image(path)
    return compute_findings(mask, probability, meta, OP, "resnet50")


def _band(shape):
    mask = np.zeros(shape, bool)
    mask[5:50, 2:12] = True  # patient's right (image left)
    return mask


def test_positive_report_lists_every_finding_and_references_source_and_seg(tmp_path):
    src = write_dicom(tmp_path / "cr.dcm", chest_like(64), PixelSpacing=[0.5, 0.5])
    mask = _band((64, 64))
    findings = _findings(src, mask)
    seg, _ = build_segmentation(src, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InvalidSourceUIDWarning)  # valid UIDs: nothing to repair
        path = write_report(src, findings, tmp_path / "sr.dcm", segmentation=seg)
    got = read_report(path)
    source = pydicom.dcmread(src)
    assert got["pneumothorax"] is True and got["side"] == "right"
    assert got["probability"] == pytest.approx(0.91)
    assert got["area_cm2"] == pytest.approx(45 * 10 * 0.25 / 100)
    assert got["bts_rim_mm_est"] == findings["bts_rim_mm_est"] == pytest.approx(5.0)
    assert got["accp_apex_mm_est"] == findings["accp_apex_mm_est"]
    assert (got["bts_class_est"], got["accp_class_est"]) == ("small", "small")
    assert got["algorithm_version"] == __version__
    assert got["algorithm_parameters"] == [
        "model: U-Net resnet50",
        "operating point: top=0.6, bottom=0.4, min_area=12",
        "operating point name: default",
    ]
    assert got["calibrated_probability"] is None  # findings of a model without calibrator
    assert got["source_sop_instance_uid"] == source.SOPInstanceUID
    assert got["segmentation_sop_instance_uid"] == seg.SOPInstanceUID
    sr = pydicom.dcmread(path)
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.Modality == "SR"
    assert sr.PatientID == source.PatientID  # the report files beside the image
    assert (sr.ContentQualification, sr.CompletionFlag, sr.VerificationFlag) == (
        "RESEARCH",
        "COMPLETE",
        "UNVERIFIED",
    )
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99PTXSEG"


def test_negative_report_says_absent_without_sizes_or_seg(tmp_path):
    src = write_dicom(tmp_path / "cr.dcm", chest_like(64))
    findings = _findings(src, np.zeros((64, 64), bool), probability=0.03)
    sr, notes = build_report(src, findings)
    got = read_report(sr)
    assert notes == []
    assert got["pneumothorax"] is False and got["side"] is None
    assert got["area_cm2"] == 0.0 and got["bts_rim_mm_est"] is None
    assert got["bts_class_est"] is None and got["segmentation_sop_instance_uid"] is None


def test_report_uids_are_stable_per_image_and_result_key(tmp_path):
    src = write_dicom(tmp_path / "cr.dcm", chest_like(64))
    findings = _findings(src, np.zeros((64, 64), bool))
    first, _ = build_report(src, findings, result_key="model-a")
    again, _ = build_report(src, findings, result_key="model-a")
    other, _ = build_report(src, findings, result_key="model-b")
    assert first.SOPInstanceUID == again.SOPInstanceUID != other.SOPInstanceUID
    source_uid = pydicom.dcmread(src).SOPInstanceUID
    assert report_uids(source_uid, "model-a") == (first.SeriesInstanceUID, first.SOPInstanceUID)


def test_stage2_file_gets_repaired_references(siim_real, tmp_path):
    src = siim_real / "vishakhnair16-stage2-test" / "ID_0011fe81e.dcm"
    image, meta = read_image(src)
    mask = np.zeros(image.shape, bool)
    mask[150:700, 30:200] = True
    findings = compute_findings(mask, 0.8, meta, OP, "resnet50")
    with pytest.warns(InvalidSourceUIDWarning, match="StudyInstanceUID"):
        sr, notes = build_report(src, findings)
    stored = pydicom.dcmread(src).file_meta.MediaStorageSOPInstanceUID
    got = read_report(sr)
    assert len(notes) == 3 and got["source_sop_instance_uid"] == stored
    assert hd.sr.ComprehensiveSR.from_dataset(sr).StudyInstanceUID.startswith("2.25.")
    # 170 px at 0.139 mm: the rim at the hilum level; the band's width caps the apex distance
    assert got["bts_rim_mm_est"] == pytest.approx(170 * 0.139, abs=0.1)
    assert got["bts_class_est"] == "large" and got["accp_class_est"] == "small"


def test_report_names_the_operating_point_and_carries_the_calibrated_probability(tmp_path):
    src = write_dicom(tmp_path / "cr.dcm", chest_like(64), PixelSpacing=[0.5, 0.5])
    findings = _findings(src, _band((64, 64)))
    findings.update(calibrated_probability=0.37, operating_point_name="triage")
    got = read_report(write_report(src, findings, tmp_path / "sr.dcm"))
    assert got["probability"] == pytest.approx(0.91)  # the raw score keeps its meaning
    assert got["calibrated_probability"] == pytest.approx(0.37)
    assert "operating point name: triage" in got["algorithm_parameters"]
