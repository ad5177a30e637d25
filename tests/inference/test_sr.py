"""DICOM SR (TID 1500): content of positive and negative reports, the outlines a viewer draws,
references, standard codes, SIIM's invalid headers, names in other scripts."""

import warnings

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_files import chest_like, write_dicom

from ptxseg import __version__
from ptxseg.data.dicom import read_image
from ptxseg.inference.findings import compute_findings
from ptxseg.inference.seg import InvalidSourceHeaderWarning, build_segmentation
from ptxseg.inference.sr import (
    LOCAL_CODES,
    LOCAL_SCHEME,
    build_report,
    read_report,
    regions,
    report_uids,
    write_report,
)

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
        warnings.simplefilter("error", InvalidSourceHeaderWarning)  # a valid header: no repair
        path = write_report(src, findings, tmp_path / "sr.dcm", segmentation=seg, mask=mask)
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
    # one region: its outline on the source image, its area, the estimates of its side
    [region] = got["regions"]
    assert region["side"] == "right" and region["area_cm2"] == pytest.approx(got["area_cm2"])
    assert region["bts_rim_mm_est"] == got["bts_rim_mm_est"]
    assert region["tracking_uid"] == got["finding_tracking_uid"]  # one finding, one tracking UID
    np.testing.assert_allclose(region["outline"][0], region["outline"][-1])  # closed
    x, y = region["outline"][:, 0], region["outline"][:, 1]
    assert (x.min(), x.max(), y.min(), y.max()) == (2.5, 11.5, 5.5, 49.5)  # pixel centres
    # the SEG reference names its only frame, not the segment too (the standard forbids both)
    refs = [r for r in _items(sr) if r.get("ValueType") == "IMAGE" and "ReferencedSOPSequence" in r]
    seg_refs = [r.ReferencedSOPSequence[0] for r in refs if "ReferencedFrameNumber" in
                r.ReferencedSOPSequence[0]]  # fmt: skip
    assert [int(r.ReferencedFrameNumber) for r in seg_refs] == [1]
    assert "ReferencedSegmentNumber" not in seg_refs[0]


def _items(ds):
    """Every content item of an SR, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _codes(ds):
    for item in _items(ds):
        for keyword in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
            for code in item.get(keyword, []):
                yield code.CodingSchemeDesignator, code.CodeValue, code.CodeMeaning
        for value in item.get("MeasuredValueSequence", []):
            for unit in value.MeasurementUnitsCodeSequence:
                yield unit.CodingSchemeDesignator, unit.CodeValue, unit.CodeMeaning


def test_codes_are_standard_except_the_listed_local_ones(tmp_path):
    src = write_dicom(tmp_path / "cr.dcm", chest_like(64), PixelSpacing=[0.5, 0.5])
    mask = _band((64, 64))
    seg, _ = build_segmentation(src, mask)
    findings = dict(_findings(src, mask), calibrated_probability=0.4)
    sr, _ = build_report(src, findings, segmentation=seg, mask=mask)
    used = set(_codes(sr))
    assert {scheme for scheme, _, _ in used} <= {"SCT", "DCM", "UCUM", "RFC5646", LOCAL_SCHEME}
    local = {(value, scheme, meaning) for scheme, value, meaning in used if scheme == LOCAL_SCHEME}
    assert local == set(LOCAL_CODES) and all(len(why) > 40 for why in LOCAL_CODES.values())
    assert ("SCT", "36118008", "Pneumothorax") in used and ("DCM", "121206", "Distance") in used
    assert ("SCT", "24028007", "Right") in used  # laterality


def test_outlines_follow_each_region_and_its_side(tmp_path):
    src = write_dicom(tmp_path / "cr.dcm", chest_like(128), PixelSpacing=[0.5, 0.5])
    mask = np.zeros((128, 128), np.uint8)
    cv2.ellipse(mask, (30, 50), (14, 30), 15, 0, 360, 1, -1)  # patient's right (image left)
    cv2.circle(mask, (100, 40), 9, 1, -1)  # patient's left
    mask = mask.astype(bool)
    findings = _findings(src, mask)
    got = read_report(build_report(src, findings, mask=mask)[0])
    assert [r["side"] for r in got["regions"]] == ["right", "left"]  # largest first
    assert sum(r["area_cm2"] for r in got["regions"]) == pytest.approx(got["area_cm2"], abs=0.01)
    for region in got["regions"]:
        assert (
            region["bts_rim_mm_est"]
            == findings["size_est_by_side"][region["side"]]["bts_rim_mm_est"]
        )
        drawn = np.zeros((128, 128), np.uint8)
        cv2.fillPoly(drawn, [np.round(region["outline"] - 0.5).astype(np.int32)], 1)
        part = mask & ((np.arange(128) < 64) == (region["side"] == "right"))[None, :]
        iou = (drawn.astype(bool) & part).sum() / (drawn.astype(bool) | part).sum()
        assert iou > 0.9


def test_a_one_pixel_region_is_outlined_by_its_box():
    mask = np.zeros((32, 32), bool)
    mask[10, 20] = True
    [region] = regions(mask)
    assert region.pixels == 1 and region.side == "left" and len(region.outline) == 5
    np.testing.assert_allclose(region.outline.min(axis=0), [20.5, 10.5])


def test_negative_report_says_absent_without_sizes_or_seg(tmp_path):
    src = write_dicom(tmp_path / "cr.dcm", chest_like(64))
    findings = _findings(src, np.zeros((64, 64), bool), probability=0.03)
    sr, notes = build_report(src, findings)
    got = read_report(sr)
    assert notes == []
    assert got["pneumothorax"] is False and got["side"] is None
    assert got["area_cm2"] == 0.0 and got["bts_rim_mm_est"] is None
    assert got["bts_class_est"] is None and got["segmentation_sop_instance_uid"] is None
    assert got["regions"] == [] and got["probability"] == pytest.approx(0.03)


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
    with pytest.warns(InvalidSourceHeaderWarning, match="StudyInstanceUID"):
        sr, notes = build_report(src, findings, mask=mask)
    stored = pydicom.dcmread(src).file_meta.MediaStorageSOPInstanceUID
    got = read_report(sr)
    assert len(notes) == 4 and got["source_sop_instance_uid"] == stored  # 3 UIDs, PatientAge
    assert "PatientAge" not in sr and got["regions"][0]["side"] == "right"
    assert hd.sr.ComprehensiveSR.from_dataset(sr).StudyInstanceUID.startswith("2.25.")
    # 170 px at 0.139 mm: the rim at the hilum level; the band's width caps the apex distance
    assert got["bts_rim_mm_est"] == pytest.approx(170 * 0.139, abs=0.1)
    assert got["bts_class_est"] == "large" and got["accp_class_est"] == "small"


def test_names_in_other_scripts_travel_intact(tmp_path):
    name = "山田^太郎"
    src = write_dicom(
        tmp_path / "cr.dcm", chest_like(64), SpecificCharacterSet="ISO_IR 192", PatientName=name
    )
    findings = _findings(src, np.zeros((64, 64), bool), probability=0.03)
    path = write_report(src, findings, tmp_path / "sr.dcm")
    again = pydicom.dcmread(path)
    assert again.SpecificCharacterSet == "ISO_IR 192" and again.PatientName == name


def test_report_names_the_operating_point_and_carries_the_calibrated_probability(tmp_path):
    src = write_dicom(tmp_path / "cr.dcm", chest_like(64), PixelSpacing=[0.5, 0.5])
    findings = _findings(src, _band((64, 64)))
    findings.update(calibrated_probability=0.37, operating_point_name="triage")
    got = read_report(write_report(src, findings, tmp_path / "sr.dcm"))
    assert got["probability"] == pytest.approx(0.91)  # the raw score keeps its meaning
    assert got["calibrated_probability"] == pytest.approx(0.37)
    assert "operating point name: triage" in got["algorithm_parameters"]
