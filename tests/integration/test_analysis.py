"""The Analyzer: DICOM bytes in, SEG and SR out; stable result UIDs; no identifiers in errors."""

import pydicom
from pacs_helpers import NEGATIVE_OP, analyzer, cr_blob, read

from ptxseg.inference.sr import read_report
from ptxseg.integration.analysis import (
    ImageFailure,
    ImageResult,
    dataset_to_bytes,
    describe,
    image_ref,
    redact,
)


def test_positive_image_gets_seg_then_sr_referencing_it(tmp_path):
    blob = cr_blob(tmp_path)
    source = read(blob)
    a = analyzer()
    (result,) = a.analyse([blob])
    assert isinstance(result, ImageResult) and result.kinds == ["SEG", "SR"]
    seg, sr = result.outputs
    assert result.ref == image_ref(source.SOPInstanceUID)
    assert sr.SOPInstanceUID == a.report_uid(source.SOPInstanceUID)
    report = read_report(sr)
    assert report["pneumothorax"] is True
    assert report["source_sop_instance_uid"] == source.SOPInstanceUID
    assert report["segmentation_sop_instance_uid"] == seg.SOPInstanceUID
    assert "model: RegionModel test" in report["algorithm_parameters"]
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == source.StudyInstanceUID
    # the same image analysed again gives the very same objects
    (again,) = a.analyse([blob])
    assert [ds.SOPInstanceUID for ds in again.outputs] == [seg.SOPInstanceUID, sr.SOPInstanceUID]


def test_negative_image_gets_an_sr_only(tmp_path):
    (result,) = analyzer(NEGATIVE_OP).analyse([cr_blob(tmp_path)])
    assert result.kinds == ["SR"] and read_report(result.outputs[0])["pneumothorax"] is False
    assert "no pneumothorax" in describe(result)


def test_a_bad_image_fails_alone_and_its_error_names_no_patient(tmp_path):
    good = cr_blob(tmp_path, "good.dcm")
    bad_ds = read(cr_blob(tmp_path, "bad.dcm", PatientName="Roe^Richard"))
    bad_ds.PixelData = b"\x00" * 10  # too short for 64 x 64
    outcomes = analyzer().analyse([dataset_to_bytes(bad_ds), b"not dicom at all", good])
    assert isinstance(outcomes[0], ImageFailure) and isinstance(outcomes[1], ImageFailure)
    assert isinstance(outcomes[2], ImageResult)
    assert outcomes[0].ref == image_ref(bad_ds.SOPInstanceUID)
    assert outcomes[1].ref == "img-unreadable"
    for failure in outcomes[:2]:
        line = describe(failure)
        assert "failed" in line
        for secret in ("Roe", "PID-4711", bad_ds.SOPInstanceUID, bad_ds.StudyInstanceUID):
            assert secret not in line


def test_redact_removes_identifying_values():
    ds = pydicom.Dataset()
    ds.PatientName, ds.PatientID, ds.SOPInstanceUID = "Doe^Jane", "PID-4711", "1.2.3.4"
    text = "cannot read Doe^Jane (PID-4711), instance 1.2.3.4"
    assert redact(text, ds) == "cannot read <redacted> (<redacted>), instance <redacted>"
    assert redact("nothing here", None) == "nothing here"


def test_result_key_separates_models(tmp_path):
    source = read(cr_blob(tmp_path))
    assert analyzer(key="a").report_uid(source.SOPInstanceUID) != analyzer(key="b").report_uid(
        source.SOPInstanceUID
    )
