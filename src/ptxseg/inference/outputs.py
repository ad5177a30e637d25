"""Files a prediction run writes: mask and overlay PNGs, findings JSON, summary and submission CSVs.

Every file is written to a temporary name in its own folder and moved into place with
`os.replace`, so an interrupted run never leaves a half-written file that a rerun would trust.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ptxseg.inference.findings import caption
from ptxseg.util import atomic

SUMMARY_COLUMNS = [
    "image_id",
    "file",
    "status",
    "error",
    "pneumothorax",
    "probability",
    "area_px",
    "area_cm2",
    "side",
    "bts_rim_mm_est",
    "bts_class_est",
    "accp_apex_mm_est",
    "accp_class_est",
    "bbox",
    "view_position",
    "height",
    "width",
]
MASK_COLOUR = (40, 40, 230)  # BGR red


def encode_png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    if not ok:  # pragma: no cover - OpenCV fails only on invalid arrays
        raise ValueError(f"cannot encode an array of shape {array.shape} as PNG")
    return buf.tobytes()


def write_mask(path: str | Path, mask: np.ndarray) -> Path:
    """Mask PNG with 0 / 255 at the original size."""
    if not mask.any():  # most images: the same bytes every time
        return atomic.write_bytes(path, _empty_png(mask.shape))
    return atomic.write_bytes(path, encode_png(mask.astype(np.uint8) * 255))


@functools.lru_cache(maxsize=8)
def _empty_png(shape: tuple[int, ...]) -> bytes:
    return encode_png(np.zeros(shape, np.uint8))


def read_mask(path: str | Path) -> np.ndarray:
    """Boolean mask back from a mask PNG."""
    array = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if array is None:
        raise ValueError(f"{path} is not a readable mask PNG")
    return array > 127


def overlay_image(image: np.ndarray, mask: np.ndarray, text: str, alpha: float = 0.35):
    """BGR uint8: the X-ray, the mask filled semi-transparently and outlined, a caption on top."""
    gray = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    out = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    if mask.any():
        m = mask.astype(np.uint8)
        tinted = out.copy()
        tinted[mask] = MASK_COLOUR
        out = cv2.addWeighted(tinted, alpha, out, 1 - alpha, 0)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        thickness = max(1, round(min(mask.shape) / 300))
        cv2.drawContours(out, contours, -1, MASK_COLOUR, thickness)
    return _draw_caption(out, text)


def _draw_caption(bgr: np.ndarray, text: str) -> np.ndarray:
    """Caption in a dark band at the top, drawn with Pillow (OpenCV's fonts cannot draw '²')."""
    from PIL import Image, ImageDraw

    height, width = bgr.shape[:2]
    size = max(10, round(min(height, width) / 32))
    font = _font(size)
    if not _has_superscript_two(font):
        text = text.replace("²", "2")
    picture = Image.fromarray(bgr[:, :, ::-1].copy())
    draw = ImageDraw.Draw(picture)
    pad = max(2, size // 4)
    left, top, right, bottom = draw.textbbox((pad, pad), text, font=font)
    draw.rectangle((0, 0, min(width, right + pad), bottom + pad), fill=(0, 0, 0))
    draw.text((pad, pad), text, fill=(255, 255, 255), font=font)
    return np.asarray(picture)[:, :, ::-1].copy()


@functools.lru_cache(maxsize=8)
def _font(size: int):
    """DejaVu Sans from matplotlib's data (it has '²'), else Pillow's built-in font."""
    from PIL import ImageFont

    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return ImageFont.truetype(str(path), size)
    except (ImportError, OSError):
        return ImageFont.load_default(size=size)


def _has_superscript_two(font) -> bool:
    return "DejaVu" in " ".join(getattr(font, "getname", lambda: ("",))())


def write_overlay(path: str | Path, image: np.ndarray, mask: np.ndarray, findings) -> Path:
    return atomic.write_bytes(path, encode_png(overlay_image(image, mask, caption(findings))))


def summary_row(
    image_id: str, file: str, findings: dict[str, Any] | None = None, error: str = ""
) -> dict[str, Any]:
    """One summary.csv row: status ok with the findings columns, or error with its message."""
    row = {key: "" for key in SUMMARY_COLUMNS}
    row.update(image_id=image_id, file=file, status="error" if error else "ok", error=error)
    if findings:
        for key in SUMMARY_COLUMNS[4:]:
            value = findings.get(key)
            row[key] = " ".join(map(str, value)) if isinstance(value, list) else value
    return row


def write_summary(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    return atomic.write_csv(path, SUMMARY_COLUMNS, rows)


def write_submission(path: str | Path, rows: Iterable[tuple[str, str]]) -> Path:
    """Competition format: `ImageId,EncodedPixels` with relative RLE, `-1` for no pneumothorax."""
    return atomic.write_csv(
        path,
        ["ImageId", "EncodedPixels"],
        ({"ImageId": i, "EncodedPixels": rle} for i, rle in rows),
    )
