"""Findings: side in the patient's terms, box, area in cm², caption."""

import numpy as np
import pytest

from ptxseg.inference.findings import (
    bounding_box,
    caption,
    compute_findings,
    mask_side,
    side_convention,
)
from ptxseg.util import schemas

OP = {"top": 0.5, "bottom": 0.5, "min_area": 0}


def _mask(*boxes, shape=(100, 200)):
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask


def test_image_left_is_patient_right_and_both_halves_are_bilateral():
    assert mask_side(_mask((10, 10, 40, 60))) == "right"
    assert mask_side(_mask((150, 10, 190, 60))) == "left"
    assert mask_side(_mask((10, 10, 40, 60), (150, 10, 190, 60))) == "bilateral"
    assert mask_side(_mask()) is None


@pytest.mark.parametrize(
    ("view", "side", "assumed"),
    [("PA", "right", False), ("AP", "right", False), (None, "right", True), ("LL", None, False)],
)
def test_side_by_view(view, side, assumed):
    f = compute_findings(_mask((10, 10, 40, 60)), 0.9, {"ViewPosition": view}, OP)
    assert f["side"] == side
    assert ("assumed" in f["side_convention"]) is assumed
    assert side_convention(view)[0] is (side is not None)


def test_area_in_cm2_uses_pixel_spacing_and_box_is_exclusive():
    mask = _mask((10, 20, 40, 60))  # 30 x 40 = 1200 px
    f = compute_findings(
        mask, 0.93, {"PixelSpacing": [0.2, 0.1], "ViewPosition": "PA"}, OP, "resnet50"
    )
    assert f["area_px"] == 1200
    assert f["area_cm2"] == pytest.approx(1200 * 0.02 / 100)
    assert f["bbox"] == [10, 20, 40, 60] == bounding_box(mask)
    assert f["pneumothorax"] is True and f["encoder"] == "resnet50"
    assert f["schema_version"] == schemas.FINDINGS
    assert caption(f) == "Pneumothorax: right, 0.2 cm², est. BTS small / ACCP small, p=0.93"


def test_negative_findings_and_unknown_spacing():
    f = compute_findings(_mask(), 0.04, {}, OP)
    assert (f["pneumothorax"], f["area_cm2"], f["bbox"], f["side"]) == (False, None, None, None)
    assert caption(f) == "No pneumothorax (p=0.04)"
    g = compute_findings(_mask((0, 0, 5, 5)), 0.7, {}, OP)
    assert caption(g) == "Pneumothorax: right, 25 px, p=0.70"
