"""Size estimates (BTS rim at the hilum, ACCP apex to cupola) on masks of known geometry."""

import cv2
import numpy as np
import pytest

from ptxseg.inference.findings import compute_findings
from ptxseg.inference.size_classes import (
    ACCP_LARGE_APEX_MM,
    BTS_LARGE_RIM_MM,
    HILUM_LEVEL,
    apex_distance_px,
    estimate_sizes,
    first_run_lengths,
    size_class,
)

SIZE = 1024
SPACING = [0.2, 0.2]  # mm per pixel: 5 px = 1 mm
OP = {"top": 0.5, "bottom": 0.5, "min_area": 0}


def _cap_and_band(cap_px: int, band_px: int, mirror: bool = False) -> np.ndarray:
    """Air over the apex (rows 100..100+cap) and down the lateral wall (band_px wide to row 800)
    of the patient's right (image left); mirrored: the patient's left."""
    mask = np.zeros((SIZE, SIZE), bool)
    mask[100 : 100 + cap_px, 40:400] = True
    mask[100:800, 40 : 40 + band_px] = True
    return mask[:, ::-1].copy() if mirror else mask


@pytest.mark.parametrize("mirror", [False, True])
def test_apical_cap_and_lateral_band_give_their_widths(mirror):
    est = estimate_sizes(_cap_and_band(cap_px=100, band_px=120, mirror=mirror), SPACING)
    assert est["bts_rim_mm_est"] == pytest.approx(24.0)  # 120 px at the hilum level
    assert est["accp_apex_mm_est"] == pytest.approx(20.0, abs=0.2)  # the 100 px cap
    assert (est["bts_class_est"], est["accp_class_est"]) == ("large", "small")
    side = "left" if mirror else "right"
    assert set(est["size_est_by_side"]) == {side}
    assert est["hilum_row_est"] == round(HILUM_LEVEL * SIZE)
    assert "estimated" in est["size_est_method"]


def test_nested_domes_match_the_analytic_distances():
    """Pleural space between two ellipses (chest wall, lung) on the patient's left."""
    y, x = np.mgrid[:SIZE, :SIZE]
    cx, cy, ax, ay, rim, apex = 768, 560, 240, 460, 100, 150
    outer = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1
    inner = ((x - cx) / (ax - rim)) ** 2 + ((y - cy) / (ay - apex)) ** 2 <= 1
    mask = outer & ~inner
    mask[:, : SIZE // 2] = False
    est = estimate_sizes(mask, SPACING)
    row = round(HILUM_LEVEL * SIZE)

    def half_width(a, b):
        return a * np.sqrt(1 - ((row - cy) / b) ** 2)

    expected_rim = (half_width(ax, ay) - half_width(ax - rim, ay - apex)) * SPACING[1]
    assert est["bts_rim_mm_est"] == pytest.approx(expected_rim, abs=0.5)
    assert est["accp_apex_mm_est"] == pytest.approx(apex * SPACING[0], abs=0.5)
    assert (est["bts_class_est"], est["accp_class_est"]) == ("large", "large")


def test_a_lateral_band_is_as_thick_as_it_is_wide_not_as_tall():
    mask = np.zeros((SIZE, SIZE), bool)
    mask[300:700, 30:60] = True  # 30 px wide, 400 px tall, covers the hilum level
    est = estimate_sizes(mask, SPACING)
    assert est["bts_rim_mm_est"] == pytest.approx(6.0)
    assert est["accp_apex_mm_est"] == pytest.approx(6.0, abs=0.2)


def test_a_pneumothorax_above_the_hilum_has_no_rim_there():
    mask = np.zeros((SIZE, SIZE), bool)
    mask[50:250, 60:300] = True  # apical only
    est = estimate_sizes(mask, SPACING)
    assert est["bts_rim_mm_est"] == 0.0 and est["bts_class_est"] == "small"
    assert est["accp_apex_mm_est"] == pytest.approx(40.0, abs=0.2)
    assert est["accp_class_est"] == "large"


def test_bilateral_reports_the_larger_side_and_both_sides():
    mask = _cap_and_band(100, 120) | _cap_and_band(200, 50, mirror=True)
    est = estimate_sizes(mask, SPACING)
    assert est["bts_rim_mm_est"] == pytest.approx(24.0)  # right
    assert est["accp_apex_mm_est"] == pytest.approx(40.0, abs=0.2)  # left
    assert est["size_est_by_side"]["left"]["bts_rim_mm_est"] == pytest.approx(10.0)


def test_spacing_scales_the_distances():
    mask = _cap_and_band(100, 120)
    assert estimate_sizes(mask, [0.1, 0.1])["bts_rim_mm_est"] == pytest.approx(12.0)


@pytest.mark.parametrize(
    ("mask", "spacing", "measurable", "reason"),
    [
        (np.zeros((64, 64), bool), SPACING, True, "no pneumothorax"),
        (np.ones((64, 64), bool), None, True, "no PixelSpacing"),
        (np.ones((64, 64), bool), SPACING, False, "frontal view"),
    ],
)
def test_no_estimate_without_air_spacing_or_a_frontal_view(mask, spacing, measurable, reason):
    est = estimate_sizes(mask, spacing, measurable=measurable)
    assert est["bts_rim_mm_est"] is None and est["accp_class_est"] is None
    assert reason in est["size_est_method"]


def test_class_boundaries_are_the_guidelines():
    assert size_class(BTS_LARGE_RIM_MM - 0.1, BTS_LARGE_RIM_MM) == "small"
    assert size_class(BTS_LARGE_RIM_MM, BTS_LARGE_RIM_MM) == "large"
    assert size_class(ACCP_LARGE_APEX_MM, ACCP_LARGE_APEX_MM) == "large"
    assert size_class(None, ACCP_LARGE_APEX_MM) is None
    assert (BTS_LARGE_RIM_MM, ACCP_LARGE_APEX_MM) == (20.0, 30.0)


def test_first_run_lengths():
    rows = np.array([[0, 1, 1, 0, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]], bool)
    assert first_run_lengths(rows).tolist() == [2, 0, 5, 2]


def test_findings_carry_the_estimates_and_lateral_views_none():
    mask = _cap_and_band(100, 120)
    f = compute_findings(mask, 0.9, {"PixelSpacing": SPACING, "ViewPosition": "PA"}, OP)
    assert (f["bts_class_est"], f["accp_class_est"], f["side"]) == ("large", "small", "right")
    lateral = compute_findings(mask, 0.9, {"PixelSpacing": SPACING, "ViewPosition": "LL"}, OP)
    assert lateral["bts_rim_mm_est"] is None and lateral["side"] is None


def _apex_on_the_whole_half(side_mask):
    """The apex distance with the distance transform over the whole half (the definition)."""
    rows = np.flatnonzero(side_mask.any(axis=1))
    top = int(rows[0])
    columns = np.flatnonzero(side_mask[top])
    column = int(columns[len(columns) // 2])
    run = int(first_run_lengths(side_mask[top:, column][None, :])[0])
    padded = np.pad(side_mask.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    return float(min(run, 2.0 * float(distance[top : top + run, column].max())))


@pytest.mark.parametrize("seed", range(12))
def test_apex_distance_in_the_mask_box_equals_the_whole_half(seed):
    rng = np.random.default_rng(seed)
    half = np.zeros((96, 48), np.uint8)
    for _ in range(rng.integers(1, 5)):  # blobs, some cut by the image edges
        centre = (int(rng.integers(-5, 53)), int(rng.integers(-5, 101)))
        axes = (int(rng.integers(2, 30)), int(rng.integers(2, 40)))
        cv2.ellipse(half, centre, axes, float(rng.integers(0, 180)), 0, 360, 1, -1)
    half |= (rng.random(half.shape) > 0.97).astype(np.uint8)  # and specks
    mask = half.astype(bool)
    assert apex_distance_px(mask) == _apex_on_the_whole_half(mask)
