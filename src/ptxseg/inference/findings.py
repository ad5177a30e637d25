"""Turn a predicted mask into a radiologist's findings: yes/no, probability, area, side, box, and
the estimated BTS and ACCP size classes (`size_classes`).

Side is said in the patient's terms. Chest radiographs in PA and AP view are displayed with the
patient's right on the image's LEFT, so a region whose centre lies left of the image's midline is
on the patient's right. For an unknown view the standard radiographic display is assumed (and the
findings say so); for a lateral view the side cannot be told from the image.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from ptxseg.inference.size_classes import estimate_sizes
from ptxseg.util import schemas

FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LL", "RL", "LATERAL", "LAT")


def side_convention(view_position: str | None) -> tuple[bool, str]:
    """Whether a side can be given for this view, and a sentence saying how it was read."""
    view = (view_position or "").strip().upper()
    if view in FRONTAL_VIEWS:
        return True, f"{view} view: the patient's right is on the image's left"
    if view in LATERAL_VIEWS:
        return False, f"{view} (lateral) view: side not determinable from the image"
    shown = f"view {view!r}" if view else "view unknown"
    return True, (
        f"{shown}: standard radiographic display assumed (the patient's right is on the "
        "image's left)"
    )


def mask_side(mask: np.ndarray) -> str | None:
    """'right', 'left' or 'bilateral' (patient's terms, frontal display) for a boolean mask.

    Each connected region is assigned to the half of the image that holds its centroid; regions
    in both halves make the finding bilateral. None for an empty mask.
    """
    box = bounding_box(mask)
    if box is None:
        return None
    x0, y0, x1, y1 = box  # regions lie inside the box: label only that part (same centroids)
    crop = np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.uint8)
    count, _, _, centroids = cv2.connectedComponentsWithStats(crop, 8)
    midline = mask.shape[1] / 2
    sides = {"right" if cx + x0 < midline else "left" for cx, _ in centroids[1:count]}
    return "bilateral" if len(sides) == 2 else sides.pop()


def bounding_box(mask: np.ndarray) -> list[int] | None:
    """[x0, y0, x1, y1] in pixels, x1/y1 exclusive (slice bounds); None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def pixel_area_mm2(metadata: dict[str, Any]) -> float | None:
    """Area of one original pixel in mm² from PixelSpacing (row, column spacing in mm)."""
    spacing = metadata.get("PixelSpacing")
    if not spacing:
        return None
    row, col = (float(spacing[0]), float(spacing[-1]))
    return row * col if row > 0 and col > 0 else None


def compute_findings(
    mask: np.ndarray,
    probability: float,
    metadata: dict[str, Any],
    operating_point: dict[str, Any],
    encoder: str | None = None,
) -> dict[str, Any]:
    """The findings dictionary for one image (everything JSON-serialisable)."""
    area_px = int(mask.sum())
    positive = area_px > 0
    pixel_mm2 = pixel_area_mm2(metadata)
    can_side, convention = side_convention(metadata.get("ViewPosition"))
    findings = {
        "schema_version": schemas.FINDINGS,
        "image_id": metadata.get("ImageId"),
        "input_file": metadata.get("path"),
        "pneumothorax": positive,
        "probability": round(float(probability), 6),
        "area_px": area_px,
        "area_cm2": round(area_px * pixel_mm2 / 100.0, 3) if pixel_mm2 is not None else None,
        "side": mask_side(mask) if positive and can_side else None,
        "side_convention": convention,
        "bbox": bounding_box(mask),
        "bbox_format": "x0, y0, x1, y1 in original pixels; x1, y1 exclusive",
        "height": int(mask.shape[0]),
        "width": int(mask.shape[1]),
        "pixel_spacing_mm": metadata.get("PixelSpacing"),
        "view_position": metadata.get("ViewPosition"),
        "operating_point": operating_point,
        "encoder": encoder,
    }
    findings.update(estimate_sizes(mask, metadata.get("PixelSpacing"), measurable=can_side))
    return findings


def caption(findings: dict[str, Any]) -> str:
    """One line for the overlay: 'Pneumothorax: right, 12.3 cm², p=0.93' or 'No pneumothorax'.

    With size estimates: 'Pneumothorax: right, 12.3 cm², est. BTS large / ACCP small, p=0.93'.
    """
    p = findings["probability"]
    if not findings["pneumothorax"]:
        return f"No pneumothorax (p={p:.2f})"
    parts = [findings["side"] or "side n/a"]
    if findings["area_cm2"] is not None:
        parts.append(f"{findings['area_cm2']:.1f} cm²")
    else:
        parts.append(f"{findings['area_px']} px")
    bts, accp = findings.get("bts_class_est"), findings.get("accp_class_est")
    if bts and accp:
        parts.append(f"est. BTS {bts} / ACCP {accp}")
    return f"Pneumothorax: {', '.join(parts)}, p={p:.2f}"
