"""Estimated pneumothorax size by the two conventions radiologists use, from the mask alone.

- **BTS** (British Thoracic Society, 2010): the interpleural rim between the lung edge and the chest
  wall at the level of the hilum; a rim of 2 cm or more is "large".
- **ACCP** (American College of Chest Physicians, 2001): the distance from the thoracic cupola to
  the lung apex; 3 cm or more is "large".

Both are **estimates**. The mask shows the air, not the chest wall, the hilum or the lung apex, so:

- Each hemithorax is the image half on its side of the vertical midline (the patient's right on
  the image's left, as in `findings.side_convention`); the chest wall is on the outer side.
- The hilum level is assumed at `HILUM_LEVEL` (45%) of the image height, where the hila lie on a
  frontal radiograph framed to the thorax. The rim is the width of the air run that starts at the
  outermost mask pixel of a row, measured horizontally; the median over the rows within
  `HILUM_BAND_MM` (±1 cm) of that level is taken (rows without air count as 0: a pneumothorax
  that does not reach the hilum level has no rim there).
- The cupola is the highest mask pixel of the hemithorax; the apex distance is the run of air
  straight down from it to the lung, but no more than the local thickness of the air there
  (twice the distance to the nearest pixel without air): a band of air along the lateral chest
  wall that reaches up to the top of the mask is as thick as it is wide, not as long as it is tall.

Distances need PixelSpacing; without it, or for a lateral view, the estimates are None.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

BTS_LARGE_RIM_MM = 20.0
ACCP_LARGE_APEX_MM = 30.0
HILUM_LEVEL = 0.45
HILUM_BAND_MM = 10.0
METHOD = (
    "estimated from the mask: BTS rim = horizontal air width at the assumed hilum level "
    f"({HILUM_LEVEL:.0%} of the image height, median over ±{HILUM_BAND_MM:.0f} mm), large if "
    f">= {BTS_LARGE_RIM_MM / 10:.0f} cm; ACCP apex = air from the highest mask point (cupola) down "
    f"to the lung, large if >= {ACCP_LARGE_APEX_MM / 10:.0f} cm"
)
SIDES = ("right", "left")


def hemithorax(mask: np.ndarray, side: str) -> np.ndarray:
    """The side's half of the mask, flipped so that the chest wall is at column 0.

    The patient's right is the image's left half (standard display); the left half is mirrored.
    """
    width = mask.shape[1]
    if side == "right":
        return mask[:, : width // 2]
    if side == "left":
        return mask[:, width // 2 :][:, ::-1]
    raise ValueError(f"side must be one of {SIDES}, got {side!r}")


def first_run_lengths(rows: np.ndarray) -> np.ndarray:
    """Per row of a bool array: the length of the first run of True values (0 for an empty row)."""
    rows = np.asarray(rows, bool)
    if rows.size == 0:
        return np.zeros(rows.shape[0], int)
    has = rows.any(axis=1)
    start = rows.argmax(axis=1)
    # After the first True, the first False (or the row end) ends the run.
    index = np.arange(rows.shape[1])
    after = (index[None, :] >= start[:, None]) & ~rows
    end = np.where(after.any(axis=1), after.argmax(axis=1), rows.shape[1])
    return np.where(has, end - start, 0)


def rim_width_px(side_mask: np.ndarray, hilum_row: int, band_rows: int) -> float:
    """Median horizontal width of the outermost air run over the rows hilum_row ± band_rows."""
    lo = max(0, hilum_row - band_rows)
    hi = min(side_mask.shape[0], hilum_row + band_rows + 1)
    if hi <= lo:
        return 0.0
    return float(np.median(first_run_lengths(side_mask[lo:hi])))


def apex_distance_px(side_mask: np.ndarray) -> float:
    """Air from the highest mask pixel (cupola) straight down, capped by the local thickness."""
    rows = np.flatnonzero(side_mask.any(axis=1))
    if rows.size == 0:
        return 0.0
    top = int(rows[0])
    columns = np.flatnonzero(side_mask[top])
    column = int(columns[len(columns) // 2])
    run = int(first_run_lengths(side_mask[top:, column][None, :])[0])
    # The distances inside the mask's box, padded by a ring without air, are those of the whole
    # half (a nearer pixel without air outside the box would have a nearer one on the ring), at
    # a fraction of the cost for the usual small mask.
    used = np.flatnonzero(side_mask.any(axis=0))
    left, right, bottom = int(used[0]), int(used[-1]) + 1, int(rows[-1]) + 1
    box = np.pad(side_mask[top:bottom, left:right].astype(np.uint8), 1)
    distance = cv2.distanceTransform(box, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    thickness = 2.0 * float(distance[1 : 1 + run, 1 + column - left].max())
    return float(min(run, thickness))


def size_class(distance_mm: float | None, large_from_mm: float) -> str | None:
    if distance_mm is None:
        return None
    return "large" if distance_mm >= large_from_mm else "small"


def estimate_sizes(
    mask: np.ndarray,
    pixel_spacing: Any,
    measurable: bool = True,
    hilum_level: float = HILUM_LEVEL,
) -> dict[str, Any]:
    """The size estimates of one mask (bool, H x W, frontal display) as findings entries.

    `pixel_spacing` is (row, column) in mm or None; `measurable` False (a lateral view) gives
    None values with a note. Bilateral findings report, for each measure, the larger side.
    """
    result: dict[str, Any] = {
        "bts_rim_mm_est": None,
        "bts_class_est": None,
        "accp_apex_mm_est": None,
        "accp_class_est": None,
        "size_est_by_side": None,
        "hilum_row_est": None,
        "size_est_method": METHOD,
    }
    mask = np.asarray(mask, bool)
    if not mask.any():
        result["size_est_method"] = "no pneumothorax in the mask: nothing to measure"
        return result
    if not measurable:
        result["size_est_method"] = "not estimated: the size conventions need a frontal view"
        return result
    if not pixel_spacing:
        result["size_est_method"] = "not estimated: the image has no PixelSpacing"
        return result
    row_mm, col_mm = float(pixel_spacing[0]), float(pixel_spacing[-1])
    hilum_row = int(round(hilum_level * mask.shape[0]))
    band_rows = int(round(HILUM_BAND_MM / row_mm))
    by_side = {}
    for side in SIDES:
        half = hemithorax(mask, side)
        if half.any():
            by_side[side] = (
                rim_width_px(half, hilum_row, band_rows) * col_mm,
                apex_distance_px(half) * row_mm,
            )
    rim = max(round(r, 1) for r, _ in by_side.values())
    apex = max(round(a, 1) for _, a in by_side.values())
    result.update(
        bts_rim_mm_est=rim,
        bts_class_est=size_class(rim, BTS_LARGE_RIM_MM),
        accp_apex_mm_est=apex,
        accp_class_est=size_class(apex, ACCP_LARGE_APEX_MM),
        size_est_by_side={
            side: {"bts_rim_mm_est": round(r, 1), "accp_apex_mm_est": round(a, 1)}
            for side, (r, a) in by_side.items()
        },
        hilum_row_est=hilum_row,
    )
    return result
