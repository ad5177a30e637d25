"""Folder prediction refuses the inputs every reader refuses: each one an error row that says why.

`predict` analysed a 1x1 and a 3x65535 image that `serve` refused (one got "BTS rim 601.6 mm,
large"), a constant image from a RescaleSlope of 0, and a zero-byte file was said to have a header
and pixel data that "do not agree".
"""

import csv

import cv2
import numpy as np
from dicom_files import chest_like, replace_bytes, write_dicom
from predict_helpers import RegionModel

from ptxseg.inference.inputs import collect_inputs
from ptxseg.inference.main_loop import predict_files
from ptxseg.inference.predictor import Predictor


def test_degenerate_inputs_are_error_rows_and_the_good_image_is_predicted(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    cv2.imwrite(str(scans / "good.png"), chest_like(80))
    cv2.imwrite(str(scans / "one.png"), np.array([[200]], np.uint8))
    write_dicom(scans / "strip.dcm", np.tile(np.arange(65535, dtype=np.uint16), (3, 1)))
    (scans / "empty.dcm").write_bytes(b"")
    pixels = (chest_like().astype(np.uint16) * 16).astype(np.uint16)
    write_dicom(scans / "slope.dcm", pixels, bits_stored=12, RescaleSlope="2.0000")
    replace_bytes(scans / "slope.dcm", b"2.0000", b"0     ")
    cv2.imwrite(str(scans / "blank.png"), np.zeros((64, 64), np.uint8))
    result = predict_files(
        Predictor(RegionModel()), collect_inputs([scans]), tmp_path / "out", progress=False
    )
    with open(tmp_path / "out" / "summary.csv", newline="") as handle:
        rows = {r["image_id"]: r for r in csv.DictReader(handle)}
    assert (result.predicted, result.errors) == (1, 5)
    assert rows["good"]["status"] == "ok"
    errors = {i: r["error"] for i, r in rows.items() if r["status"] == "error"}
    assert "1x1 pixels, smaller than the least that is read (32x32)" in errors["one"]
    assert "3x65535 pixels, smaller than the least" in errors["strip"]
    assert "empty file (0 bytes)" in errors["empty"]
    assert "RescaleSlope '0' is zero" in errors["slope"]
    assert "all 4,096 pixels have the same value" in errors["blank"]
    assert not (tmp_path / "out" / "findings" / "one.json").exists()
